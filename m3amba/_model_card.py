"""Model cards: a README.md with Hugging Face Hub YAML front matter, written from a pretrained cfg.

:func:`model_card` renders the card of a saved folder from its ``pretrained_cfg`` (what
:func:`m3amba.save_pretrained` writes). A card for weights one means to publish also carries the
**provenance** of the numbers it states (see :data:`PROVENANCE_KEYS`): the data and the exact split,
the evaluation protocol, the normalisation, every hyper-parameter and the seed, the training time and
device, OA / AA / κ with a per-class table, the per-pixel random-forest baseline on the same split,
and the command that reproduces it with the tolerance to expect. :func:`write_model_card` stores that
record in the folder's ``config.json`` (key ``"provenance"``, ignored when the model is loaded) and
renders ``README.md`` from it; ``m3amba export`` / ``m3amba recipe`` fill it from a training run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

__all__ = ["model_card", "card_metadata", "METRIC_NAMES", "PROVENANCE_KEYS", "summary_metrics", "write_model_card",
           "read_provenance"]

#: the sections of a provenance record (all optional; a card shows those present):
#:
#: * ``data``: ``name``, ``description``, ``source``, ``license``, ``shape`` [H, W], ``bands`` [C1, C2],
#:   ``modalities``, ``class_names``, ``settings`` (e.g. the date of a time series);
#: * ``split``: ``description``, ``train`` / ``val`` / ``test`` pixel counts, ``per_class``
#:   ({class: {"train": n, "val": n, "test": n}}), ``settings`` (the config's split section);
#: * ``protocol``: how the metrics were measured (text);
#: * ``normalization``: ``method``, ``source`` (and optionally ``offset`` / ``scale`` per modality);
#: * ``hyperparameters``: the training config's ``model``, ``train``, ``loss`` and ``eval`` sections;
#: * ``seed``: the training seed;
#: * ``training``: ``time_s`` (sum of epoch times), ``wall_s``, ``epochs``, ``steps``, ``device``,
#:   ``device_name`` (the card, e.g. the GPU), ``torch``, ``m3amba``, ``finished`` (ISO date);
#: * ``results``: :func:`m3amba.metrics.classification_metrics` output of the model (fractions),
#:   with ``expected_count``;
#: * ``baseline``: the same for the per-pixel random forest (:mod:`m3amba.baselines`), with ``params``;
#: * ``paper``: the paper's reported ``OA`` / ``AA`` / ``kappa`` on the scene (percent) and a ``note``;
#: * ``reproduce``: ``command`` (retrains and re-evaluates), ``baseline_command``, ``tolerance``
#:   (``{"retrain_pp": .., "evaluate_pp": .., "baseline_pp": ..}``, percentage points of OA / AA / κ×100)
#:   and ``notes``.
PROVENANCE_KEYS = ("data", "split", "protocol", "normalization", "hyperparameters", "seed", "training", "results",
                   "baseline", "paper", "reproduce")

#: metric keys of ``PretrainedCfg.metrics`` → (Hub metric type, display name)
METRIC_NAMES = {
    "OA": ("overall_accuracy", "Overall accuracy (OA, %)"),
    "AA": ("average_accuracy", "Average accuracy (AA, %)"),
    "kappa": ("cohen_kappa", "Cohen's kappa (κ, x100)"),
}
_BASE_TAGS = ["m3amba", "remote-sensing", "multimodal", "hyperspectral", "land-cover-classification", "mamba",
              "pytorch"]


def _metric_key(key: str) -> str:
    return "kappa" if key.lower() in ("kappa", "κ", "k") else key.upper() if key.upper() in ("OA", "AA") else key


def card_metadata(architecture: str, cfg: Mapping[str, Any], model_args: Mapping[str, Any]) -> Dict[str, Any]:
    """The YAML front matter: license, library_name, tags, datasets, metrics and model-index where known."""
    meta: Dict[str, Any] = {"license": cfg.get("license") or "other", "library_name": "m3amba"}
    tags = list(_BASE_TAGS) + [architecture]
    clip = model_args.get("clip_model")
    tags.append("clip" if clip is not None else "no-clip")
    meta["tags"] = tags
    if cfg.get("dataset"):
        meta["datasets"] = [cfg["dataset"]]
    metrics = {_metric_key(k): v for k, v in (cfg.get("metrics") or {}).items()}
    if metrics:
        meta["metrics"] = [METRIC_NAMES[k][0] if k in METRIC_NAMES else k for k in metrics]
        if cfg.get("dataset"):
            name = f"{architecture}.{cfg['tag']}" if cfg.get("tag") else architecture
            meta["model-index"] = [{
                "name": name,
                "results": [{
                    "task": {"type": "image-segmentation", "name": "per-pixel land-cover classification"},
                    "dataset": {"type": cfg["dataset"], "name": cfg["dataset"]},
                    "metrics": [
                        {"type": METRIC_NAMES.get(k, (k,))[0], "value": float(v), "name": METRIC_NAMES.get(k, (k, k))[1]}
                        for k, v in metrics.items()
                    ],
                }],
            }]
    return meta


def _fmt(values: Optional[List[Any]]) -> str:
    if values is None:
        return "—"
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def model_card(architecture: str, cfg: Mapping[str, Any], model_args: Mapping[str, Any],
               random_clip: bool = False, provenance: Optional[Mapping[str, Any]] = None) -> str:
    """README.md text for a saved model folder (front matter, usage, inputs, classes, metrics, citation).

    Args:
        architecture: the registered variant.
        cfg: the folder's ``pretrained_cfg`` (a :class:`~m3amba.PretrainedCfg` as a dict).
        model_args: the constructor arguments recorded in ``config.json``.
        random_clip: the model was built with a randomly initialised CLIP tower (the card warns).
        provenance: a provenance record (see :data:`PROVENANCE_KEYS`); adds the sections on data,
            split, protocol, training, results with the random-forest baseline, and reproduction.
    """
    name = f"{architecture}.{cfg['tag']}" if cfg.get("tag") else architecture
    front = yaml.safe_dump(card_metadata(architecture, cfg, model_args), sort_keys=False, allow_unicode=True)
    in_chans = model_args.get("in_chans") or cfg.get("in_chans")
    lines = [f"---\n{front}---", "", f"# {name}", ""]
    lines += [
        "An [M3amba](https://arxiv.org/abs/2503.06446) model (CLIP-driven Mamba for multi-modal remote-sensing "
        "classification) saved with the `m3amba` package: two co-registered modalities in, per-pixel land-cover "
        "classes out.", "",
    ]
    if random_clip:
        lines += ["> **Warning**: this model was built with a randomly initialised CLIP tower "
                  "(`clip_pretrained=None`); it is not CLIP-driven and is meant for tests only.", ""]
    lines += ["## Use", "", "```python", "import m3amba", ""]
    if cfg.get("hf_hub_id"):
        lines += [f"model = m3amba.create_model({name!r}, pretrained=True)"]
    elif provenance and cfg.get("tag"):
        lines += ["# once the tag is registered (weights/manifest.json or M3AMBA_WEIGHTS_DIR):",
                  f"model = m3amba.create_model({name!r}, pretrained=True)"]
    lines += ["# or, from this folder:", "model = m3amba.load_pretrained_dir(\"path/to/this/folder\")",
              "logits = model(x1, x2)   # (B, K, H, W) per-pixel logits of the fused head", "```", ""]
    lines += ["## Model", "", "| | |", "| --- | --- |", f"| architecture | `{architecture}` |"]
    lines.append(f"| bands (modality 1, modality 2) | {tuple(in_chans) if in_chans else '—'} |")
    lines.append(f"| classes | {model_args.get('num_classes', cfg.get('num_classes'))} |")
    lines.append(f"| patch size | {model_args.get('img_size', cfg.get('img_size', 32))} x "
                 f"{model_args.get('img_size', cfg.get('img_size', 32))} |")
    clip = model_args.get("clip_model")
    clip_text = "none (no-CLIP ablation)" if clip is None else (
        f"`{clip}` / `{model_args.get('clip_pretrained')}` (frozen, not stored in the weights)"
        if isinstance(clip, str) else "custom open_clip config (frozen, not stored in the weights)")
    lines.append(f"| CLIP tower | {clip_text} |")
    lines.append(f"| license | {cfg.get('license') or 'not stated'} |")
    lines.append(f"| dataset | {cfg.get('dataset') or 'not stated'} |")
    if cfg.get("sha256"):
        lines.append(f"| sha256 of model.safetensors | `{cfg['sha256']}` |")
    lines.append("")
    modalities = cfg.get("modalities") or ("modality 1", "modality 2")
    if any(cfg.get(k) for k in ("band_names", "mean", "std")):
        lines += ["## Inputs", "", "Normalise each band as `(x - mean) / std` before calling the model.", "",
                  "| modality | bands | mean | std |", "| --- | --- | --- | --- |"]
        for i in (0, 1):
            pick = lambda key: (cfg.get(key) or (None, None))[i]  # noqa: E731
            lines.append(f"| {modalities[i]} | {_fmt(pick('band_names'))} | {_fmt(pick('mean'))} | {_fmt(pick('std'))} |")
        lines.append("")
    if cfg.get("class_names"):
        lines += ["## Classes", "", " | ".join(f"{i}: {c}" for i, c in enumerate(cfg["class_names"])), ""]
    metrics = cfg.get("metrics") or {}
    prov = dict(provenance or {})
    if prov:
        lines += _provenance_sections(prov, metrics, cfg.get("metrics_protocol"))
    elif metrics:
        lines += ["## Results", ""]
        if cfg.get("metrics_protocol"):
            lines += [f"Protocol: {cfg['metrics_protocol']}", ""]
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {METRIC_NAMES.get(_metric_key(k), (k, k))[1]} | {v} |" for k, v in metrics.items()]
        lines.append("")
    if cfg.get("notes"):
        lines += ["## Notes", "", str(cfg["notes"]), ""]
    lines += [
        "## Citation", "", "```bibtex",
        "@article{cao2025m3amba,",
        "  title   = {{M$^3$amba}: {CLIP}-driven Mamba Model for Multi-modal Remote Sensing Classification},",
        "  author  = {Cao, Mingxiang and Xie, Weiying and Zhang, Xin and Zhang, Jiaqing and Jiang, Kai and Lei, Jie"
        " and Li, Yunsong},",
        "  journal = {arXiv preprint arXiv:2503.06446},",
        "  year    = {2025}",
        "}", "```", "",
    ]
    return "\n".join(lines)


# -- provenance ------------------------------------------------------------------------------------
def _pct(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * float(value):.{digits}f}"


def summary_metrics(results: Mapping[str, Any], digits: int = 2) -> Dict[str, float]:
    """``{"OA": .., "AA": .., "kappa": ..}`` in percent (κ×100) from :func:`m3amba.metrics.classification_metrics` output.

    This is the form ``PretrainedCfg.metrics`` takes (and the zoo table / Hub model index show).
    """
    return {"OA": round(100 * float(results["oa"]), digits), "AA": round(100 * float(results["aa"]), digits),
            "kappa": round(100 * float(results["kappa"]), digits)}


def _kv_table(rows: Sequence[tuple]) -> List[str]:
    out = ["| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in rows if v not in (None, "", [], {})]
    return out + [""]


def _code(value: Any) -> str:
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _provenance_sections(prov: Mapping[str, Any], metrics: Mapping[str, Any], metrics_protocol: Optional[str]) -> List[str]:
    lines: List[str] = []
    data, split = prov.get("data") or {}, prov.get("split") or {}
    if data or split:
        lines += ["## Training data and split", ""]
        if data.get("description"):
            lines += [str(data["description"]), ""]
        shape, bands = data.get("shape"), data.get("bands")
        lines += _kv_table([
            ("scene", _code(data["name"]) if data.get("name") else None),
            ("source", data.get("source")),
            ("data license", data.get("license")),
            ("size", f"{shape[0]} x {shape[1]} pixels" if shape else None),
            ("bands (modality 1 + 2)", f"{bands[0]} + {bands[1]}" if bands else None),
            ("modalities", " + ".join(data["modalities"]) if data.get("modalities") else None),
            ("scene settings", ", ".join(f"{k}: {_code(v)}" for k, v in (data.get("settings") or {}).items())),
            ("split", split.get("description")),
            ("split settings", ", ".join(f"{k}: {_code(v)}" for k, v in (split.get("settings") or {}).items())),
            ("labelled pixels (train / val / test)",
             " / ".join(f"{int(split.get(k) or 0):,}" for k in ("train", "val", "test")) if "train" in split else None),
        ])
        per_class = split.get("per_class") or {}
        if per_class:
            lines += ["| class | train | val | test |", "| --- | ---: | ---: | ---: |"]
            lines += [f"| {c} | {n.get('train', 0)} | {n.get('val', 0)} | {n.get('test', 0)} |" for c, n in per_class.items()]
            lines.append("")
    norm = prov.get("normalization") or {}
    protocol = prov.get("protocol") or metrics_protocol
    if protocol or norm:
        lines += ["## Protocol", ""]
        if protocol:
            lines += [str(protocol), ""]
        if norm:
            how = {"minmax": "per band, `(x - min) / (max - min)`", "zscore": "per band, `(x - mean) / std`"}
            src = {"scene": "statistics of the whole scene", "train": "statistics of the training pixels only"}
            lines += [f"Normalisation: `{norm.get('method')}` ({how.get(norm.get('method'), 'see the config')}), "
                      f"{src.get(norm.get('source'), norm.get('source'))}. The statistics are the `mean` / `std` "
                      "(offset / scale) of the *Inputs* table: apply `(x - mean) / std` before the model.", ""]
    hp, training = prov.get("hyperparameters") or {}, prov.get("training") or {}
    if hp or training or prov.get("seed") is not None:
        lines += ["## Training", ""]
        t = training
        lines += _kv_table([
            ("seed", _code(prov["seed"]) if prov.get("seed") is not None else None),
            ("epochs / optimiser steps", f"{t.get('epochs')} / {t.get('steps')}" if t.get("epochs") is not None else None),
            ("training time", f"{float(t['time_s']) / 60:.1f} min (sum of epoch times)" if t.get("time_s") is not None else None),
            ("wall time (train + evaluation)", f"{float(t['wall_s']) / 60:.1f} min" if t.get("wall_s") is not None else None),
            ("device", " / ".join(str(v) for v in (t.get("device"), t.get("device_name")) if v) or None),
            ("software", ", ".join(f"{k} {t[k]}" for k in ("m3amba", "torch", "cuda") if t.get(k)) or None),
            ("finished", t.get("finished")),
        ])
        if hp:
            lines += ["Hyper-parameters (the training config's sections):", "", "```yaml",
                      yaml.safe_dump(dict(hp), sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    results, baseline = prov.get("results") or {}, prov.get("baseline") or {}
    if results or baseline or metrics:
        lines += ["## Results", ""]
        count = results.get("count")
        if count is not None:
            lines += [f"On {count:,} test pixels (expected {int(results.get('expected_count', count)):,}), each "
                      "predicted exactly once. κ is shown ×100.", ""]
        header = ["| | OA (%) | AA (%) | κ×100 |", "| --- | ---: | ---: | ---: |"]
        rows = []
        if results:
            rows.append(f"| this model | {_pct(results.get('oa'))} | {_pct(results.get('aa'))} | {_pct(results.get('kappa'))} |")
        elif metrics:
            m = {_metric_key(k): v for k, v in metrics.items()}
            rows.append(f"| this model | {m.get('OA', '—')} | {m.get('AA', '—')} | {m.get('kappa', '—')} |")
        if baseline:
            params = baseline.get("params") or {}
            desc = f"per-pixel random forest ({params.get('n_estimators', '?')} trees, seed {params.get('random_state', '?')})"
            rows.append(f"| {desc}, same split | {_pct(baseline.get('oa'))} | {_pct(baseline.get('aa'))} | "
                        f"{_pct(baseline.get('kappa'))} |")
        paper = prov.get("paper") or {}
        if paper:
            rows.append(f"| the paper's logs ({paper.get('note') or 'not per-pixel figures'}) | {paper.get('OA', '—')} | "
                        f"{paper.get('AA', '—')} | {paper.get('kappa', '—')} |")
        lines += header + rows + [""]
        names = list(results.get("class_names") or baseline.get("class_names") or [])
        if names:
            support = results.get("support") or baseline.get("support") or {}
            pm, pb = results.get("per_class") or {}, baseline.get("per_class") or {}
            cols = ["class", "test pixels"] + (["this model (%)"] if pm else []) + (["random forest (%)"] if pb else [])
            lines += ["Per-class accuracy (producer's accuracy, recall):", "",
                      "| " + " | ".join(cols) + " |", "| --- | " + " | ".join("---:" for _ in cols[1:]) + " |"]
            for n in names:
                cells = [n, str(support.get(n, "—"))] + ([_pct(pm.get(n))] if pm else []) + ([_pct(pb.get(n))] if pb else [])
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        cm = results.get("confusion_matrix")
        if cm and names:
            lines += ["<details><summary>Confusion matrix of this model (rows: reference, columns: prediction)</summary>",
                      "", "| | " + " | ".join(str(i) for i in range(len(names))) + " |",
                      "| --- | " + " | ".join("---:" for _ in names) + " |"]
            lines += [f"| {i}: {n} | " + " | ".join(str(v) for v in row) + " |" for i, (n, row) in enumerate(zip(names, cm))]
            lines += ["", "</details>", ""]
    rep = prov.get("reproduce") or {}
    if rep:
        lines += ["## Reproduce", ""]
        if rep.get("command"):
            lines += ["Retrain, evaluate with the per-pixel protocol, recompute the baseline and write this card:", "",
                      "```bash", str(rep["command"]), "```", ""]
        if rep.get("baseline_command"):
            lines += ["The random-forest baseline alone:", "", "```bash", str(rep["baseline_command"]), "```", ""]
        tol = rep.get("tolerance") or {}
        if tol:
            parts = []
            if tol.get("retrain_pp") is not None:
                parts.append(f"retraining with the command above lands within ±{tol['retrain_pp']:g} percentage points "
                             "of OA, AA and κ×100")
            if tol.get("evaluate_pp") is not None:
                parts.append(f"evaluating these weights on the same split reproduces them within ±{tol['evaluate_pp']:g}")
            if tol.get("baseline_pp") == 0:
                parts.append("the random forest exactly (same seed and scikit-learn version)")
            elif tol.get("baseline_pp") is not None:
                parts.append(f"the random forest within ±{tol['baseline_pp']:g}")
            lines += ["Tolerance: " + "; ".join(parts) + ".", ""]
        if rep.get("notes"):
            lines += [str(rep["notes"]), ""]
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{value!r} ({type(value).__name__}) cannot be stored in a provenance record")


def read_provenance(directory: Union[str, Path]) -> Dict[str, Any]:
    """The provenance record stored in a saved folder's ``config.json`` (empty when there is none)."""
    from ._pretrained_io import read_config

    return dict(read_config(directory).get("provenance") or {})


