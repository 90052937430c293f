"""The ``m3amba`` command line."""
import json
import subprocess
import sys

from m3amba.cli import main


def test_list(capsys):
    assert main(["list", "m3amba_t*"]) == 0
    assert capsys.readouterr().out.split() == ["m3amba_tiny", "m3amba_tiny_noclip"]


def test_info(capsys):
    assert main(["info", "m3amba_base"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_args"]["embed_dim"] == 384 and info["pretrained_tags"] == []


def test_check_runs_a_forward_and_reports(capsys):
    assert main(["check", "m3amba_tiny_noclip", "--in-chans", "13,1", "--num-classes", "6", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "scan backend: torch" in out
    line = next(l for l in out.splitlines() if l.startswith("m3amba_tiny_noclip"))
    assert "(1, 6, 32, 32)" in line


def test_module_entry_point_and_bad_arguments():
    run = subprocess.run([sys.executable, "-m", "m3amba", "check", "--in-chans", "13"], capture_output=True, text=True)
    assert run.returncode == 2 and "two band counts" in run.stderr


def test_bench_times_inference_and_a_training_step(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "m3amba_tiny_noclip", "--batch-size", "1", "--repeats", "1", "--in-chans", "3,1",
                 "--num-classes", "4", "--device", "cpu", "--json", str(out)]) == 0
    assert "patches/s" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["mode"] == "inference" and r["ms"] > 0 and r["patches_per_s"] > 0
    assert main(["bench", "m3amba_tiny_noclip", "--batch-size", "1", "--repeats", "1", "--train", "--device", "cpu"]) == 0
    assert "train on cpu" in capsys.readouterr().out
