"""Training score networks: objectives (``losses``), networks (``nets``), procedural data sets (``data``) and the
training loop with atomic checkpoints (``train``). Likelihood evaluation lives beside it in
[`sde_diffusion.likelihood`][sde_diffusion.likelihood]."""

from . import data, losses, nets, train
from .data import DATASETS, get_dataset
from .losses import LOSSES, get_loss
from .nets import NETS, MLPScoreNet, UNet, build_net
from .train import (
    CheckpointError,
    CheckpointMismatch,
    TrainingInterrupted,
    TrainResult,
    load_checkpoint,
    load_model,
)
from .train import train as train_model

__all__ = [
    "data",
    "losses",
    "nets",
    "train",
    "DATASETS",
    "get_dataset",
    "LOSSES",
    "get_loss",
    "NETS",
    "MLPScoreNet",
    "UNet",
    "build_net",
    "TrainResult",
    "CheckpointError",
    "CheckpointMismatch",
    "TrainingInterrupted",
    "load_checkpoint",
    "load_model",
    "train_model",
]
