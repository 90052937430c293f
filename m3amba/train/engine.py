"""Training, checkpoint/resume, evaluation and whole-scene prediction.

A run folder holds::

    config.json                      the resolved configuration
    log.csv, log.jsonl               one row per epoch (TensorBoard events too, if installed)
    checkpoints/epoch_0003/          one folder per epoch, written atomically:
        model.safetensors              model weights (the frozen CLIP tower is never stored)
        ema.safetensors                EMA weights (when train.ema_decay > 0)
        state.pt                       torch.save of plain tensors/dicts: optimiser, scheduler, RNG
                                       states, epoch, step, normalisation stats, class names, model
                                       and run config (read back with torch.load(weights_only=True))
    checkpoints/LATEST               the name of the newest complete checkpoint folder
    metrics_test.json                test metrics of the final model

A checkpoint folder is first written as ``.tmp-...`` (every file fsynced), then renamed into place,
and only then is ``LATEST`` replaced (temporary file, fsync, rename): a crash leaves either the
previous or the new checkpoint, never a half-written one. ``resume`` takes the newest complete
checkpoint (``LATEST``, or a newer folder renamed into place just before a crash), removes the
temporary folders a killed writer left behind, and trims the logs back to that checkpoint.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import mmap
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

from .._checkpoint import _fsync_dir, load_checkpoint, load_state_dict_file, read_torch_file, save_state_dict_file
from .._faults import pause_point
from ..data import NormStats, Scene, TrainWindows, compute_norm_stats, sliding_window_logits
from ..data.scene import scene_defaults
from ..metrics import classification_metrics, format_metrics
from .config import load_config, merge_config
from .distributed import DistInfo, barrier, cleanup, init_distributed
from .loss import M3ambaLoss

__all__ = ["train", "build_scene", "build_model", "load_trained", "evaluate", "predict_scene", "argmax_classes",
           "save_checkpoint", "resolve_checkpoint", "TrainedModel"]


# -- data and model ------------------------------------------------------------------------------
def build_scene(data_cfg: Dict[str, Any], data_dir=None) -> Scene:
    """The :class:`Scene` a config's ``data`` section describes (``data_dir`` overrides the config's).

    ``data.nonfinite`` (``raise`` | ``fill`` | ``mask``) and ``data.nodata`` choose what happens to
    NaN/Inf and nodata values (see :class:`~m3amba.data.Scene`); they apply to every reader.
    """
    with scene_defaults(nonfinite=data_cfg.get("nonfinite") or "raise", nodata=data_cfg.get("nodata")):
        return _read_scene(data_cfg, data_dir)


def _read_scene(data_cfg: Dict[str, Any], data_dir=None) -> Scene:
    name = data_cfg["name"].lower()
    folder = data_dir if data_dir is not None else data_cfg.get("data_dir")
    split = dict(data_cfg.get("split") or {})
    if name in ("eolearn_slovenia", "eolearn"):
        from ..data import load_eolearn_slovenia
        return load_eolearn_slovenia(folder, date=data_cfg.get("date", 0),
                                     train_per_class=split.get("train_per_class", 50),
                                     train_fraction=split.get("train_fraction"),
                                     val_per_class=split.get("val_per_class", 0) or 0,
                                     block_size=split.get("block_size"), seed=split.get("seed", 0))
    from ..data import load_benchmark
    if folder is None:
        raise ValueError(f"data.data_dir (or --data-dir) must point at the {name} files")
    return load_benchmark(name, folder, check_sizes=data_cfg.get("check_sizes", True))


def build_model(model_cfg: Dict[str, Any], in_chans, num_classes: int) -> nn.Module:
    import m3amba
    args = dict(model_cfg.get("args") or {})
    return m3amba.create_model(model_cfg["name"], in_chans=tuple(in_chans), num_classes=num_classes, **args)


def _device(name: str, dist_info: Optional[DistInfo] = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info.local_rank if dist_info else 0)
        return torch.device("cpu")
    return torch.device(name)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class _AllHeads(nn.Module):
    """Exposes ``forward_all``'s three logits as ``forward`` (what DDP wraps)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x1, x2):
        out = self.model.forward_all(x1, x2)
        return out.logits_m1, out.logits_m2, out.logits_fused


# -- optimisation -------------------------------------------------------------------------------
def _param_groups(model: nn.Module, weight_decay: float):
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if n in skip or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


