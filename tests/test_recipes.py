"""The recipes of docs/recipes.md: one config per scene x variant, and the documented pipeline end to end.

For each benchmark scene the test writes tiny synthetic files in that scene's file layout (the names
and variable keys its reader looks for first), takes the scene's ``m3amba_base`` config, shrinks the
model and the schedule, and runs the command docs/recipes.md documents (train → per-pixel evaluation →
random-forest baseline → model card), then checks the card. No real benchmark data is needed.
"""
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

import m3amba  # noqa: E402
from m3amba._model_card import PROVENANCE_KEYS, model_card, read_provenance, write_model_card  # noqa: E402
from m3amba.cli import build_parser, main  # noqa: E402
from m3amba.data import BENCHMARKS  # noqa: E402
from m3amba.export import PAPER_RESULTS  # noqa: E402
from m3amba.models import get_model_config  # noqa: E402
from m3amba.train import load_config, load_trained  # noqa: E402
from conftest import TINY_CLIP  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RECIPES = ROOT / "docs" / "recipes.md"
EOLEARN = ROOT.parent / "shared" / "data" / "eolearn_slovenia"
SCENES = ("houston2013", "muufl", "trento", "augsburg")
VARIANTS = tuple(m3amba.list_models())
TINY = {"embed_dim": 16, "depth": 1, "d_state": 4, "ssm_ratio": 1.0, "img_size": 8, "drop_path_rate": 0.0}
FAST = {"train": {"epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "window": 8, "warmup_epochs": 0},
        "eval": {"window": 8, "stride": 4, "batch_size": 64}}


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# -- the configs -----------------------------------------------------------------------------------
def test_one_config_per_scene_and_variant_with_the_variants_own_architecture():
    assert set(VARIANTS) == {"m3amba_base", "m3amba_base_noclip", "m3amba_small", "m3amba_small_noclip",
                             "m3amba_tiny", "m3amba_tiny_noclip"}
    for scene in SCENES:
        files = sorted(p.stem for p in (CONFIGS / scene).glob("*.yaml"))
        assert files == sorted(VARIANTS), scene
        sections = []
        for variant in VARIANTS:
            raw = _yaml(CONFIGS / scene / f"{variant}.yaml")
            assert raw["model"] == {"name": variant, "args": {}}, "recipes use the variant at its own size"
            assert raw["data"]["name"] == scene and BENCHMARKS[scene].name == scene
            cfg = load_config(CONFIGS / scene / f"{variant}.yaml")
            img = get_model_config(variant)["model_args"]["img_size"]
            assert cfg["train"]["window"] == cfg["eval"]["window"] == img == 32
            assert cfg["data"].get("check_sizes", True), "the real files' sizes are checked"
            sections.append({k: v for k, v in raw.items() if k != "model"})
        assert all(s == sections[0] for s in sections), f"{scene}: configs differ in more than the model"


def test_eolearn_configs_train_the_full_variants_on_the_demo_split():
    demo = load_config(CONFIGS / "eolearn_tiny.yaml")
    for variant in ("m3amba_tiny_noclip", "m3amba_small_noclip"):
        raw = _yaml(CONFIGS / "eolearn_slovenia" / f"{variant}.yaml")
        assert raw["model"] == {"name": variant, "args": {}}
        cfg = load_config(CONFIGS / "eolearn_slovenia" / f"{variant}.yaml")
        assert cfg["data"]["split"] == demo["data"]["split"] and cfg["data"]["date"] == "stack"
        assert cfg["data"]["normalization"] == demo["data"]["normalization"]
        assert get_model_config(variant)["model_args"]["clip_model"] is None
        tc = cfg["train"]
        steps = tc["epochs"] * -(-tc["samples_per_epoch"] // tc["batch_size"])
        assert 500 <= steps <= 5000 and tc["warmup_epochs"] < tc["epochs"] and tc["window"] == 32


def _documented(scene: str) -> str:
    lines = re.findall(rf"^m3amba recipe configs/{scene}/m3amba_base\.yaml .*$", RECIPES.read_text(), re.M)
    assert len(lines) == 1, f"docs/recipes.md must hold one recipe command for {scene}"
    return lines[0]


def test_every_documented_command_parses():
    commands = [l for l in re.findall(r"^m3amba .*$", RECIPES.read_text(), re.M)]
    assert len(commands) >= 10
    parser = build_parser()
    for line in commands:
        args = parser.parse_args(shlex.split(line.split("  #")[0])[1:])
        if args.command == "recipe":
            assert Path(ROOT / args.config).is_file(), line
            assert Path(args.config).stem in args.out and args.tag


# -- synthetic files in each scene's layout ----------------------------------------------------------
def write_layout(folder: Path, scene: str, h: int = 9, seed: int = 0) -> dict:
    """Tiny files with the names and variable keys ``load_benchmark(scene)`` looks for first.

    Vertical stripes of two columns per class; rows 0-1 train, row 2 unlabelled, rows 3.. test.
    Modality 1 carries the class in its first band, so both the model and the forest can learn.
    """
    from scipy.io import savemat
    spec = BENCHMARKS[scene]
    k = len(spec.class_names)
    c1, c2 = spec.bands
    rng = np.random.default_rng(seed)
    w = 2 * k
    labels = (np.arange(w) // 2 + 1)[None, :].repeat(h, 0)
    train = np.where(np.arange(h)[:, None] < 2, labels, 0)
    test = np.where(np.arange(h)[:, None] >= 3, labels, 0)
    m1 = rng.normal(size=(h, w, c1)).astype(np.float32)
    m1[..., 0] += 3 * labels
    m2 = rng.normal(size=(h, w, c2)).astype(np.float32)
    arrays = {"m1": m1, "m2": m2[..., 0] if c2 == 1 else m2, "train": train.astype(np.int16),
              "test": test.astype(np.int16)}
    if scene == "muufl":  # the original ground truth marks unlabelled pixels -1
        arrays["test"] = np.where(test > 0, test, -1).astype(np.int16)
    folder.mkdir(parents=True)
    files: dict = {}
    for role, fs in spec.files.items():
        files.setdefault(fs.names[0], {})[fs.keys[0]] = arrays[role]
    for name, content in files.items():
        savemat(folder / name, content)
    return {"train": train, "test": test, "files": sorted(files)}


def _shrunk(config: Path, tmp_path: Path, model_args: dict, stride: int = 4) -> Path:
    cfg = _yaml(config)
    cfg["model"]["args"] = dict(model_args)
    cfg["data"]["check_sizes"] = False
    for section, values in FAST.items():
        cfg[section].update(values)
    cfg["eval"]["stride"] = stride
    out = tmp_path / f"{config.parent.name}_{config.stem}.json"
    out.write_text(json.dumps(cfg))
    return out


def _check_card(export: Path, scene: str, n_test: int, class_names) -> dict:
    files = sorted(p.name for p in export.iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((export / "config.json").read_text())
    prov = config["provenance"]
    assert set(prov) <= set(PROVENANCE_KEYS)
    for key in ("data", "split", "protocol", "normalization", "hyperparameters", "seed", "training", "results",
                "baseline", "reproduce"):
        assert key in prov, key
    assert prov["results"]["count"] == prov["results"]["expected_count"] == n_test
    assert prov["baseline"]["count"] == n_test and prov["baseline"]["method"] == "random_forest"
    assert prov["split"]["test"] == n_test and prov["data"]["name"] == scene
    assert prov["normalization"] == {"method": "minmax", "source": "scene"}
    assert prov["training"]["epochs"] == 1 and prov["training"]["time_s"] >= 0
    assert prov["training"].get("device", "cpu") == "cpu"
    assert prov["reproduce"]["tolerance"]["retrain_pp"] > 0 and prov["reproduce"]["command"].startswith("m3amba recipe")
    meta = config["pretrained_cfg"]
    assert meta["dataset"] == scene and meta["class_names"] == list(class_names)
    assert meta["metrics"]["OA"] == round(100 * prov["results"]["oa"], 2)
    assert len(meta["mean"][0]) == BENCHMARKS[scene].bands[0] if scene in BENCHMARKS else True
    card = (export / "README.md").read_text()
    yaml.safe_load(card.split("---\n")[1])  # valid front matter
    for text in ("## Training data and split", "## Protocol", "## Training", "## Results", "## Reproduce",
                 "per-pixel random forest", "Tolerance", "predicted exactly once", prov["reproduce"]["command"]):
        assert text in card, text
    for name in class_names:
        assert f"| {name} |" in card
    if scene in PAPER_RESULTS:
        assert f"| {PAPER_RESULTS[scene]['OA']} |" in card and "not per-pixel" in card
    return config


@pytest.mark.parametrize("scene", SCENES)
def test_documented_recipe_runs_end_to_end_on_synthetic_files(scene, tmp_path, capsys):
    documented = build_parser().parse_args(shlex.split(_documented(scene))[1:])
    data = tmp_path / "data" / scene
    written = write_layout(data, scene)
    args = dict(TINY, clip_model=dict(TINY_CLIP), clip_pretrained=None)  # the CLIP path, with a tiny random tower
    cfg = _shrunk(ROOT / documented.config, tmp_path, args)
    run = tmp_path / documented.out
    argv = ["recipe", str(cfg), "--data-dir", str(data), "--out", str(run), "--tag", documented.tag,
            "--n-estimators", "10", "--quiet"]
    # a random CLIP tower is refused before any training
    assert main(argv) == 2
    assert "randomly initialised CLIP tower" in capsys.readouterr().err and not run.exists()
    assert main(argv + ["--allow-random-clip"]) == 0
    out = capsys.readouterr().out
    n_test = int((written["test"] > 0).sum())
    assert f"on {n_test} test pixels" in out and "random forest (10 trees)" in out
    class_names = BENCHMARKS[scene].class_names
    config = _check_card(run / "export", scene, n_test, class_names)
    prov = config["provenance"]
    trained = json.loads((run / "metrics_test.json").read_text())
    assert trained["confusion_matrix"] == prov["results"]["confusion_matrix"]  # same weights, same protocol
    info = json.loads((run / "run_info.json").read_text())
    assert info["command"] == prov["reproduce"]["command"] and "--allow-random-clip" in info["command"]
    assert "randomly initialised CLIP tower" in (run / "export" / "README.md").read_text()
    loaded = m3amba.load_pretrained_dir(run / "export")
    assert loaded.pretrained_cfg["tag"] == documented.tag and loaded.num_classes == len(class_names)


@pytest.mark.filterwarnings("ignore:classes without training pixels")
def test_step_by_step_train_evaluate_baseline_export(tmp_path, capsys):
    data = tmp_path / "trento"
    written = write_layout(data, "trento", h=8)
    cfg = _shrunk(CONFIGS / "trento" / "m3amba_tiny_noclip.yaml", tmp_path, TINY)
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--data-dir", str(data), "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--data-dir", str(data), "--out", str(tmp_path / "m.json")]) == 0
    assert main(["baseline", str(cfg), "--data-dir", str(data), "--out", str(tmp_path / "rf.json"),
                 "--n-estimators", "10"]) == 0
    export = tmp_path / "export"
    assert main(["export", str(run), str(export), "--tag", "trento", "--n-estimators", "10", "--quiet",
                 "--tolerance", "1.5", "--license", "apache-2.0"]) == 2  # the data folder is needed
    assert "files missing in data/trento" in capsys.readouterr().err
    assert main(["export", str(run), str(export), "--tag", "trento", "--data-dir", str(data), "--n-estimators", "10",
                 "--tolerance", "1.5", "--license", "apache-2.0", "--trained-on", "2 x test CPU", "--quiet"]) == 0
    n_test = int((written["test"] > 0).sum())
    config = _check_card(export, "trento", n_test, BENCHMARKS["trento"].class_names)
    prov = read_provenance(export)
    assert prov == config["provenance"]
    evaluated = json.loads((tmp_path / "m.json").read_text())
    rf = json.loads((tmp_path / "rf.json").read_text())
    assert evaluated["confusion_matrix"] == prov["results"]["confusion_matrix"]
    assert rf["confusion_matrix"] == prov["baseline"]["confusion_matrix"]  # the same split and seed
    assert prov["reproduce"]["tolerance"]["retrain_pp"] == 1.5 and config["pretrained_cfg"]["license"] == "apache-2.0"
    assert "device" not in prov["training"], "plain m3amba train records no device"
    assert prov["training"]["device_name"] == "2 x test CPU" and "2 x test CPU" in (export / "README.md").read_text()
    # the exported weights are the checkpoint's
    tm = load_trained(run)
    loaded = m3amba.load_pretrained_dir(export)
    x1, x2 = torch.randn(2, 63, 8, 8), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(tm.model.eval()(x1, x2), loaded.eval()(x1, x2))


def test_model_card_without_provenance_is_unchanged_and_write_model_card(tmp_path):
    cfg = {"tag": "t", "metrics": {"OA": 90.0, "AA": 80.0, "kappa": 70.0}, "metrics_protocol": "p"}
    args = {"in_chans": [3, 1], "num_classes": 2, "clip_model": None}
    assert model_card("m3amba_tiny_noclip", cfg, args) == model_card("m3amba_tiny_noclip", cfg, args, provenance=None)
    assert "| Overall accuracy (OA, %) | 90.0 |" in model_card("m3amba_tiny_noclip", cfg, args)
    model = m3amba.create_model("m3amba_tiny_noclip", in_chans=(3, 1), num_classes=2, **TINY)
    out = m3amba.save_pretrained(model, tmp_path / "f", pretrained_cfg_overlay=cfg)
    with pytest.raises(ValueError, match="unknown provenance section"):
        write_model_card(out, {"nonsense": 1})
    results = {"oa": 0.9, "aa": 0.8, "kappa": 0.7, "count": 10, "expected_count": 10, "class_names": ["a", "b"],
               "per_class": {"a": 1.0, "b": None}, "support": {"a": 10, "b": 0}, "confusion_matrix": [[9, 1], [0, 0]]}
    write_model_card(out, {"results": results, "seed": np.int64(3), "reproduce": {"command": "m3amba recipe x"},
                           "baseline": {**results, "oa": np.float32(0.5), "params": {"n_estimators": 5}}})
    card = (out / "README.md").read_text()
    assert "| this model | 90.00 | 80.00 | 70.00 |" in card and "| a | 10 | 100.00 | 100.00 |" in card
    assert "| b | 0 | — | — |" in card and "m3amba recipe x" in card and "random forest (5 trees" in card
    assert read_provenance(out)["seed"] == 3 and read_provenance(out)["baseline"]["oa"] == 0.5
    loaded = m3amba.load_pretrained_dir(out)  # the record does not disturb loading
    assert loaded.pretrained_cfg["metrics"]["OA"] == 90.0


@pytest.mark.skipif(not (EOLEARN / "s2_l1c.npy").is_file(), reason=f"eolearn_slovenia data not found at {EOLEARN}")
def test_eolearn_recipe_on_the_real_scene(tmp_path, capsys):
    cfg = _shrunk(CONFIGS / "eolearn_slovenia" / "m3amba_tiny_noclip.yaml", tmp_path, TINY, stride=8)
    run = tmp_path / "run"
    assert main(["recipe", str(cfg), "--data-dir", str(EOLEARN), "--out", str(run), "--tag", "eolearn_lulc",
                 "--n-estimators", "20", "--license", "apache-2.0", "--quiet"]) == 0
    config = _check_card(run / "export", "eolearn_slovenia", 9740,
                         ["cultivated land", "forest", "grassland", "shrubland", "artificial surface"])
    prov = config["provenance"]
    assert prov["split"]["train"] == 205 and prov["data"]["license"] == "MIT" and prov["data"]["bands"] == [65, 1]
    assert prov["baseline"]["oa"] > 0.75  # the forest on this split: about 84% OA
    assert config["pretrained_cfg"]["band_names"][1] == ["DEM"] and "paper" not in prov
