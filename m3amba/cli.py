"""The ``m3amba`` command line: ``list``, ``info``, ``check`` and ``convert``."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import List, Optional, Sequence

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
    return parser


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``m3amba`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