class _Ema:
    """Exponential moving average of the trainable weights and buffers (decay warmed up over steps)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema, cur = [], []
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                ema.append(self.state[k])
                cur.append(v.detach())
            else:
                self.state[k].copy_(v)
        # one fused multi-tensor update instead of two kernels per tensor (same arithmetic)
        torch._foreach_mul_(ema, d)
        torch._foreach_add_(ema, cur, alpha=1 - d)


# -- checkpoints ----------------------------------------------------------------------------------
def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


def save_checkpoint(folder: Path, model: nn.Module, state: Dict[str, Any], ema: Optional[_Ema] = None,
                    meta: Optional[Dict[str, Any]] = None) -> Path:
    """Write checkpoint folder ``folder`` atomically (see the module doc)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_state_dict_file(model.state_dict(), tmp / "model.safetensors")
    if ema is not None:
        save_state_dict_file(ema.state, tmp / "ema.safetensors")
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    with open(tmp / "meta.json", "w") as f:
        json.dump(meta or {}, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    pause_point("checkpoint-temp")
    old = None
    if folder.exists():
        old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    pause_point("checkpoint-renamed")
    _write_text_atomic(folder.parent / "LATEST", folder.name + "\n")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


_CHECKPOINT_FILES = ("state.pt", "model.safetensors", "meta.json")


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in _CHECKPOINT_FILES)


def resolve_checkpoint(path) -> Path:
    """A checkpoint folder from a run folder, its ``checkpoints/`` folder or a checkpoint folder itself.

    For a run folder this is the newest complete checkpoint: the one ``LATEST`` names or, when a crash
    came between renaming a newer ``epoch_NNNN`` folder into place and replacing ``LATEST`` (or
    ``LATEST`` is missing), that newer folder. Folders are renamed into place only once complete, and
    temporary ``.tmp-*`` folders are never taken.
    """
    p = Path(path)
    if (p / "state.pt").is_file():
        return p
    for cand in (p / "checkpoints", p):
        latest = cand / "LATEST"
        found = []
        if latest.is_file():
            named = cand / latest.read_text().strip()
            if (named / "state.pt").is_file() and (named / "model.safetensors").is_file():
                found.append(named)
        found += [f for f in cand.glob("epoch_*") if _complete(f)]
        if found:
            return max(found, key=lambda f: f.name)
    raise FileNotFoundError(f"no checkpoint at {p} (expected a run folder with checkpoints/LATEST, or a folder "
                            "holding state.pt and model.safetensors); without --resume training starts from scratch")


def _remove_stale_temporaries(folder: Path, say: Callable[[str], None]) -> None:
    """Delete what a killed checkpoint writer left behind (``.tmp-*`` / ``.old-*`` folders, ``.LATEST.tmp-*``)."""
    if not folder.is_dir():
        return
    stale = [p for p in folder.iterdir() if p.name.startswith((".tmp-", ".old-", ".LATEST.tmp-"))]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if stale:
        say(f"removed {len(stale)} incomplete checkpoint temporar{'y' if len(stale) == 1 else 'ies'} "
            f"of an interrupted run: {', '.join(sorted(p.name for p in stale))}")


def _trim_logs(out: Path, ck: Path, epoch: int) -> None:
    """Make log.jsonl / log.csv hold exactly one row per epoch up to the resumed ``epoch``.

    Rows written after the checkpoint a run resumes from are dropped (those epochs run again), and
    the resumed epoch's row is restored from the checkpoint's ``meta.json`` if a crash came between
    writing the checkpoint and appending the row.
    """
    rows: Dict[int, Dict[str, Any]] = {}
    jsonl = out / "log.jsonl"
    if jsonl.is_file():
        for line in jsonl.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by the crash
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= epoch:
                rows[row["epoch"]] = row
    if epoch not in rows and (ck / "meta.json").is_file():
        logged = json.loads((ck / "meta.json").read_text()).get("log")
        if isinstance(logged, dict):
            rows[epoch] = logged
    ordered = [rows[e] for e in sorted(rows)]
    _write_text_atomic(jsonl, "".join(json.dumps(r) + "\n" for r in ordered))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_LOG_FIELDS, lineterminator="\r\n")
    w.writeheader()
    for r in ordered:
        w.writerow({k: r.get(k, "") for k in _LOG_FIELDS})
    _write_text_atomic(out / "log.csv", buf.getvalue())


