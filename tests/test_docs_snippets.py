"""Every ```python block of README.md and docs/*.md runs, so the documentation cannot rot.

A block whose first line is ``# doctest: skip`` is not run (for snippets that need a GPU,
network or data the test machine does not have).
"""
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _snippets():
    for path in DOCS:
        for i, code in enumerate(BLOCK.findall(path.read_text())):
            if not code.lstrip().startswith("# doctest: skip"):
                yield pytest.param(code, id=f"{path.relative_to(ROOT)}#{i}")


@pytest.mark.parametrize("code", list(_snippets()))
def test_snippet_runs(code):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the random-CLIP warning the quickstart triggers on purpose
        exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})
