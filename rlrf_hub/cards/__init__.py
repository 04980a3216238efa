"""The cards of a run: dataset cards of the stages, adapter cards, and the evaluation results on adapter cards."""

from .adapters import adapter_card
from .datasets import dataset_card

__all__ = ["adapter_card", "dataset_card"]
