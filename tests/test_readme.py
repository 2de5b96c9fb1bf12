"""Every ```python block of README.md runs as written (in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


# The examples that train a GAN (a Trainer, or the paper's schedule of 100 critic updates) take seconds.
TRAINS = [i for i, block in enumerate(BLOCKS) if "Trainer(" in block or ".paper(" in block]


@pytest.mark.parametrize("index", [pytest.param(i, marks=[pytest.mark.slow] if i in TRAINS else [])
                                   for i in range(len(BLOCKS))])
def test_readme_example_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # examples write runs/... relative to the working directory
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), namespace)
    if "print(" in BLOCKS[index]:
        out = capsys.readouterr().out
        assert out.strip()
        for promised in re.findall(r"# prints (.+)$", BLOCKS[index], flags=re.M):  # it prints what it says
            assert promised.strip() in out.splitlines(), (promised, out)