def write_model_card(directory: Union[str, Path], provenance: Optional[Mapping[str, Any]] = None) -> Path:
    """Store ``provenance`` in a saved folder's ``config.json`` and (re)write its ``README.md`` card.

    Args:
        directory: a folder written by :func:`m3amba.save_pretrained`.
        provenance: the record (see :data:`PROVENANCE_KEYS`; unknown sections raise a ValueError);
            ``None`` keeps the one already stored.

    Returns:
        the path of ``README.md``. Loading the folder is unaffected: ``load_pretrained_dir`` reads only
        ``architecture``, ``model_args`` and ``pretrained_cfg`` from ``config.json``.
    """
    from ._pretrained_io import CARD_NAME, CONFIG_NAME, _write_text_atomic, read_config

    folder = Path(directory)
    config = read_config(folder)
    if provenance is not None:
        unknown = sorted(set(provenance) - set(PROVENANCE_KEYS))
        if unknown:
            raise ValueError(f"unknown provenance section(s) {unknown}; known: {', '.join(PROVENANCE_KEYS)}")
        config["provenance"] = _jsonable(dict(provenance))
        _write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    args = config["model_args"]
    random_clip = args.get("clip_model") is not None and args.get("clip_pretrained") is None
    text = model_card(config["architecture"], config.get("pretrained_cfg") or {}, args, random_clip=random_clip,
                      provenance=config.get("provenance"))
    _write_text_atomic(folder / CARD_NAME, text)
    return folder / CARD_NAME
