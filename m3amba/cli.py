"""The ``m3amba`` command line: ``list``, ``info``, ``check``, ``bench``, ``convert``, ``train``, ``evaluate``,
``predict``, ``demo``, ``baseline`` (per-pixel random forest), ``export`` and ``recipe`` (model cards)."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Optional, Sequence

__all__ = ["main"]


def _bands(text: str):
    try:
        c1, c2 = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two band counts like 144,1, got {text!r}") from None
    return c1, c2


def _count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _cmd_list(args: argparse.Namespace) -> int:
    import m3amba
    names = m3amba.list_models(args.filter or "", pretrained=args.pretrained)
    print("\n".join(names) if names else "(none)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import m3amba
    from m3amba.models import get_model_config
    name = args.model.partition(".")[0]
    m3amba.model_entrypoint(name)
    info = {"model": args.model, **get_model_config(name),
            "pretrained_cfg": m3amba.get_pretrained_cfg(args.model).to_dict(),
            "pretrained_tags": m3amba.list_pretrained(f"{name}.*")}
    print(json.dumps(info, indent=2, default=str))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import torch

    import m3amba
    from m3amba.ops.selective_scan import get_backend_name

    names = m3amba.list_models(args.filter)
    if not names:
        print(f"no model matches {args.filter!r}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    c1, c2 = args.in_chans
    torch.manual_seed(0)
    print(f"m3amba {m3amba.__version__}, torch {torch.__version__}, device {device}, "
          f"scan backend: {args.scan_backend or get_backend_name(device)}")
    print("CLIP variants are built with a randomly initialised tower (an architecture check, not CLIP-driven).")
    header = f"{'model':<22} {'trainable params':>16} {'CLIP params':>12} {'forward ms (B=%d)' % args.batch_size:>18}  output"
    print(header)
    print("-" * len(header))
    failures = 0
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = m3amba.create_model(name, in_chans=(c1, c2), num_classes=args.num_classes,
                                            clip_pretrained=None, scan_backend=args.scan_backend)
            model = model.to(device).eval()
            x1 = torch.randn(args.batch_size, c1, model.img_size, model.img_size, device=device)
            x2 = torch.randn(args.batch_size, c2, model.img_size, model.img_size, device=device)
            with torch.inference_mode():
                model(x1, x2)  # warm-up
                _sync(device)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    out = model(x1, x2)
                    _sync(device)
                    times.append(time.perf_counter() - start)
            if not torch.isfinite(out).all():
                raise RuntimeError("non-finite logits")
            clip_params = sum(p.numel() for p in model.clip_encoder.parameters()) if model.clip_encoder is not None else 0
            ms = sorted(times)[len(times) // 2] * 1e3
            print(f"{name:<22} {_count_trainable(model):>16,} {clip_params:>12,} {ms:>18.1f}  {tuple(out.shape)}")
        except Exception as exc:  # report every variant, then fail
            failures += 1
            print(f"{name:<22} FAILED: {exc}")
    return 1 if failures else 0


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cmd_convert(args: argparse.Namespace) -> int:
    from m3amba.convert import convert_reference_checkpoint, save_converted
    converted = convert_reference_checkpoint(args.checkpoint, strict=not args.non_strict)
    save_converted(converted, args.out_dir)
    print(f"wrote {args.out_dir}/model.safetensors and config.json "
          f"({len(converted.state_dict)} tensors; dropped {len(converted.dropped)} unused reference tensors)")
    return 0


# -- training / evaluation / prediction ---------------------------------------------------------
def _train_overrides(args: argparse.Namespace) -> dict:
    over: dict = {"train": {}}
    if args.epochs is not None:
        over["train"]["epochs"] = args.epochs
    if getattr(args, "device", None):
        over["train"]["device"] = args.device
    if getattr(args, "seed", None) is not None:
        over["train"]["seed"] = args.seed
    if getattr(args, "deterministic", False):
        over["train"]["deterministic"] = True
    data = _data_overrides(args)
    if data:
        over["data"] = data
    return over


def _nodata(text: str):
    """``--nodata -9999`` (both modalities) or ``--nodata -9999,0`` (one value per modality; ``none`` = none)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [None if p.lower() in ("none", "") else float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or two like -9999,0, got {text!r}") from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a number or two like -9999,0, got {text!r}")
    return values[0] if len(values) == 1 else values