def _load_state(folder: Path) -> Dict[str, Any]:
    return read_torch_file(folder / "state.pt")  # weights_only: nothing but tensors and plain containers


# -- evaluation / prediction --------------------------------------------------------------------
class TrainedModel:
    """A model with what inference needs: normalisation stats, class names, config."""

    def __init__(self, model: nn.Module, norm: NormStats, class_names, config: Dict[str, Any], epoch: int = 0,
                 device: torch.device = torch.device("cpu")) -> None:
        self.model, self.norm, self.class_names, self.config = model, norm, list(class_names), config
        self.epoch, self.device = epoch, device


def load_trained(path, device="cpu", use_ema: Optional[bool] = None) -> TrainedModel:
    """Rebuild the model of a checkpoint (run folder or checkpoint folder) with its stats and classes."""
    folder = resolve_checkpoint(path)
    state = _load_state(folder)
    cfg = json.loads(state["config_json"])
    mc = state["model"]
    model = build_model(cfg["model"], mc["in_chans"], mc["num_classes"])
    if use_ema is None:
        use_ema = cfg["eval"].get("use_ema", True)
    weights = folder / ("ema.safetensors" if use_ema and (folder / "ema.safetensors").is_file() else "model.safetensors")
    load_checkpoint(model, weights)
    device = torch.device(device)
    model.to(device).eval()
    return TrainedModel(model, NormStats.from_state(state["norm"]), state["class_names"], cfg,
                        int(state["epoch"]), device)


def _memory_mapped(a: Any) -> bool:
    """Whether ``a`` (or an array it is a view of) is backed by a memory-mapped file."""
    seen = 0
    while a is not None and seen < 64:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
        seen += 1
    return False


def predict_scene(model: nn.Module, scene: Scene, norm: NormStats, window: int = 32, stride: int = 16,
                  batch_size: int = 32, device="cpu", amp: bool = True, progress: bool = False,
                  out: Optional[np.ndarray] = None, stream: Optional[bool] = None):
    """Stitched logits (K, H, W) and per-pixel window counts of the whole scene (sliding windows).

    Args:
        model, scene, norm: the trained model, the scene and the normalisation stored with the model.
        window, stride, batch_size: sliding-window side, step, and windows per forward pass.
        device, amp: where to predict; bf16 autocast on CUDA.
        progress: show a progress bar (tqdm).
        out: optional (K, H, W) float32 array, e.g. a ``numpy.lib.format.open_memmap``, that receives the
            averaged logits as finished rows come out: no full-scene logits are held in memory. It is
            returned in place of the logits tensor.
        stream: normalise each window batch on ``device`` instead of the whole scene up front, so no
            normalised copy of the scene is made: a memory-mapped scene is then only ever read one band
            of windows at a time. None (default): stream when either modality is memory-mapped (e.g.
            ``Scene(np.load(path, mmap_mode="r"), ..., layout="chw")``). The logits are the same either
            way (same float32 arithmetic per element).

    Returns:
        ``(logits, counts)``: the logits (a CPU float32 tensor, or ``out``) and the (H, W) number of
        windows each pixel was averaged over.
    """
    device = torch.device(device)
    if stream is None:
        stream = _memory_mapped(scene.modality1) or _memory_mapped(scene.modality2)
    if stream:
        norm.check_bands(scene.modality1.shape[0], scene.modality2.shape[0])
        x1, x2 = scene.modality1, scene.modality2
        normalize = norm.batch_normalizer(device)
    else:
        x1, x2 = norm.apply(scene.modality1, scene.modality2)
        normalize = None
    was_training = model.training
    model.eval()

    def run(b1, b2):
        if normalize is not None:
            b1, b2 = normalize(b1, b2)
        with _autocast(device, amp):
            return model(b1, b2).float()
    try:
        return sliding_window_logits(run, x1, x2, scene.num_classes, window=window, stride=stride,
                                     batch_size=batch_size, device=device, progress=progress, out=out)
    finally:
        model.train(was_training)


