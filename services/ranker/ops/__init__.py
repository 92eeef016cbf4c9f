"""The ranker's ranking steps: one operator per module, applied in the configured order
(``--ranking-ops``) to the scored candidates; the last one is ``top_k``.

Candidate filtering (seen, excluded) happens earlier, in the encoder, before scoring; an operator
here sees scores, e.g. a business rule that demotes or drops scored items before the cut.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from services.common.pipeline import Operator, Pipeline, build_pipeline, parse_names
from services.ranker.ops.ranking import Ranking
from services.ranker.ops.top_k import TopK, top_k

RankingOp = Operator[Ranking]
RankingPipeline = Pipeline[Ranking]

REGISTRY: Mapping[str, Callable[[], RankingOp]] = {TopK.name: TopK}
DEFAULT_OPS = TopK.name


def build_ranking_ops(spec: str = DEFAULT_OPS) -> RankingPipeline:
    """The pipeline named by a comma-separated list (see ``REGISTRY``); it must end with
    ``top_k`` (the answer is the k best, best first); ValueError otherwise."""
    pipeline = build_pipeline(parse_names(spec), REGISTRY, "--ranking-ops")
    if pipeline.names[-1:] != (TopK.name,):
        raise ValueError(
            f"--ranking-ops '{spec}': must end with {TopK.name} (the answer is the k best)"
        )
    return pipeline


__all__ = [
    "DEFAULT_OPS",
    "REGISTRY",
    "Ranking",
    "RankingOp",
    "RankingPipeline",
    "TopK",
    "build_ranking_ops",
    "top_k",
]
