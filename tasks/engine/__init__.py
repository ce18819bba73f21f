"""The training engine every training task runs on (Lightning Fabric underneath)."""

from tasks.engine.specs import EmaSpec, OptimizerSpec, RunRef, TrainingTaskSpec, TrainSpec
from tasks.engine.trainer import EXIT_INTERRUPTED, Interrupted, Objective, TrainingFailed, train

__all__ = [
    "EXIT_INTERRUPTED",
    "EmaSpec",
    "Interrupted",
    "Objective",
    "OptimizerSpec",
    "RunRef",
    "TrainSpec",
    "TrainingFailed",
    "TrainingTaskSpec",
    "train",
]
