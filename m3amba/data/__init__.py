"""Scenes, data-set readers, normalisation and window sampling/tiling for training and evaluation."""
from .benchmarks import BENCHMARKS, load_benchmark
from .eolearn import DataNotFoundError, find_eolearn_dir, load_eolearn_slovenia
from .files import SceneFileError, read_array
from .normalize import NormStats, compute_norm_stats
from .scene import Scene, SceneError, scene_defaults, split_labels
from .windows import TrainWindows, reflect_pad, sliding_window_logits, tile_positions

__all__ = [
    "BENCHMARKS", "DataNotFoundError", "NormStats", "Scene", "SceneError", "SceneFileError", "TrainWindows",
    "compute_norm_stats", "find_eolearn_dir", "load_benchmark", "load_eolearn_slovenia", "read_array",
    "reflect_pad", "scene_defaults", "sliding_window_logits", "split_labels", "tile_positions",
]
