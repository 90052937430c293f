"""Scenes, data-set readers, normalisation and window sampling/tiling for training and evaluation."""
from .benchmarks import BENCHMARKS, load_benchmark
from .eolearn import DataNotFoundError, find_eolearn_dir, load_eolearn_slovenia
from .normalize import NormStats, compute_norm_stats
from .scene import Scene, SceneError, split_labels
from .windows import TrainWindows, reflect_pad, sliding_window_logits, tile_positions

__all__ = [
    "BENCHMARKS", "DataNotFoundError", "NormStats", "Scene", "SceneError", "TrainWindows",
    "compute_norm_stats", "find_eolearn_dir", "load_benchmark", "load_eolearn_slovenia", "reflect_pad",
    "sliding_window_logits", "split_labels", "tile_positions",
]
