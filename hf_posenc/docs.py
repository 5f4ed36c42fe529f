"""The README's generated tables (`tools/sync_readme.py` writes them, a test keeps them in sync)."""

from __future__ import annotations

from .architectures import ARCHITECTURES, ArchitectureSpec
from .encodings import ENCODINGS


def support_table() -> str:
    """The Markdown table of encodings x architectures that the README shows."""
    types = sorted(ARCHITECTURES)
    header = ["encoding", "kind", "learned parameters", "any length", *types]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, cls in ENCODINGS.items():
        cells = [_support_cell(cls, ARCHITECTURES[t]) for t in types]
        learned = "yes" if cls.learned else "no"
        unbounded = "no (extend it)" if cls.max_length_bound else "yes"
        lines.append("| " + " | ".join([f"`{name}`", cls.kind, learned, unbounded, *cells]) + " |")
    return "\n".join(lines)


def _support_cell(cls: type, arch: ArchitectureSpec) -> str:
    if cls.kind != "none":
        return "✓"
    return "decoder" if any(s.name == "decoder" for s in arch.stacks) else "—"


def step0_table() -> str:
    """What each encoding does to a pretrained model before any training, and its source."""
    lines = ["| encoding | at step 0 on a pretrained model | source |", "|---|---|---|"]
    lines += [f"| `{name}` | {cls.step0} | {cls.citation} |" for name, cls in ENCODINGS.items()]
    return "\n".join(lines)
