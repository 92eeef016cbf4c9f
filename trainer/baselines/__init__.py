"""Baselines every results table carries (design brief, section 3), behind one interface.

| name | what it ranks by |
|------|------------------|
| popularity | training interactions per target item |
| recent_popularity | interactions in a window before the cutoff (window chosen on validation) |
| item_knn | item-item cosine on target co-occurrence; cold users: source->target co-occurrence |
| bpr_mf | matrix factorisation, BPR loss, target domain only (cold users: item biases) |

The history-tower ``target_only`` model and ``joint`` (CMF) are trained by trainer/training.py.
"""

from trainer.baselines.base import Baseline
from trainer.baselines.bpr import BPRMF
from trainer.baselines.item_knn import ItemKNN
from trainer.baselines.popularity import Popularity, RecentPopularity

BASELINES: tuple[type[Baseline], ...] = (Popularity, RecentPopularity, ItemKNN, BPRMF)

__all__ = [
    "BASELINES",
    "BPRMF",
    "Baseline",
    "ItemKNN",
    "Popularity",
    "RecentPopularity",
]
