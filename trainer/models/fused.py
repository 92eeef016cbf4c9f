"""A trained model blended with simple signals per user group, as one model (score fusion).

``FusedModel`` wraps any :class:`CrossDomainModel` behind the same interface, so evaluation,
export and serving need no special case::

    score(c) = a[g, model] * s_model(c) + a[g, knn] * knn(history, c) + sum_f a[g, f] * item_f[c]

where ``g`` is the user's group, chosen in the graph: warm (the target mask holds an item) or cold
(it is empty: cold-start and unknown users). ``a`` are the validation-fitted weights already
divided by each component's validation scale (trainer/fusion.py fits them); ``item_f`` are
per-item vectors known at the cutoff (log1p recent popularity, log1p popularity).

Item-KNN stays sparse so it scales to large catalogues: each item keeps its top-k neighbours
([items, k] indices and cosine weights, constants of the graph; target->target for warm users,
source->target for cold users). A user's KNN scores are one scatter-add of their history items'
neighbour weights into a [B, target items] row (ONNX ScatterElements, reduction=add, opset >= 16),
then a gather of the candidates: never a dense items x items matrix. A history item repeated in
the input counts once per occurrence (the item-KNN baseline counts it once; training histories
hold each item once).

The "user representation" of this model is a tuple (inner user, KNN row, per-user weights): what
the candidates' scores need besides the candidates, so ``target_logits`` (offline evaluation)
and ``forward`` (the exported graph) compute the same blend.
"""

from __future__ import annotations

import torch

from trainer.models.base import CrossDomainModel

WARM, COLD = 0, 1  # rows of ``coefficients``
MODEL, KNN = 0, 1  # first columns of ``coefficients``; item features follow


def knn_scores(
    items: torch.Tensor,
    mask: torch.Tensor,
    neighbours: torch.Tensor,
    weights: torch.Tensor,
    num_target_items: int,
) -> torch.Tensor:
    """[B, L] history indices and 0/1 mask -> [B, num_target_items]: the sum over the history of
    each item's top-k neighbour weights (sparse item-KNN, one scatter-add per batch)."""
    index = neighbours[items].flatten(1)  # [B, L * k]
    values = (weights[items] * mask.unsqueeze(-1)).flatten(1)
    out = torch.zeros((items.shape[0], num_target_items), dtype=values.dtype, device=values.device)
    return out.scatter_add(1, index, values)


class FusedModel(CrossDomainModel):
    def __init__(
        self,
        inner: CrossDomainModel,
        num_source_items: int,
        num_target_items: int,
        item_features: tuple[str, ...] = (),
        knn_neighbours: int = 1,
    ) -> None:
        """Buffers start empty (zero weights = the model alone); ``set_fusion`` fills them."""
        super().__init__()
        self.inner = inner
        self.num_target_items = num_target_items
        self.item_feature_names = tuple(item_features)
        self.knn_neighbours = knn_neighbours
        self.register_buffer("coefficients", torch.zeros(2, 2 + len(item_features)))
        with torch.no_grad():
            self.coefficients[:, MODEL] = 1.0
        self.register_buffer("item_features", torch.zeros(len(item_features), num_target_items))
        k = knn_neighbours
        self.register_buffer(
            "target_neighbours", torch.zeros(num_target_items, k, dtype=torch.long)
        )
        self.register_buffer("target_weights", torch.zeros(num_target_items, k))
        self.register_buffer(
            "source_neighbours", torch.zeros(num_source_items, k, dtype=torch.long)
        )
        self.register_buffer("source_weights", torch.zeros(num_source_items, k))

    def set_fusion(
        self,
        coefficients: torch.Tensor,
        item_features: torch.Tensor,
        target_neighbours: torch.Tensor,
        target_weights: torch.Tensor,
        source_neighbours: torch.Tensor,
        source_weights: torch.Tensor,
    ) -> None:
        """Weights ([2 groups, 2 + features], already divided by the scales) and the components
        known at one cutoff (validation for fitting, test for the test and the export)."""
        for name, value in (
            ("coefficients", coefficients),
            ("item_features", item_features),
            ("target_neighbours", target_neighbours),
            ("target_weights", target_weights),
            ("source_neighbours", source_neighbours),
            ("source_weights", source_weights),
        ):
            buffer = getattr(self, name)
            if tuple(value.shape) != tuple(buffer.shape):
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, expected {tuple(buffer.shape)}"
                )
            buffer.copy_(value)

    def set_recent_popularity(self, values) -> None:
        """The inner model's own recent-popularity input (trainer/item_features.py), if any."""
        if hasattr(self.inner, "set_recent_popularity"):
            self.inner.set_recent_popularity(values)

    def shape_spec(self) -> dict:
        return {
            "item_features": list(self.item_feature_names),
            "knn_neighbours": self.knn_neighbours,
        }

    # -- the interface ---------------------------------------------------------------------------
    def user_representation(self, src_items, src_mask, tgt_items, tgt_mask):
        user = self.inner.user_representation(src_items, src_mask, tgt_items, tgt_mask)
        warm = tgt_mask.sum(dim=1, keepdim=True) > 0  # [B, 1]
        n = self.num_target_items
        from_target = knn_scores(
            tgt_items, tgt_mask, self.target_neighbours, self.target_weights, n
        )
        from_source = knn_scores(
            src_items, src_mask, self.source_neighbours, self.source_weights, n
        )
        knn = torch.where(warm, from_target, from_source)
        coefficients = torch.where(warm, self.coefficients[WARM], self.coefficients[COLD])
        return user, knn, coefficients

    def _blend(self, model, knn, item_part, coefficients):
        return (
            coefficients[:, MODEL : MODEL + 1] * model
            + coefficients[:, KNN : KNN + 1] * knn
            + item_part
        )

    def target_logits(self, user):
        inner_user, knn, coefficients = user
        item_part = coefficients[:, 2:] @ self.item_features if self.item_feature_names else 0.0
        return self._blend(self.inner.target_logits(inner_user), knn, item_part, coefficients)

    def score_candidates(self, user, candidates):
        inner_user, knn, coefficients = user
        model = self.inner.score_candidates(inner_user, candidates)
        item_part = 0.0
        if self.item_feature_names:
            features = self.item_features.T[candidates]  # [B, C, F]
            item_part = (features * coefficients[:, None, 2:]).sum(-1)
        return self._blend(model, knn.gather(1, candidates), item_part, coefficients)

    def source_logits(self, user):
        return self.inner.source_logits(user[0])

    def target_scores(self, user, items):
        raise NotImplementedError("a fused model is not trained: train its inner model")