def _data_overrides(args: argparse.Namespace) -> dict:
    data: dict = {}
    if getattr(args, "nonfinite", None):
        data["nonfinite"] = args.nonfinite
    if getattr(args, "nodata", None) is not None:
        data["nodata"] = args.nodata
    return data


def _cmd_train(args: argparse.Namespace) -> int:
    from m3amba.data import DataNotFoundError
    from m3amba.train import load_config, train
    cfg = load_config(args.config, _train_overrides(args))
    start = time.perf_counter()
    try:
        train(cfg, args.out, resume=args.resume, quiet=args.quiet, data_dir=args.data_dir, stop_after=args.stop_after)
    except DataNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run folder: {args.out} ({time.perf_counter() - start:.1f}s)")
    return 0


def _load_for_inference(args: argparse.Namespace):
    from m3amba.train import build_scene, load_trained
    device = args.device or ("cuda" if _cuda_available() else "cpu")
    if getattr(args, "pretrained", None):
        from m3amba.train.published import load_published
        if not args.config:
            raise SystemExit("--pretrained needs --config: the recipe config the tag was trained with "
                             "(its model card's Reproduce section names it)")
        tm = load_published(args.pretrained, args.config, device=device)
    elif not args.checkpoint:
        raise SystemExit("give --checkpoint RUN_OR_CHECKPOINT_FOLDER, or --pretrained MODEL.TAG --config RECIPE")
    else:
        tm = load_trained(args.checkpoint, device=device, use_ema=False if args.no_ema else None)
    scene = build_scene({**tm.config["data"], **_data_overrides(args)}, args.data_dir)
    if scene.value_report.any:
        print(scene.value_report.summary())
    if list(scene.class_names) != list(tm.class_names):
        raise SystemExit(f"the scene's classes {scene.class_names} differ from the checkpoint's {tm.class_names}")
    return tm, scene


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from m3amba.metrics import format_metrics
    from m3amba.train import evaluate, resolve_checkpoint
    tm, scene = _load_for_inference(args)
    ec = tm.config["eval"]
    m = evaluate(tm.model, scene, tm.norm, args.split, args.window or ec["window"], args.stride or ec["stride"],
                 ec["batch_size"], tm.device, tm.config["train"].get("amp", True), progress=not args.quiet and sys.stderr.isatty())
    if args.pretrained:
        m["pretrained"] = args.pretrained
        print(f"{scene.name}, {args.split} split, pretrained {args.pretrained}")
        out = Path(args.out) if args.out else Path(f"metrics_{args.pretrained}_{args.split}.json")
    else:
        m["checkpoint"] = str(resolve_checkpoint(args.checkpoint))
        m["epoch"] = tm.epoch
        print(f"{scene.name}, {args.split} split, checkpoint epoch {tm.epoch}")
        out = Path(args.out) if args.out else resolve_checkpoint(args.checkpoint) / f"metrics_{args.split}.json"
    print(format_metrics(m, m["expected_count"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(m, indent=2))
    print(f"wrote {out}")
    return 0 if m["count"] == m["expected_count"] else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from m3amba._bench import bench_model
    r = bench_model(args.model, args.batch_size, args.device, amp=not args.fp32, train=args.train,
                    compile=args.compile, grad_checkpointing=args.grad_checkpointing, in_chans=args.in_chans,
                    num_classes=args.num_classes, repeats=args.repeats)
    peak = f", peak {r['peak_gib']:.1f} GiB" if "peak_gib" in r else ""
    print(f"{r['model']} {r['mode']} on {r.get('card', r['device'])}: batch {r['batch_size']}, {r['dtype']}, "
          f"scan {r['scan_backend']}{', compiled layers' if r['compiled'] else ''}: median {r['ms']:.1f} ms "
          f"= {r['patches_per_s']:.1f} patches/s{peak}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


def write_map(path, class_map, class_names, title: str = "", georef=None) -> list:
    """Write an (H, W) map of class ids 1..K as .npy, .png (needs matplotlib) or .tif (needs rasterio).

    ``georef`` (``{"crs", "transform"}``, e.g. ``scene.georef[0]``) is written into a GeoTIFF.
    """
    import numpy as np
    from pathlib import Path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, class_map)
    elif suffix == ".png":
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib.colors import ListedColormap
            from matplotlib.patches import Patch
        except ImportError:
            raise SystemExit("PNG maps need matplotlib (pip install 'm3amba[plot]'); write a .npy instead") from None
        k = len(class_names)
        colours = plt.get_cmap("tab20" if k > 10 else "tab10")(np.arange(k))
        fig, ax = plt.subplots(figsize=(8, 8 * class_map.shape[0] / max(class_map.shape[1], 1) + 1))
        ax.imshow(class_map - 1, cmap=ListedColormap(colours), vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
        ax.set_axis_off()
        if title:
            ax.set_title(title)
        ax.legend(handles=[Patch(color=colours[i], label=n) for i, n in enumerate(class_names)],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    elif suffix in (".tif", ".tiff"):
        try:
            import rasterio
        except ImportError:
            raise SystemExit("GeoTIFF maps need rasterio; write a .npy or .png instead") from None
        geo = {}
        if georef and georef.get("crs"):
            geo["crs"] = georef["crs"]
        if georef and georef.get("transform"):
            from rasterio.transform import Affine
            geo["transform"] = Affine(*georef["transform"])
        with rasterio.open(path, "w", driver="GTiff", height=class_map.shape[0], width=class_map.shape[1],
                           count=1, dtype="uint16", nodata=0, **geo) as dst:
            dst.write(class_map.astype("uint16"), 1)
            dst.update_tags(classes=json.dumps({i + 1: n for i, n in enumerate(class_names)}))
    else:
        raise SystemExit(f"unknown map format {suffix!r}: use .npy, .png or .tif")
    return [str(path)]


def _cmd_predict(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import numpy as np

    from m3amba.train import argmax_classes, predict_scene
    tm, scene = _load_for_inference(args)
    ec = tm.config["eval"]
    start = time.perf_counter()
    logits_out, tmp = None, None
    if args.save_logits:
        # logits stream into a .npy memmap as rows finish (never held whole in memory); written under a
        # temporary name and renamed when complete, so an interrupted run leaves no half-written file
        target = Path(args.save_logits)
        if target.suffix != ".npy":  # like numpy.save
            target = target.with_name(target.name + ".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        h, w = scene.shape
        logits_out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(scene.num_classes, h, w))
    try:
        logits, counts = predict_scene(tm.model, scene, tm.norm, args.window or ec["window"],
                                       args.stride or ec["stride"], ec["batch_size"], tm.device,
                                       tm.config["train"].get("amp", True),
                                       progress=not args.quiet and sys.stderr.isatty(), out=logits_out)
        class_map = argmax_classes(logits, dtype=np.uint16)
        class_map += 1  # 1..K, the label-map convention
        if logits_out is not None:
            logits_out.flush()
            del logits, logits_out
            os.replace(tmp, target)
            tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    if scene.valid_mask is not None:  # pixels masked for NaN/Inf/nodata values (nonfinite: mask): 0 = no data
        class_map[~scene.valid_mask] = 0
    h, w = scene.shape
    print(f"predicted {class_map.size} of {h * w} pixels ({h} x {w}; every pixel averaged over "
          f"{int(counts.min())}..{int(counts.max())} windows) in {time.perf_counter() - start:.1f}s")
    for out in args.out:
        write_map(out, class_map, tm.class_names, title=f"{scene.name}: M3amba prediction",
                  georef=scene.georef[0] if scene.georef else None)
        print(f"wrote {out}")
    if args.save_logits:
        print(f"wrote {target} (float32 logits, {scene.num_classes} x {h} x {w}, streamed)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from m3amba.data import DataNotFoundError, find_eolearn_dir
    from m3amba.train import DEMO_CONFIG, merge_config, train
    try:
        data_dir = find_eolearn_dir(args.data_dir)
    except DataNotFoundError as exc:
        print(f"m3amba demo needs the eo-learn Slovenia example patch. {exc}", file=sys.stderr)
        return 2
    cfg = merge_config(DEMO_CONFIG, _train_overrides(args))
    out = Path(args.out)
    print(f"demo: training {cfg['model']['name']} {cfg['model']['args']} on {data_dir} for "
          f"{cfg['train']['epochs']} epochs into {out}")
    start = time.perf_counter()
    summary = train(cfg, out, quiet=args.quiet, data_dir=data_dir)
    t_train = time.perf_counter() - start
    m = summary["test"]
    predict_args = argparse.Namespace(checkpoint=str(out), data_dir=str(data_dir), device=args.device, no_ema=False,
                                      window=None, stride=None, quiet=args.quiet, save_logits=None,
                                      out=[str(out / "map.npy")] + ([str(out / "map.png")] if _has("matplotlib") else []))
    _cmd_predict(predict_args)
    print(f"demo done in {time.perf_counter() - start:.1f}s (training + test evaluation {t_train:.1f}s): "
          f"OA {100 * m['oa']:.2f}%  AA {100 * m['aa']:.2f}%  kappa {m['kappa']:.4f} on {m['count']} test pixels "
          f"(expected {m['expected_count']})")
    return 0


def _tolerance(args: argparse.Namespace) -> dict:
    return {} if args.tolerance is None else {"retrain_pp": args.tolerance}


def _cmd_baseline(args: argparse.Namespace) -> int:
    from pathlib import Path

    from m3amba.baselines import baseline_from_config
    from m3amba.data import DataNotFoundError
    from m3amba.metrics import format_metrics
    from m3amba.train import load_config
    config = args.config_opt or args.config
    if config is None:
        raise SystemExit("m3amba baseline: give the training config, e.g. m3amba baseline configs/eolearn_tiny.yaml")
    try:
        m = baseline_from_config(load_config(config), args.data_dir, n_estimators=args.n_estimators, seed=args.seed,
                                 split=args.split)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DataNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    p = m["params"]
    print(f"{m['scene']}, {args.split} split: per-pixel random forest ({p['n_estimators']} trees, seed "
          f"{p['random_state']}) on {m['features']} normalised bands ({m['normalization']['method']}, "
          f"{m['normalization']['source']} statistics), {m['train_count']} training pixels; fit {m['fit_time_s']:.1f}s, "
          f"predict {m['predict_time_s']:.1f}s")
    print(format_metrics(m, m["expected_count"]))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(m, indent=2))
        print(f"wrote {out}")
    return 0 if m["count"] == m["expected_count"] else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from m3amba.data import DataNotFoundError
    from m3amba.export import export_run
    try:
        export_run(args.run_dir, args.out_dir, args.tag, data_dir=args.data_dir, device=args.device,
                   use_ema=False if args.no_ema else None, baseline=not args.no_baseline,
                   n_estimators=args.n_estimators, tolerance=_tolerance(args), license=args.license,
                   command=args.command, notes=args.notes, trained_on=args.trained_on,
                   allow_random_clip=args.allow_random_clip,
                   progress=not args.quiet and sys.stderr.isatty())
    except (DataNotFoundError, ImportError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _recipe_argv(args: argparse.Namespace) -> list:
    """The recipe's own command line (recorded on the card as the command that reproduces it)."""
    argv = ["recipe", str(args.config), "--out", str(args.out), "--tag", args.tag]
    for flag, value in (("--card-dir", args.card_dir), ("--data-dir", args.data_dir), ("--epochs", args.epochs),
                        ("--seed", args.seed), ("--device", args.device), ("--n-estimators", args.n_estimators),
                        ("--tolerance", args.tolerance), ("--license", args.license), ("--notes", args.notes)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--allow-random-clip"] if args.allow_random_clip else [])


def _cmd_recipe(args: argparse.Namespace) -> int:
    from m3amba.data import DataNotFoundError
    from m3amba.export import run_recipe
    try:
        run_recipe(args.config, args.out, args.tag, card_dir=args.card_dir, data_dir=args.data_dir,
                   overrides=_train_overrides(args), n_estimators=args.n_estimators, tolerance=_tolerance(args),
                   license=args.license, notes=args.notes, allow_random_clip=args.allow_random_clip,
                   resume=args.resume, quiet=args.quiet, argv=_recipe_argv(args))
    except (DataNotFoundError, ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``m3amba`` command."""
    parser = argparse.ArgumentParser(prog="m3amba", description="M3amba model zoo command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered models")
    p.add_argument("filter", nargs="?", default="", help="fnmatch filter, e.g. 'm3amba_t*'")
    p.add_argument("--pretrained", action="store_true", help="list name.tag with published weights")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="show a model's config and pretrained metadata")
    p.add_argument("model")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("check", help="build each variant, run a forward pass, print backend, parameters and time")
    p.add_argument("filter", nargs="?", default="m3amba*", help="fnmatch filter of the models to check")
    p.add_argument("--in-chans", type=_bands, default=(144, 1), help="band counts C1,C2 (default 144,1)")
    p.add_argument("--num-classes", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed forwards per model (median printed)")
    p.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    p.add_argument("--scan-backend", default=None, help="force a selective-scan backend")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("convert", help="convert a reference-implementation checkpoint to safetensors")
    p.add_argument("checkpoint", help="the reference .pth (read with torch.load(weights_only=True))")
    p.add_argument("out_dir", help="folder for model.safetensors and config.json")
    p.add_argument("--non-strict", action="store_true", help="warn about unknown reference keys instead of failing")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("train", help="train on a scene from a YAML/JSON config (torchrun for several GPUs)")
    p.add_argument("--config", required=True, help="e.g. configs/eolearn_tiny.yaml")
    p.add_argument("--data-dir", default=None, help="folder of the data set's files (overrides the config)")
    p.add_argument("--out", default="runs/train", help="run folder (checkpoints, logs, metrics)")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--seed", type=int, default=None, help="override train.seed")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's, auto)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's newest checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                   help="stop after this epoch (checkpoint written; continue later with --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms only (train.deterministic)")
    _add_value_policy(p)
    p.set_defaults(func=_cmd_train)

    for name, helptext in (("evaluate", "OA / AA / kappa / per-class accuracy of a checkpoint on the test pixels"),
                           ("predict", "predict the whole scene's class map with a checkpoint")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--checkpoint", default=None, help="run folder or checkpoint folder")
        p.add_argument("--pretrained", default=None, metavar="MODEL.TAG",
                       help="a published tag instead of a checkpoint (see `m3amba list --pretrained`); needs --config")
        p.add_argument("--config", default=None, help="with --pretrained: the recipe config the tag was trained with")
        p.add_argument("--data-dir", default=None, help="folder of the data set's files (default: as trained)")
        p.add_argument("--device", default=None)
        p.add_argument("--window", type=int, default=None, help="sliding-window side (default: the config's)")
        p.add_argument("--stride", type=int, default=None, help="sliding-window step (default: the config's)")
        p.add_argument("--no-ema", action="store_true", help="use the raw weights even where EMA weights exist")
        p.add_argument("--quiet", action="store_true")
        _add_value_policy(p)
        if name == "evaluate":
            p.add_argument("--split", default="test", choices=("test", "val", "train"))
            p.add_argument("--out", default=None, help="metrics JSON (default: metrics_<split>.json in the checkpoint)")
            p.set_defaults(func=_cmd_evaluate)
        else:
            p.add_argument("--out", nargs="+", required=True, help="map.npy (ids 1..K), map.png (matplotlib), map.tif (rasterio)")
            p.add_argument("--save-logits", default=None,
                           help="also write the (K, H, W) float32 averaged logits as .npy (streamed into a "
                                "memory-mapped file as rows finish, never held whole in memory)")
            p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("bench", help="time inference or training steps of a variant on this machine")
    p.add_argument("model", help="a registered variant, e.g. m3amba_base")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--train", action="store_true", help="time a training step (3-head CE + AdamW) instead of inference")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the trunk layers (compile_layers)")
    p.add_argument("--grad-checkpointing", type=int, default=0, metavar="N", help="recompute the first N layers")
    p.add_argument("--in-chans", type=_bands, default=(144, 1), help="band counts, e.g. 144,1")
    p.add_argument("--num-classes", type=int, default=15)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None, help="also write the result here")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="train a tiny model on the eo-learn Slovenia patch, evaluate, predict")
    p.add_argument("--data-dir", default=None, help="folder with s2_l1c.npy, dem.npy, lulc.npy")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("baseline", help="per-pixel random forest on a config's scene, split and normalisation")
    p.add_argument("config", nargs="?", default=None, help="the training config, e.g. configs/eolearn_tiny.yaml")
    p.add_argument("--config", dest="config_opt", default=None, help="the same, as an option (like m3amba train)")
    p.add_argument("--data-dir", default=None, help="folder of the data set's files (overrides the config)")
    p.add_argument("--out", default=None, help="write the metrics as JSON")
    p.add_argument("--n-estimators", type=int, default=500, help="trees (default 500)")
    p.add_argument("--seed", type=int, default=None, help="the forest's seed (default: the config's train.seed)")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.set_defaults(func=_cmd_baseline)

    def card_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tag", required=True, help="pretrained tag, e.g. eolearn_lulc (weights become <model>.<tag>)")
        p.add_argument("--data-dir", default=None, help="folder of the data set's files")
        p.add_argument("--n-estimators", type=int, default=None, help="trees of the random-forest baseline (500)")
        p.add_argument("--tolerance", type=float, default=None, metavar="PP",
                       help="retraining tolerance stated on the card, percentage points of OA/AA/kappa (default 2)")
        p.add_argument("--license", default=None, help="license of the weights for the card, e.g. apache-2.0")
        p.add_argument("--notes", default=None, help="free text for the card")
        p.add_argument("--allow-random-clip", action="store_true",
                       help="export a CLIP variant built with a random tower (tests only; never publish it)")
        p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("export", help="evaluate a run per pixel, add the random-forest baseline, write a "
                                      "publishable folder (weights, config.json, model card)")
    p.add_argument("run_dir", help="run folder of m3amba train (or a checkpoint folder)")
    p.add_argument("out_dir", help="folder to write (model.safetensors, config.json, README.md)")
    card_options(p)
    p.add_argument("--device", default=None)
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even where EMA weights exist")
    p.add_argument("--no-baseline", action="store_true", help="leave the random-forest baseline out of the card")
    p.add_argument("--command", default=None, help="the command that reproduces the run (default: recorded by recipe)")
    p.add_argument("--trained-on", default=None, metavar="DEVICE",
                   help="device / card of the training, e.g. '2 x NVIDIA H100' (default: recorded by recipe)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("recipe", help="train from a config, evaluate per pixel, compute the random-forest baseline "
                                      "and write a publishable model card (one command per scene)")
    p.add_argument("config", help="e.g. configs/houston2013/m3amba_base.yaml")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, run_info.json)")
    p.add_argument("--card-dir", default=None, help="the publishable folder (default: <out>/export)")
    card_options(p)
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--seed", type=int, default=None, help="override train.seed")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's, auto)")
    p.add_argument("--resume", action="store_true", help="continue the run folder's newest checkpoint")
    p.set_defaults(func=_cmd_recipe)
    return parser


def _add_value_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nonfinite", choices=("raise", "fail", "fill", "mask"), default=None,
                   help="NaN/Inf/nodata values in the scene: refuse (default), fill with the band mean, or "
                        "fill and mask out of training/evaluation (data.nonfinite)")
    p.add_argument("--nodata", type=_nodata, default=None, metavar="VALUE[,VALUE2]",
                   help="a value meaning 'no data' (both modalities, or one per modality); treated like NaN")


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``m3amba`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