def argmax_classes(logits, rows_per_chunk: int = 256, dtype=np.int64) -> np.ndarray:
    """The (H, W) 0-based class ids of (K, H, W) ``logits`` (tensor or numpy array / memmap).

    Computed ``rows_per_chunk`` rows at a time, so a memory-mapped logits file is never read whole;
    ties go to the first class (``torch.argmax``). ``dtype`` is the result's integer type.
    """
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be >= 1, got {rows_per_chunk}")
    if len(logits.shape) != 3:
        raise ValueError(f"logits must be (K, H, W), got shape {tuple(logits.shape)}")
    h, w = int(logits.shape[1]), int(logits.shape[2])
    result = np.empty((h, w), dtype=dtype)
    for r in range(0, h, rows_per_chunk):
        part = logits[:, r:r + rows_per_chunk]
        part = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))  # a writable copy
        result[r:r + rows_per_chunk] = part.argmax(0).cpu().numpy()
    return result


def evaluate(model: nn.Module, scene: Scene, norm: NormStats, which: str = "test", window: int = 32,
             stride: int = 16, batch_size: int = 32, device="cpu", amp: bool = True, logits=None,
             progress: bool = False, out: Optional[np.ndarray] = None,
             stream: Optional[bool] = None) -> Dict[str, Any]:
    """OA / AA / kappa / per-class accuracy / confusion matrix over exactly the ``which`` pixels.

    ``logits`` (a (K, H, W) tensor or array, e.g. a memmap) skips prediction; otherwise the scene is
    predicted with :func:`predict_scene` (``out=`` and ``stream=`` are passed on: with ``out`` the
    logits go there and are read back in row chunks).
    """
    mask = {"test": scene.test_mask, "val": scene.val_mask, "train": scene.train_mask}[which]
    if mask is None or not (mask > 0).any():
        raise ValueError(f"the scene has no {which} labels")
    if logits is None:
        logits, counts = predict_scene(model, scene, norm, window, stride, batch_size, device, amp, progress,
                                       out=out, stream=stream)
        if int(counts.min()) < 1:  # pragma: no cover  (tiling guarantees coverage)
            raise RuntimeError("some pixels were not predicted")
    pred = logits.argmax(0).numpy() if isinstance(logits, torch.Tensor) else argmax_classes(logits)
    sel = mask > 0
    m = classification_metrics(mask[sel] - 1, pred[sel], scene.num_classes, scene.class_names)
    m["expected_count"] = int(scene.counts(which).sum())
    m["split"] = which
    return m


# -- training ------------------------------------------------------------------------------------
_LOG_FIELDS = ["epoch", "step", "lr", "loss", "ce_m1", "ce_m2", "ce_fused", "cos_m1", "cos_m2", "train_acc",
               "val_oa", "val_aa", "val_kappa", "epoch_time_s"]


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, **kw)


