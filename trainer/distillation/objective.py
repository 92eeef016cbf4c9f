"""The distillation loss: match the teacher's softened distribution over target items.

``T^2 * KL(softmax(t/T) || softmax(s/T))`` per user (Hinton et al. 2015), averaged over the
batch, mixed with the student's own multinomial loss on the training labels. Slots masked with
the padding logit (-1e9 on both sides: padded positives, a negative drawn twice) get no
probability from either model and add nothing.
"""

from __future__ import annotations

import torch

from trainer.sampled_softmax import multinomial_loss


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over rows of T^2 KL(softmax(teacher/T) || softmax(student/T)); [B, C] each."""
    teacher_log = torch.log_softmax(teacher_logits.detach() / temperature, dim=1)
    student_log = torch.log_softmax(student_logits / temperature, dim=1)
    per_row = (teacher_log.exp() * (teacher_log - student_log)).sum(1)
    return per_row.sum() / max(len(per_row), 1) * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, kl): ``alpha * L_own + (1 - alpha) * T^2 KL``; ``kl`` is reported on its own."""
    kl = distillation_kl(student_logits, teacher_logits, temperature)
    loss = (1.0 - alpha) * kl
    if alpha > 0:
        loss = loss + alpha * multinomial_loss(student_logits, labels)
    return loss, kl.detach()
