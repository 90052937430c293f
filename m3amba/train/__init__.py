"""Training: the M3amba loss, the training/evaluation engine, configs and data-parallel helpers."""
from .config import DEFAULT_CONFIG, DEMO_CONFIG, load_config, merge_config
from .engine import (TrainedModel, argmax_classes, build_model, build_scene, evaluate, load_trained, predict_scene,
                     resolve_checkpoint, save_checkpoint, train)
from .loss import M3ambaLoss

__all__ = ["DEFAULT_CONFIG", "DEMO_CONFIG", "M3ambaLoss", "TrainedModel", "argmax_classes", "build_model",
           "build_scene", "evaluate", "load_config", "load_trained", "merge_config", "predict_scene",
           "resolve_checkpoint", "save_checkpoint", "train"]
