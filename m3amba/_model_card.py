"""Model cards: a README.md with Hugging Face Hub YAML front matter, written from a pretrained cfg."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import yaml

__all__ = ["model_card", "card_metadata", "METRIC_NAMES"]

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
               random_clip: bool = False) -> str:
    """README.md text for a saved model folder (front matter, usage, inputs, classes, metrics, citation)."""
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
    if metrics:
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
