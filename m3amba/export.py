"""From a training run to a folder ready to publish: weights, ``config.json`` and a complete model card.

:func:`export_run` takes a run folder written by ``m3amba train`` (or :func:`m3amba.train.train`),
re-evaluates its checkpoint with the per-pixel protocol on the configured split, computes the
per-pixel random-forest baseline on the same split and normalisation (:mod:`m3amba.baselines`), and
writes a :func:`m3amba.save_pretrained` folder whose card carries the full provenance (see
:data:`m3amba._model_card.PROVENANCE_KEYS`). :func:`run_recipe` does the whole pipeline in one call:
train from a config, record the device and times (``run_info.json`` in the run folder), export.

Command line: ``m3amba recipe CONFIG --out RUN --tag TAG`` (train → evaluate → baseline → card) and
``m3amba export RUN OUT --tag TAG`` (for a run trained earlier). See docs/recipes.md.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

__all__ = ["export_run", "run_recipe", "RUN_INFO_NAME", "DEFAULT_TOLERANCE", "SCENE_INFO", "PAPER_RESULTS",
           "PAPER_NOTE"]

PathLike = Union[str, os.PathLike]

#: what ``m3amba recipe`` records next to the run (device, times, command, data folder)
RUN_INFO_NAME = "run_info.json"

#: percentage points of OA / AA / κ×100: retraining with the card's command (different GPU kernels,
#: bf16) and re-evaluating the published weights (bf16 on GPU against fp32 on CPU). The retraining
#: figure is a default, not a measurement: measure it (several seeds) and pass ``tolerance=``.
DEFAULT_TOLERANCE = {"retrain_pp": 2.0, "evaluate_pp": 0.1, "baseline_pp": 0.0}

#: what a card says about each known scene: description, source, data license, modality names
SCENE_INFO: Dict[str, Dict[str, Any]] = {
    "eolearn_slovenia": {
        "description": "A 101 x 100 patch of Slovenia at 10 m from eo-learn's example data: Sentinel-2 L1C (13 bands "
                       "x 5 dates) + a DEM, with eo-learn's land-use / land-cover labels.",
        "source": "https://github.com/sentinel-hub/eo-learn (example_data/)", "license": "MIT",
        "modalities": ["Sentinel-2 L1C", "DEM"],
        "split": "no official split exists: `train_per_class` pixels per class drawn with the seed (at most half of "
                 "a class), every other labelled pixel is test",
    },
    "houston2013": {
        "description": "University of Houston campus (IEEE GRSS Data Fusion Contest 2013): 144-band CASI "
                       "hyperspectral image + LiDAR DSM, 349 x 1905 pixels at 2.5 m, 15 classes.",
        "source": "IEEE GRSS Data Fusion Contest 2013", "license": "the data provider's terms",
        "modalities": ["HSI", "LiDAR"], "split": "the standard fixed train / test maps of the data set",
    },
    "muufl": {
        "description": "MUUFL Gulfport (University of Southern Mississippi Gulf Park campus): 64-band hyperspectral "
                       "image + 2 LiDAR rasters, 325 x 220 pixels, 11 classes.",
        "source": "https://github.com/GatorSense/MUUFLGulfport", "license": "the data provider's terms",
        "modalities": ["HSI", "LiDAR"],
        "split": "the train / test maps distributed with the files (train_test_gt.mat; sizes vary between papers)",
    },
    "trento": {
        "description": "Trento (rural area south of Trento, Italy): 63-band AISA Eagle hyperspectral image + LiDAR "
                       "DSM, 166 x 600 pixels, 6 classes.",
        "source": "distributed by the data set's authors", "license": "the data provider's terms",
        "modalities": ["HSI", "LiDAR"], "split": "the standard fixed train / test maps of the data set",
    },
    "augsburg": {
        "description": "Augsburg, Germany: 180-band HySpex hyperspectral image + 4-band Sentinel-1 SAR, "
                       "332 x 485 pixels at 30 m, 7 classes.",
        "source": "distributed by the data set's authors", "license": "the data provider's terms",
        "modalities": ["HSI", "SAR"], "split": "the standard fixed train / test maps of the data set",
    },
}

#: figures reported by the paper's logs (percent; κ×100). These count test pixels several times over
#: overlapping tiles and leave borders untested: they are not per-pixel figures.
PAPER_RESULTS = {"houston2013": {"OA": 97.31, "AA": 97.32, "kappa": 97.11},
                 "muufl": {"OA": 97.84, "AA": 96.10, "kappa": 97.13},
                 "augsburg": {"OA": 98.19, "AA": 93.32, "kappa": 97.39}}


PAPER_NOTE = "pixels counted several times over overlapping tiles, borders untested: not per-pixel figures"


def _command_line(argv: Optional[Sequence[str]]) -> Optional[str]:
    return None if argv is None else "m3amba " + shlex.join([str(a) for a in argv])


def _device_facts(device) -> Dict[str, Any]:
    import torch

    from . import __version__
    device = torch.device(device)
    facts: Dict[str, Any] = {"device": str(device), "torch": torch.__version__, "m3amba": __version__}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        facts["device_name"] = torch.cuda.get_device_name(index)
        facts["cuda"] = torch.version.cuda
    else:
        facts["device_name"] = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, " \
                               f"{torch.get_num_threads()} torch threads"
    return facts


def _resolve_device(name: Optional[str]) -> str:
    import torch
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def _training_facts(run_dir: Path, run_info: Mapping[str, Any]) -> Dict[str, Any]:
    rows = []
    log = run_dir / "log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    facts: Dict[str, Any] = {}
    if rows:
        facts.update(epochs=int(rows[-1]["epoch"]), steps=int(rows[-1].get("step", 0)),
                     time_s=round(sum(float(r.get("epoch_time_s") or 0.0) for r in rows), 1))
    for key in ("device", "device_name", "torch", "cuda", "m3amba", "wall_s", "finished"):
        if run_info.get(key) is not None:
            facts[key] = run_info[key]
    return facts


def _split_facts(scene, data_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    from .data import BENCHMARKS
    counts = {w: scene.counts(w) for w in ("train", "val", "test")}
    info = SCENE_INFO.get(scene.name, {})
    out: Dict[str, Any] = {
        "description": info.get("split", "as configured"),
        "train": int(counts["train"].sum()), "val": int(counts["val"].sum()), "test": int(counts["test"].sum()),
        "per_class": {c: {w: int(counts[w][i]) for w in counts} for i, c in enumerate(scene.class_names)},
    }
    spec = BENCHMARKS.get(scene.name)
    if spec is not None:
        out["standard"] = {"train": spec.train_count, "test": spec.test_count}
        if spec.train_count is not None:
            out["description"] += f" (standard: {spec.train_count:,} train / {spec.test_count:,} test pixels)"
    else:
        out["settings"] = dict(data_cfg.get("split") or {})
    return out


def _refuse_random_clip(model_args: Mapping[str, Any], allow: bool) -> None:
    if model_args.get("clip_model") is not None and model_args.get("clip_pretrained") is None and not allow:
        raise ValueError(
            "this run was trained with a randomly initialised CLIP tower (clip_pretrained=None): it is not "
            "CLIP-driven and its weights must not be published. Train a *_noclip variant, or a CLIP variant with a "
            "real tower (model.args.clip_pretrained: openai or a local open_clip weights file); "
            "allow_random_clip=True (--allow-random-clip) exports it anyway, for tests only")


def export_run(
    run_dir: PathLike,
    out_dir: PathLike,
    tag: str,
    *,
    data_dir: Optional[PathLike] = None,
    device: Optional[str] = None,
    use_ema: Optional[bool] = None,
    baseline: Union[bool, Mapping[str, Any]] = True,
    n_estimators: Optional[int] = None,
    tolerance: Optional[Mapping[str, float]] = None,
    license: Optional[str] = None,
    command: Optional[str] = None,
    notes: Optional[str] = None,
    trained_on: Optional[str] = None,
    allow_random_clip: bool = False,
    progress: bool = False,
    log=print,
) -> Dict[str, Any]:
    """Export a training run as a publishable folder: weights, ``config.json`` and a complete model card.

    Args:
        run_dir: a run folder of ``m3amba train`` (or one of its checkpoint folders).
        out_dir: the folder to write (``model.safetensors``, ``config.json``, ``README.md``).
        tag: the pretrained tag, e.g. ``"eolearn_lulc"`` (the weights become ``<model>.<tag>``).
        data_dir: the data set's folder (default: the one ``run_info.json`` records, else the config's).
        device: where to evaluate (default: CUDA when available).
        use_ema: evaluate and export the EMA weights (default: the config's ``eval.use_ema``).
        baseline: ``True`` computes the random-forest baseline; a dict is taken as an already
            computed :func:`m3amba.baselines.random_forest_baseline` result; ``False`` leaves it out.
        n_estimators: trees of the baseline (default :data:`m3amba.baselines.DEFAULT_N_ESTIMATORS`).
        tolerance: ``{"retrain_pp", "evaluate_pp", "baseline_pp"}`` overriding :data:`DEFAULT_TOLERANCE`.
        license: the weights' license for the card (e.g. ``"apache-2.0"``).
        command: the command that reproduces the run (default: the one ``run_info.json`` records).
        notes: free text for the card.
        trained_on: the device / card the run was trained on (e.g. ``"2 x NVIDIA H100"``), for runs
            without ``run_info.json`` (plain ``m3amba train``, ``torchrun``); overrides the recorded one.
        allow_random_clip: export a CLIP variant built with a random tower (tests only).
        progress: progress bars while evaluating.
        log: where messages go.

    Returns:
        ``{"out_dir", "results", "baseline", "provenance"}``.

    Raises:
        ValueError: the run used a random CLIP tower, the scene's classes differ from the
            checkpoint's, or not every test pixel was evaluated.
    """
    import m3amba
    from ._model_card import summary_metrics, write_model_card
    from .baselines import DEFAULT_N_ESTIMATORS, random_forest_baseline
    from .train import build_scene, evaluate, load_trained, resolve_checkpoint

    run_dir = Path(run_dir)
    ck = resolve_checkpoint(run_dir)
    run_root = ck.parent.parent if ck.parent.name == "checkpoints" else run_dir
    info_path = run_root / RUN_INFO_NAME
    run_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    device = _resolve_device(device)
    tm = load_trained(ck, device=device, use_ema=use_ema)
    cfg = tm.config
    model_args = dict(getattr(tm.model, "model_args", None) or {})
    _refuse_random_clip(model_args, allow_random_clip)
    if data_dir is None:
        data_dir = run_info.get("data_dir")
    scene = build_scene(cfg["data"], data_dir)
    if list(scene.class_names) != list(tm.class_names):
        raise ValueError(f"the scene's classes {scene.class_names} differ from the checkpoint's {tm.class_names}: "
                         "point data_dir (--data-dir) at the data the run was trained on")
    ec = cfg["eval"]
    t0 = time.perf_counter()
    results = evaluate(tm.model, scene, tm.norm, "test", ec["window"], ec["stride"], ec["batch_size"], tm.device,
                       cfg["train"].get("amp", True), progress=progress)
    if results["count"] != results["expected_count"]:
        raise ValueError(f"evaluated {results['count']} test pixels, expected {results['expected_count']}")
    log(f"{scene.name}: {cfg['model']['name']} (epoch {tm.epoch}) OA {100 * results['oa']:.2f}%  "
        f"AA {100 * results['aa']:.2f}%  kappa {results['kappa']:.4f} on {results['count']} test pixels "
        f"({time.perf_counter() - t0:.1f}s)")
    seed = int(cfg["train"].get("seed", 0))
    n_trees = int(n_estimators or DEFAULT_N_ESTIMATORS)
    rf: Optional[Dict[str, Any]] = None
    if isinstance(baseline, Mapping):
        rf = dict(baseline)
    elif baseline:
        rf = random_forest_baseline(scene, n_estimators=n_trees, seed=seed, norm=tm.norm)
    if rf is not None:
        if rf.get("count") != results["count"]:
            raise ValueError(f"the baseline was scored on {rf.get('count')} pixels, the model on {results['count']}: "
                             "not the same split")
        log(f"random forest ({rf['params'].get('n_estimators')} trees): OA {100 * rf['oa']:.2f}%  "
            f"AA {100 * rf['aa']:.2f}%  kappa {rf['kappa']:.4f}")
        n_trees = int(rf["params"].get("n_estimators", n_trees))

    norm = tm.norm
    info = SCENE_INFO.get(scene.name, {})
    from .data import BENCHMARKS
    spec = BENCHMARKS.get(scene.name)
    modalities = info.get("modalities") or (list(spec.modality_names) if spec else None)
    band_names = scene.band_names
    overlay: Dict[str, Any] = {
        "tag": tag, "dataset": scene.name, "license": license, "metrics": summary_metrics(results),
        "metrics_protocol": (f"per-pixel: each of the {results['count']:,} test pixels predicted once "
                             f"({ec['window']} x {ec['window']} sliding windows, stride {ec['stride']}, overlapping "
                             f"logits averaged); seed {seed}; one run"),
        "class_names": list(scene.class_names), "modalities": modalities,
        "band_names": [list(b) if b is not None else None for b in band_names] if band_names else None,
        "mean": [norm.offset1.tolist(), norm.offset2.tolist()], "std": [norm.scale1.tolist(), norm.scale2.tolist()],
        "notes": notes or ("Weights exported by `m3amba export` from the training run this card describes; "
                           "the metrics were measured on these weights."),
    }
    out = m3amba.save_pretrained(tm.model, out_dir, architecture=cfg["model"]["name"],
                                 pretrained_cfg_overlay={k: v for k, v in overlay.items() if v is not None})
    config_ref = run_info.get("config") or str(run_root / "config.json")
    dd = f" --data-dir {shlex.quote(str(data_dir))}" if data_dir is not None else ""
    baseline_command = f"m3amba baseline {shlex.quote(str(config_ref))}{dd} --n-estimators {n_trees} --seed {seed}"
    if command is None:
        command = run_info.get("command") or (
            f"m3amba recipe {shlex.quote(str(config_ref))}{dd} --out {shlex.quote(str(run_root))} --tag {tag} "
            f"--card-dir {shlex.quote(str(out_dir))}")
    data_settings = {k: v for k, v in cfg["data"].items()
                     if k not in ("name", "data_dir", "split", "normalization") and v is not None
                     and not (k == "date" and scene.name != "eolearn_slovenia")}  # date: eo-learn's time series only
    provenance = {
        "data": {"name": scene.name, "description": info.get("description"), "source": info.get("source"),
                 "license": info.get("license"), "shape": list(scene.shape), "bands": list(scene.in_chans),
                 "modalities": modalities, "class_names": list(scene.class_names), "settings": data_settings},
        "split": _split_facts(scene, cfg["data"]),
        "protocol": (f"Per-pixel. Sliding {ec['window']} x {ec['window']} windows with stride {ec['stride']} over the "
                     "reflect-padded scene; the logits of overlapping windows are averaged, so every pixel is "
                     f"predicted exactly once. OA / AA / κ / per-class accuracy over exactly the {results['count']:,} "
                     f"test pixels (expected {results['expected_count']:,}); AA averages the classes with test "
                     "pixels; nothing is added to denominators. (The paper's logs count pixels several times over "
                     "overlapping tiles and leave borders untested: their figures are not comparable one to one.)"),
        "normalization": {"method": norm.method, "source": norm.source},
        "hyperparameters": {k: cfg[k] for k in ("model", "train", "loss", "eval") if k in cfg},
        "seed": seed,
        "training": {**_training_facts(run_root, run_info), **({"device_name": trained_on} if trained_on else {})},
        "results": results,
        "reproduce": {"command": command, "baseline_command": baseline_command,
                      "tolerance": {**DEFAULT_TOLERANCE, **dict(tolerance or {})}},
    }
    if rf is not None:
        provenance["baseline"] = rf
    if scene.name in PAPER_RESULTS:
        provenance["paper"] = {**PAPER_RESULTS[scene.name], "note": PAPER_NOTE}
    write_model_card(out, provenance)
    size = (Path(out) / "model.safetensors").stat().st_size
    log(f"wrote {out} (model.safetensors {size / 2**20:.1f} MiB, config.json, README.md); register it with "
        f"m3amba.manifest_entry({str(out)!r}, '{cfg['model']['name']}.{tag}', bundled=True)")
    return {"out_dir": Path(out), "results": results, "baseline": rf, "provenance": provenance}


def run_recipe(
    config: PathLike,
    out: PathLike,
    tag: str,
    *,
    card_dir: Optional[PathLike] = None,
    data_dir: Optional[PathLike] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    n_estimators: Optional[int] = None,
    tolerance: Optional[Mapping[str, float]] = None,
    license: Optional[str] = None,
    notes: Optional[str] = None,
    allow_random_clip: bool = False,
    resume: bool = False,
    quiet: bool = False,
    argv: Optional[Sequence[str]] = None,
    log=print,
) -> Dict[str, Any]:
    """Train from ``config``, evaluate per pixel, compute the random-forest baseline, write the model card.

    Args:
        config: a training config file (e.g. ``configs/houston2013/m3amba_base.yaml``).
        out: the run folder (checkpoints, logs, ``run_info.json``).
        tag: the pretrained tag the exported folder records.
        card_dir: where the publishable folder goes (default ``<out>/export``).
        data_dir: the data set's folder (overrides the config's ``data.data_dir``).
        overrides: config overrides (e.g. ``{"train": {"epochs": 2}}``).
        n_estimators, tolerance, license, notes, allow_random_clip: see :func:`export_run`.
        resume: continue the run folder's newest checkpoint.
        quiet: no progress bars.
        argv: the command-line arguments (recorded as the reproducing command).
        log: where messages go.
    """
    from .baselines import _sklearn_forest
    from .train import load_config, train

    _sklearn_forest()  # scikit-learn missing: say so before training, not after
    cfg = load_config(config, dict(overrides or {}))
    margs = dict(cfg["model"].get("args") or {})
    from .models import get_model_config
    full_args = {**get_model_config(cfg["model"]["name"])["model_args"], **margs}
    _refuse_random_clip(full_args, allow_random_clip)  # before hours of training, not after
    out = Path(out)
    card_dir = Path(card_dir) if card_dir is not None else out / "export"
    device = _resolve_device(cfg["train"].get("device"))
    start = time.perf_counter()
    train(cfg, out, resume=resume, quiet=quiet, data_dir=data_dir, log=log)
    wall = time.perf_counter() - start
    info = {**_device_facts(device), "wall_s": round(wall, 1),
            "finished": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "command": _command_line(argv), "config": str(config),
            "data_dir": str(data_dir) if data_dir is not None else None, "python": sys.version.split()[0]}
    (out / RUN_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return export_run(out, card_dir, tag, data_dir=data_dir, device=device, n_estimators=n_estimators,
                      tolerance=tolerance, license=license, notes=notes, allow_random_clip=allow_random_clip,
                      progress=not quiet and sys.stderr.isatty(), log=log)