def train(config: Dict[str, Any], out_dir, resume: bool = False, quiet: bool = False, scene: Optional[Scene] = None,
          data_dir=None, log: Callable[[str], None] = print, evaluate_test: bool = True,
          stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Train per ``config`` (see :mod:`m3amba.train.config`) into ``out_dir``; returns a summary dict.

    ``resume=True`` continues from ``out_dir``'s newest checkpoint exactly where it stopped (weights,
    optimiser, schedule, RNG states, epoch). ``scene`` bypasses the config's data section (tests).
    Under ``torchrun`` this trains data-parallel (see :mod:`m3amba.train.distributed`).
    """
    cfg = merge_config(load_config(), config)
    tc, ec = cfg["train"], cfg["eval"]
    out = Path(out_dir)
    device_guess = "cuda" if (tc["device"] == "auto" and torch.cuda.is_available()) else str(tc["device"]).split(":")[0]
    dinfo = init_distributed("cuda" if device_guess == "cuda" else "cpu")
    device = _device(tc["device"], dinfo)
    main = dinfo.is_main
    say = log if main else (lambda *_: None)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        resume_state = None
        ck = None
        if resume:
            if main:
                _remove_stale_temporaries(out / "checkpoints", say)
            ck = resolve_checkpoint(out)
            resume_state = _load_state(ck)
            saved_cfg = json.loads(resume_state["config_json"])
            cfg = merge_config(saved_cfg, {"train": {"epochs": tc["epochs"]}})  # only the epoch count may change
            tc, ec = cfg["train"], cfg["eval"]
            say(f"resuming from {ck} (epoch {resume_state['epoch']})")
            if main:
                _trim_logs(out, ck, int(resume_state["epoch"]))
        if tc.get("deterministic"):
            _set_deterministic(device)
        if scene is None:
            scene = build_scene(cfg["data"], data_dir)
        torch.manual_seed(tc["seed"])
        random.seed(tc["seed"])
        np.random.seed(tc["seed"])
        if resume_state is not None:
            _check_resumable(resume_state, scene, ck)
            norm = NormStats.from_state(resume_state["norm"])
        else:
            nc = cfg["data"].get("normalization") or {}
            norm = compute_norm_stats(scene, nc.get("method", "minmax"), nc.get("source", "scene"))
        say(scene.summary())
        model = build_model(cfg["model"], scene.in_chans, scene.num_classes).to(device)
        x1, x2 = norm.apply(scene.modality1, scene.modality2)
        windows = TrainWindows(x1, x2, scene.train_mask, window=tc["window"], augment=tc["augment"])
        if device.type == "cuda":
            windows.to(device)  # the padded scene is small next to the model: cut windows on the GPU
        samples = tc["samples_per_epoch"] or len(windows.anchors)
        per_rank = samples // dinfo.world_size if dinfo.enabled else samples
        if per_rank < 1:
            raise ValueError(f"samples_per_epoch={samples} is smaller than the number of ranks ({dinfo.world_size})")
        steps_per_epoch = math.ceil(per_rank / tc["batch_size"])
        total_steps = steps_per_epoch * tc["epochs"]
        optimizer = torch.optim.AdamW(_param_groups(model, tc["weight_decay"]), lr=tc["lr"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(total_steps, steps_per_epoch * tc["warmup_epochs"], tc["min_lr"] / tc["lr"]))
        ema = _Ema(model, tc["ema_decay"]) if tc["ema_decay"] else None
        loss_fn = M3ambaLoss(**cfg["loss"])
        start_epoch, step = 0, 0
        if resume_state is not None:
            load_checkpoint(model, ck / "model.safetensors")
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            if ema is not None and (ck / "ema.safetensors").is_file():
                ema.state = {k: v.to(device) for k, v in load_state_dict_file(ck / "ema.safetensors").items()}
            _set_rng_state(resume_state["rng"])
            start_epoch, step = int(resume_state["epoch"]), int(resume_state["step"])
        if tc.get("grad_checkpointing"):
            model.set_grad_checkpointing(tc["grad_checkpointing"])
        if tc.get("compile"):
            model.compile_layers()
        net: nn.Module = _AllHeads(model)
        if dinfo.enabled:
            from torch.nn.parallel import DistributedDataParallel
            net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            _write_text_atomic(out / "config.json", json.dumps(cfg, indent=2))
        writer = _tensorboard(out) if main else None
        show = main and not quiet and sys.stderr.isatty()
        summary: Dict[str, Any] = {"epochs": []}
        expected_val = int(scene.counts("val").sum())
        last_epoch = tc["epochs"] if stop_after is None else min(tc["epochs"], stop_after)
        for epoch in range(start_epoch, last_epoch):
            t0 = time.time()
            model.train()
            plan = windows.epoch_plan(epoch, tc["seed"], samples, dinfo.rank, dinfo.world_size)
            # running sums stay on the device: one host sync per epoch instead of several per step
            sums = {k: torch.zeros((), dtype=torch.float64, device=device)
                    for k in ("loss", "ce_m1", "ce_m2", "ce_fused", "cos_m1", "cos_m2")}
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = torch.zeros((), dtype=torch.int64, device=device)
            bar = _progress(range(0, len(plan), tc["batch_size"]), show, desc=f"epoch {epoch + 1}/{tc['epochs']}",
                            leave=False)
            for start in bar:
                b1, b2, y, valid = (t.to(device) for t in windows.batch(plan[start:start + tc["batch_size"]]))
                with _autocast(device, tc["amp"]):
                    l1, l2, lf = net(b1, b2)
                terms = loss_fn(l1, l2, lf, y, valid)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                if tc["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"])
                optimizer.step()
                scheduler.step()
                step += 1
                pause_point("step")
                if ema is not None:
                    ema.update(model, step)
                for k in sums:
                    sums[k] += terms[k].detach().double()
                lab = y >= 0
                correct += ((lf.detach().argmax(1) == y) & lab).sum()
                seen += lab.sum()
                if show and hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{float(terms['loss']):.3f}")
            nb = max(1, math.ceil(len(plan) / tc["batch_size"]))
            row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                   **{k: float(v) / nb for k, v in sums.items()}, "train_acc": int(correct) / max(1, int(seen))}
            if main and scene.val_mask is not None and tc["eval_every"] and (epoch + 1) % tc["eval_every"] == 0:
                vm = evaluate(model, scene, norm, "val", ec["window"], ec["stride"], ec["batch_size"], device, tc["amp"])
                row.update(val_oa=vm["oa"], val_aa=vm["aa"], val_kappa=vm["kappa"])
            row["epoch_time_s"] = time.time() - t0
            summary["epochs"].append(row)
            if main:
                msg = (f"epoch {epoch + 1}/{tc['epochs']}  loss {row['loss']:.4f}  (ce {row['ce_fused']:.3f} fused, "
                       f"cos {row['cos_m1']:.3f}/{row['cos_m2']:.3f})  train acc {100 * row['train_acc']:.1f}%  "
                       f"lr {row['lr']:.2e}  {row['epoch_time_s']:.1f}s")
                if "val_oa" in row:
                    msg += f"  val OA {100 * row['val_oa']:.2f}% ({expected_val} px)"
                say(msg)
                state = {
                    "epoch": epoch + 1, "step": step, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": _rng_state(), "norm": norm.to_state(),
                    "class_names": list(scene.class_names),
                    "model": {"name": cfg["model"]["name"], "in_chans": list(scene.in_chans),
                              "num_classes": scene.num_classes},
                    "config_json": json.dumps(cfg),
                }
                meta = {"epoch": epoch + 1, "step": step, "class_names": scene.class_names, "model": state["model"],
                        "norm": {"method": norm.method, "source": norm.source}, "scene": scene.name, "log": row}
                save_checkpoint(out / "checkpoints" / f"epoch_{epoch + 1:04d}", model, state, ema, meta)
                _prune(out / "checkpoints", tc["keep_checkpoints"])
                _append_logs(out, row, writer)
            barrier(dinfo)
        if writer is not None:
            writer.close()
        summary["model"] = model
        if main and evaluate_test and last_epoch == tc["epochs"] and (scene.test_mask > 0).any():
            eval_model = model
            if ema is not None and ec.get("use_ema", True):
                eval_model = copy.deepcopy(model)  # the returned model keeps its raw weights
                eval_model.load_state_dict(ema.state)
            m = evaluate(eval_model, scene, norm, "test", ec["window"], ec["stride"], ec["batch_size"], device, tc["amp"],
                         progress=show)
            _write_text_atomic(out / "metrics_test.json", json.dumps(m, indent=2))
            say(format_metrics(m, m["expected_count"]))
            summary["test"] = m
        barrier(dinfo)
        return summary
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        cleanup(dinfo)


def _check_resumable(state: Dict[str, Any], scene: Scene, ck: Path) -> None:
    """The scene a run resumes on must have the checkpoint's bands and classes."""
    bands = tuple(state["model"]["in_chans"])
    if tuple(scene.in_chans) != bands:
        raise ValueError(f"cannot resume from {ck}: the scene has {scene.in_chans[0]} + {scene.in_chans[1]} bands, the "
                         f"checkpoint's model {bands[0]} + {bands[1]}; resume on the scene the run was started on "
                         "(or start a new run, fine-tuning from these weights)")
    if list(state["class_names"]) != list(scene.class_names):
        raise ValueError(f"cannot resume from {ck}: the scene's classes {scene.class_names} differ from the "
                         f"checkpoint's {state['class_names']}")


def _set_deterministic(device: torch.device) -> None:
    """``train.deterministic``: deterministic kernels only (an error names any op that has none)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def _prune(folder: Path, keep: int) -> None:
    if not keep or keep < 1:
        return
    ckpts = sorted(p for p in folder.glob("epoch_*") if p.is_dir())
    for p in ckpts[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV/JSON logs only
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _append_logs(out: Path, row: Dict[str, Any], writer) -> None:
    csv_path = out / "log.csv"
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in _LOG_FIELDS})
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        for k, v in row.items():
            if k not in ("epoch", "step") and isinstance(v, (int, float)):
                writer.add_scalar(k, v, row["epoch"])
