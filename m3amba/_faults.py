"""Fault-injection pause points, for the kill-and-resume tests (inactive unless an environment variable asks).

The checkpoint writers and the training loop call :func:`pause_point` at the moments a crash is most
damaging (a temporary file complete but not yet renamed, a checkpoint renamed but ``LATEST`` not yet
replaced, between optimiser steps). With ``M3AMBA_FAULT_PAUSE`` unset (always, outside tests) a call is
one dictionary lookup and returns at once.

``M3AMBA_FAULT_PAUSE`` is a comma-separated list of ``stage=seconds`` (pause at every hit of ``stage``)
or ``stage@n=seconds`` (pause only at the n-th hit, counting from 1), e.g.
``"step=0.2,checkpoint-temp@2=60"``. Stages:

* ``step``: after each optimiser step;
* ``weights-temp``: a safetensors file written to its temporary name and fsynced, before the rename;
* ``checkpoint-temp``: a checkpoint folder complete under its temporary name, before the rename;
* ``checkpoint-renamed``: the checkpoint folder renamed into place, before ``LATEST`` is replaced.
"""
from __future__ import annotations

import os
import time
from typing import Dict, Optional, Tuple

__all__ = ["pause_point", "FAULT_ENV_VAR"]

FAULT_ENV_VAR = "M3AMBA_FAULT_PAUSE"
_hits: Dict[str, int] = {}


def _parse(spec: str) -> Dict[Tuple[str, Optional[int]], float]:
    out: Dict[Tuple[str, Optional[int]], float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, seconds = item.partition("=")
        stage, _, nth = key.partition("@")
        try:
            out[(stage.strip(), int(nth) if nth else None)] = float(seconds)
        except ValueError:
            raise ValueError(f"{FAULT_ENV_VAR}: cannot parse {item!r} (expected stage=seconds or stage@n=seconds)") from None
    return out


def pause_point(stage: str) -> None:
    """Sleep if ``M3AMBA_FAULT_PAUSE`` asks for a pause at this hit of ``stage`` (see the module doc)."""
    spec = os.environ.get(FAULT_ENV_VAR)
    if not spec:
        return
    n = _hits[stage] = _hits.get(stage, 0) + 1
    plan = _parse(spec)
    seconds = plan.get((stage, n), plan.get((stage, None), 0.0))
    if seconds > 0:
        time.sleep(seconds)
