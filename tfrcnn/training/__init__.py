"""Training: schemes, callbacks and the run driver behind ``tfrcnn train``."""

from tfrcnn.training.callbacks import NaNGuard, NonFiniteTrainingError, TimeLimit
from tfrcnn.training.schemes import set_loss_terms, set_trainable_parts, train_alternating

__all__ = [
    "NaNGuard",
    "NonFiniteTrainingError",
    "TimeLimit",
    "set_loss_terms",
    "set_trainable_parts",
    "train_alternating",
]
