"""The README cannot rot: its generated tables match the registries, its quick start runs, its commands are CI's."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
sys.path.insert(0, str(ROOT / "tools"))

from sync_readme import SECTIONS, generated_section  # noqa: E402


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_generated_tables_match_the_registries(name):
    assert generated_section(README, name) == SECTIONS[name](), "run `python tools/sync_readme.py`"


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = re.findall(r"```bash\n(.*?)\n```", section("Set-up"), flags=re.S)
    assert len(commands) == 2
    main_job, tests = commands
    assert "study.py" in main_job and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_quick_start_runs(capsys):
    code = re.findall(r"```python\n(.*?)\n```", section("Quick start"), flags=re.S)
    assert code
    for block in code:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "torch.Size([1, 2])" in printed and "'rope'" in printed


@pytest.mark.slow
def test_every_python_example_runs(tmp_path, monkeypatch, capsys):
    """All other examples too, in order, in a scratch folder (they save checkpoints)."""
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)\n```", README[README.index("## Quick start") :], flags=re.S)
    assert len(blocks) >= 3
    namespace = {"__name__": "readme"}  # later examples continue earlier ones, as a reader would
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "torch.Size([1, 1602, 384])" in printed and "True" in printed and "2048 2048" in printed
    assert "config.json" in printed  # the push dry run lists the files it would upload
