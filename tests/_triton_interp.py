"""Running Triton kernels under Triton's CPU interpreter from the test suite.

The kernels run in a subprocess with ``TRITON_INTERPRET=1`` (the variable must be set before
Triton is imported); the script prints one JSON line last, which the test reads.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: the shared start of an interpreter script (argv: repo root, test file): checks the interpreter is on,
#: makes the repository and the tests importable, patches the interpreter and imports ``torch`` and
#: ``triton_scan``, or reports a skip when Triton cannot be imported
SCRIPT_PREAMBLE = """
import json, os, sys
assert os.environ.get("TRITON_INTERPRET") == "1"
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.dirname(sys.argv[2]))
import torch
from _triton_interp import patch_interpreter
patch_interpreter()
from m3amba.ops.selective_scan import triton_scan
if not triton_scan.HAS_TRITON:
    print(json.dumps({"skip": "triton not importable"})); sys.exit(0)
"""


def patch_interpreter() -> None:
    """Work around Triton <= 3.6's interpreter and NumPy >= 2.3.

    The interpreter implements ``tensor.__index__`` (used by ``range()`` over runtime scalars) as
    ``int()`` of a 1-element array, which NumPy >= 2.3 rejects. Called inside the subprocess.
    """
    try:
        import triton.runtime.interpreter as _interp
        _orig_patch = getattr(_interp, "_patch_lang_tensor", None)
        if _orig_patch is not None:
            def _patch_lang_tensor(tensor, *args, **kwargs):
                out = _orig_patch(tensor, *args, **kwargs)
                tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0])
                return out
            _interp._patch_lang_tensor = _patch_lang_tensor
    except Exception:
        pass


def run_under_interpreter(script_text: str, tmp_path: Path, test_file: str, timeout: int = 110) -> dict:
    """Run ``script_text`` (argv: repo root, test file) under the interpreter; its last JSON line.

    Skips the calling test when the interpreter is missing or the script reports ``{"skip": ...}``.
    """
    try:
        import triton  # noqa: F401
        import triton.runtime.interpreter  # noqa: F401  (absent in builds without the interpreter)
    except Exception as exc:  # pragma: no cover - depends on the installation
        pytest.skip(f"Triton interpreter unavailable: {exc}")
    script = tmp_path / "run_interpreter.py"
    script.write_text(script_text)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(REPO_ROOT), str(Path(test_file).resolve())],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        if "interpret" in tail.lower() and "not" in tail.lower() and "support" in tail.lower():
            pytest.skip(f"Triton interpreter unavailable: {tail[-300:]}")
        raise AssertionError(f"interpreter subprocess failed (rc={proc.returncode}):\n{tail}")
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in payload:
        pytest.skip(payload["skip"])
    return payload
