"""Training utilities: a flow-matching trainer (+ MGAudio's AMG objective) and recipes for bad models."""

from .data import DataSource, TensorData, make_dataset, register_dataset
from .ema import EMA
from .objectives import amg_target, amg_weight_at, flow_matching_loss
from .synth_v2a import ClipCrops, build_synth_set  # importing registers the "synth_v2a" data set
from .trainer import TrainConfig, TrainResult, evaluate_loss, list_checkpoints, train

__all__ = [
    "ClipCrops",
    "build_synth_set",
    "EMA",
    "DataSource",
    "TensorData",
    "TrainConfig",
    "TrainResult",
    "amg_target",
    "amg_weight_at",
    "evaluate_loss",
    "flow_matching_loss",
    "list_checkpoints",
    "make_dataset",
    "register_dataset",
    "train",
]
