"""Converters from other implementations' checkpoints to this package's layout."""
from .reference import (
    ConvertedCheckpoint,
    convert_reference_checkpoint,
    load_converted,
    save_converted,
)

__all__ = ["ConvertedCheckpoint", "convert_reference_checkpoint", "load_converted", "save_converted"]
