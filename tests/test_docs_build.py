"""The documentation site builds without a warning, and the tutorials' code runs.

* ``mkdocs build --strict`` (warnings are errors: broken links and anchors, pages missing from the
  nav, API-reference entries that do not resolve) into a temporary folder; skipped when MkDocs or
  mkdocstrings is not installed (``pip install ".[docs]"``, included in ``.[test]``).
* every ```python block of ``docs/tutorials/*.md`` runs, in order, the blocks of one page sharing
  one namespace (later blocks use what earlier ones built). A block whose first line is
  ``# doctest: skip`` is not run (GPU, torchrun, network or files the test machine does not have),
  the same rule as ``tests/test_docs_snippets.py`` applies to README.md and docs/*.md.
"""
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks(path):
    return [code for code in BLOCK.findall(path.read_text()) if not code.lstrip().startswith("# doctest: skip")]


def test_mkdocs_build_strict(tmp_path):
    missing = []
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package is missing
            found = False
        if not found:
            missing.append(module)
    if missing:
        pytest.skip(f"the docs build needs {', '.join(missing)}: pip install '.[docs]' (or '.[test]')")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "quickstart/index.html", "api/index.html", *(
            f"tutorials/{p.stem}/index.html" for p in TUTORIALS)):
        assert (site / page).is_file(), f"{page} was not built"
    api = (site / "api" / "index.html").read_text()
    for name in ("m3amba.create_model", "m3amba.list_models", "m3amba.M3amba",
                 "m3amba.ops.selective_scan.selective_scan_fn", "m3amba.data.Scene", "m3amba.train.train"):
        assert f'id="{name}"' in api, f"the API reference has no entry for {name}"


def test_tutorials_exist_and_have_code():
    names = {p.name for p in TUTORIALS}
    assert {"finetune_own_scene.md", "features.md", "multi_gpu.md", "offline.md"} <= names
    for path in TUTORIALS:
        assert BLOCK.findall(path.read_text()), f"{path.name} has no python block"


@pytest.mark.parametrize("path", [p for p in TUTORIALS if _blocks(p)], ids=lambda p: f"docs/tutorials/{p.name}")
def test_tutorial_runs(path, tmp_path, monkeypatch):
    from m3amba.data import DataNotFoundError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # the tutorials' mkdtemp() folders land here
    monkeypatch.chdir(ROOT)
    env = dict(os.environ)
    logger, root = logging.getLogger("m3amba"), logging.getLogger()
    saved = logger.level, root.level, list(root.handlers)
    namespace = {"__name__": "__tutorial__"}
    try:
        for i, code in enumerate(_blocks(path)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    exec(compile(code, f"<{path.name} block {i}>", "exec"), namespace)
                except DataNotFoundError as exc:
                    pytest.skip(f"{path.name} needs the eo-learn demo scene: {exc}")
    finally:
        os.environ.clear()
        os.environ.update(env)
        logger.setLevel(saved[0])
        root.setLevel(saved[1])
        root.handlers[:] = saved[2]
