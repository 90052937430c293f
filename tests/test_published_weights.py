"""The weights that ship in weights/: registered, intact, and reproducing their model cards offline."""
import hashlib
import json
from pathlib import Path

import pytest

import m3amba
from m3amba._hub import bundled_weights_dir

ROOT = Path(__file__).resolve().parents[1]
EOLEARN = ROOT.parent / "shared" / "data" / "eolearn_slovenia"
TAGS = ["m3amba_tiny_noclip.eolearn_lulc", "m3amba_small_noclip.eolearn_lulc"]


def _folder(tag):
    return Path(bundled_weights_dir()) / tag


@pytest.mark.parametrize("tag", TAGS)
def test_published_tag_is_registered_and_intact(tag):
    assert tag in m3amba.list_pretrained()
    cfg = m3amba.get_pretrained_cfg(tag).to_dict()
    data = (_folder(tag) / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == cfg["sha256"]
    card = (_folder(tag) / "README.md").read_text()
    for needle in ("random forest", "Reproduce", "9,740", "H100"):
        assert needle in card, needle


def test_clip_variants_have_no_weights():
    # no pretrained CLIP tower was available to train them: pretrained=True must say so, not fall back
    with pytest.raises(Exception, match="no published weights"):
        m3amba.create_model("m3amba_tiny", pretrained=True)


@pytest.mark.skipif(not EOLEARN.is_dir(), reason="the shared eo-learn scene is not beside the project")
def test_tiny_tag_reproduces_its_card_with_m3amba_evaluate(tmp_path):
    from m3amba.cli import main
    tag = TAGS[0]
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", "--pretrained", tag, "--config", str(ROOT / "configs" / "eolearn_slovenia" / "m3amba_tiny_noclip.yaml"),
               "--data-dir", str(EOLEARN), "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())
    card = m3amba.get_pretrained_cfg(tag).to_dict()["metrics"]
    assert got["count"] == got["expected_count"] == 9740
    # the card's tolerance for evaluating the published weights: 0.1 points
    assert abs(100 * got["oa"] - card["OA"]) <= 0.1
    assert abs(100 * got["aa"] - card["AA"]) <= 0.1
    assert abs(100 * got["kappa"] - card["kappa"]) <= 0.1


def test_pretrained_evaluate_needs_the_recipe_config():
    from m3amba.cli import main
    with pytest.raises(SystemExit, match="--config"):
        main(["evaluate", "--pretrained", TAGS[0], "--device", "cpu"])
