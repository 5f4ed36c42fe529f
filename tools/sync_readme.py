"""Rewrite the generated sections of README.md from the registries: `python tools/sync_readme.py`."""

from __future__ import annotations

import re
from pathlib import Path

from hf_posenc.docs import step0_table, support_table

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = {"support-table": support_table, "step0-table": step0_table}


def generated_section(text: str, name: str) -> str:
    """The text between `<!-- name:start -->` and `<!-- name:end -->`, stripped."""
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, flags=re.S)
    if match is None:
        raise ValueError(f"README.md has no <!-- {name}:start --> ... <!-- {name}:end --> markers.")
    return match.group(1).strip()


def sync(text: str) -> str:
    for name, render in SECTIONS.items():
        text = re.sub(
            rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)",
            lambda m, render=render: m.group(1) + render() + "\n" + m.group(2),
            text,
            flags=re.S,
        )
    return text


if __name__ == "__main__":
    README.write_text(sync(README.read_text()))
