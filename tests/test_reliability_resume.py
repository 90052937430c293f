"""Work is never lost: ``m3amba train`` killed with SIGKILL at any moment resumes to the uninterrupted result.

One run is killed three times: during training (between optimiser steps, after the first checkpoint),
during a checkpoint write (temporary folder complete, not yet renamed) and between renaming a
checkpoint into place and replacing ``LATEST``. Each time ``m3amba train --resume`` continues from
the newest complete checkpoint; the final weights, EMA weights, test metrics and logs equal those
of an uninterrupted run with the same seed, bit for bit (deterministic mode, CPU). The kills land
at chosen moments thanks to the pause points of :mod:`m3amba._faults` (``M3AMBA_FAULT_PAUSE``).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from m3amba.train import resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4

CONFIG = {
    "model": {"name": "m3amba_tiny_noclip",
              "args": {"embed_dim": 16, "depth": 1, "d_state": 4, "ssm_ratio": 1.0, "drop_path_rate": 0.1}},
    "train": {"epochs": EPOCHS, "batch_size": 4, "samples_per_epoch": 8, "window": 8, "lr": 1e-2,
              "warmup_epochs": 1, "seed": 3, "ema_decay": 0.9, "keep_checkpoints": 2, "device": "cpu"},
    "eval": {"window": 8, "stride": 4, "batch_size": 16},
}


def _write_trento_layout(folder: Path) -> None:
    """A 12 x 10 synthetic scene in the Trento .mat layout (3 of its 6 classes labelled)."""
    from scipy.io import savemat

    from m3amba.data import split_labels
    rng = np.random.default_rng(0)
    h, w = 12, 10
    labels = np.zeros((h, w), np.int64)
    labels[:, :3], labels[:, 3:7], labels[:, 7:] = 1, 2, 3
    train, _, test = split_labels(labels, train_per_class=4, seed=0)
    folder.mkdir()
    savemat(folder / "HSI.mat", {"HSI": (rng.normal(size=(h, w, 3)) + labels[..., None]).astype(np.float32)})
    savemat(folder / "LiDAR.mat", {"LiDAR": rng.normal(size=(h, w)).astype(np.float32)})
    savemat(folder / "TRLabel.mat", {"TRLabel": train.astype(np.uint8)})
    savemat(folder / "TSLabel.mat", {"TSLabel": test.astype(np.uint8)})


class Run:
    """``m3amba train`` in a subprocess (its output in a log file next to the run folder)."""

    def __init__(self, cfg: Path, out: Path, *, resume: bool = False, pause: str = "") -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", M3AMBA_FAULT_PAUSE=pause)
        args = [sys.executable, "-m", "m3amba", "train", "--config", str(cfg), "--out", str(out), "--quiet",
                "--deterministic"] + (["--resume"] if resume else [])
        self.log = out.with_name(f"{out.name}-{time.monotonic_ns()}.log")
        self._log_file = open(self.log, "w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()  # the child writes to the file directly

    def wait_for(self, condition, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (rc {self.proc.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")
            time.sleep(0.01)

    def kill(self) -> None:
        assert self.proc.poll() is None, f"the run was not running any more:\n{self.output()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        self._log_file.close()

    def finish(self, timeout: float = 120.0) -> str:
        rc = self.proc.wait(timeout=timeout)
        self._log_file.close()
        out = self.log.read_text()
        assert rc == 0, f"m3amba train failed (rc {rc}):\n{out}"
        return out


def _latest(run: Path) -> str:
    p = run / "checkpoints" / "LATEST"
    return p.read_text().strip() if p.is_file() else ""


def _complete_tmp(run: Path, epoch: int) -> bool:
    return any((p / "meta.json").is_file() for p in (run / "checkpoints").glob(f".tmp-epoch_{epoch:04d}-*"))


def _tensors(path: Path):
    from safetensors.torch import load_file
    return load_file(str(path))


def _rows(run: Path):
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("epoch_time_s")
    return rows


def test_sigkill_during_training_and_checkpoint_writes_then_resume_equals_uninterrupted(tmp_path):
    _write_trento_layout(tmp_path / "trento")
    cfg = dict(CONFIG, data={"name": "trento", "data_dir": str(tmp_path / "trento"), "check_sizes": False})
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    ref_dir, run = tmp_path / "reference", tmp_path / "killed"

    reference = Run(cfg_path, ref_dir)  # runs alongside the killed run (which mostly sleeps)

    # 1. SIGKILL during training: between optimiser steps of epoch 2, epoch 1's checkpoint complete
    first = Run(cfg_path, run, pause="step=0.75")
    first.wait_for(lambda: _latest(run) == "epoch_0001", "the first checkpoint")
    first.kill()
    assert not (run / "metrics_test.json").exists()
    assert not (run / "checkpoints" / "epoch_0002").exists()

    # 2. resume; SIGKILL while epoch 3's checkpoint is complete under its temporary name (not renamed)
    second = Run(cfg_path, run, resume=True, pause="checkpoint-temp@2=120")
    second.wait_for(lambda: _complete_tmp(run, 3), "epoch 3's temporary checkpoint folder")
    second.kill()
    assert "resuming from" in second.output() and "epoch_0001" in second.output()
    assert _latest(run) == "epoch_0002" and not (run / "checkpoints" / "epoch_0003").exists()
    assert resolve_checkpoint(run).name == "epoch_0002"  # the temporary folder is never taken

    # 3. resume; SIGKILL after epoch 3's folder is renamed into place, before LATEST names it
    third = Run(cfg_path, run, resume=True, pause="checkpoint-renamed@1=120")
    third.wait_for(lambda: (run / "checkpoints" / "epoch_0003" / "meta.json").is_file(), "epoch 3's checkpoint")
    time.sleep(0.2)  # now inside the pause: the rename is done, LATEST not yet replaced
    third.kill()
    assert "removed 1 incomplete checkpoint temporary" in third.output()
    assert _latest(run) == "epoch_0002"
    assert resolve_checkpoint(run).name == "epoch_0003"  # the newer complete folder wins over LATEST
    assert [r["epoch"] for r in _rows(run)] == [1, 2]  # epoch 3's log row was never appended

    # 4. resume to the end
    text = Run(cfg_path, run, resume=True).finish()
    assert "resuming from" in text and "epoch_0003" in text
    reference.finish()

    a, b = resolve_checkpoint(ref_dir), resolve_checkpoint(run)
    assert a.name == b.name == f"epoch_{EPOCHS:04d}"
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = _tensors(a / name), _tensors(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}: {k} differs from the uninterrupted run"
    ma = json.loads((ref_dir / "metrics_test.json").read_text())
    mb = json.loads((run / "metrics_test.json").read_text())
    assert ma == mb
    assert _rows(run) == _rows(ref_dir)  # one row per epoch, equal values (epoch 3's restored from its checkpoint)
    assert len((run / "log.csv").read_text().splitlines()) == EPOCHS + 1
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*")) == ["epoch_0003", "epoch_0004"]
