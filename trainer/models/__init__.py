"""Recommender models. Every model implements :class:`trainer.models.base.CrossDomainModel`."""

from trainer.models.base import CrossDomainModel
from trainer.models.history_tower import HistoryTowerModel

__all__ = ["CrossDomainModel", "HistoryTowerModel"]
