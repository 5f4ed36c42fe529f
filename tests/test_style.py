"""House style is checked with the tests: ruff at 119 columns (pyproject.toml), lint and format; comments and
docstrings give the reason itself, never an issue number or a file outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(command):
    done = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


CHECKED = ["hf_posenc", "tests", "recipes", "tools", "benchmarks", "README.md"]
"""Code, comments, docstrings and documentation; committed result data (benchmarks/results, *.json) is excluded."""

REFERENCE = re.compile(r"\bissues?\s*#?\d+|\bissue\s*#|(?<![\w/])#\d+\b|DESIGN\.md|OFFLINE_ASSETS", re.IGNORECASE)
"""An issue number ("issue 6", "issue #3", "#12") or a planning file that is not in the repository."""


def checked_files() -> list[Path]:
    found = []
    for name in CHECKED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for file in candidates:
            parts = file.relative_to(ROOT).parts
            if file.suffix in (".py", ".md", ".sh", ".toml", ".txt") and "results" not in parts and file != THIS:
                found.append(file)
    return found


THIS = Path(__file__).resolve()


def references(text: str) -> list[str]:
    """The lines of `text` that cite an issue number or an outside file."""
    return [line.strip() for line in text.splitlines() if REFERENCE.search(line)]


def test_the_reference_pattern_catches_what_it_should():
    assert references("# see issue 6 for why") and references("Why (Issue #3): ...") and references("fixes #12")
    assert references('"""As DESIGN.md says."""') and references("(see OFFLINE_ASSETS.md)")
    assert not references("color = '#ff0000'  # 6 heads, 12 layers") and not references("x[#]")


def test_no_comment_or_docstring_cites_an_issue_or_an_outside_file():
    files = checked_files()
    assert len(files) > 50
    found = {str(f.relative_to(ROOT)): hits for f in files if (hits := references(f.read_text(encoding="utf-8")))}
    assert not found, found
