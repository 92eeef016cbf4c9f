"""The student row: a history tower distilled from a teacher row's model of the same seed.

The teacher is the model the benchmark just trained (in memory, same split), wrapped as the
distillation package's run teacher; the student is trained by that package's ``Distiller``
(trainer/distillation/), so the benchmark measures exactly what ``xdrec distill`` does.
Selection (the student's epoch) is on validation inside the distiller.
"""

from __future__ import annotations

from trainer.config import ExperimentConfig
from trainer.models import CrossDomainModel
from trainer.training import Trainer, TrainResult

# The distillation settings of the student row (trainer/configs/ml1m-student.yaml's defaults).
TEMPERATURE = 2.0
ALPHA = 0.1


def fit_student(
    trainer: Trainer, teacher_model: CrossDomainModel, teacher_config: ExperimentConfig, seed: int
) -> TrainResult:
    from services.common.model_repository.manifest import TeacherInfo
    from trainer.distillation.config import DistillConfig, StudentExperiment
    from trainer.distillation.runner import Distiller
    from trainer.distillation.teacher import RunTeacher

    split = trainer.split
    teacher = RunTeacher(
        teacher_model.eval(),
        TeacherInfo(
            kind="run",
            name=f"benchmark teacher seed {seed}",
            version="",
            model_sha256="",
            data_fingerprint=split.fingerprint,
        ),
        teacher_config.to_dict(),
        list(split.source_vocab.ids),
        list(split.target_vocab.ids),
        trainer.device,
    )
    settings = DistillConfig(temperature=TEMPERATURE, alpha=ALPHA)
    return Distiller(trainer, teacher, StudentExperiment(trainer.config, settings)).fit(seed)
