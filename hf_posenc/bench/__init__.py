"""The benchmark harness: every encoding against the unpatched model, timed and measured (`hf-posenc bench`).

`grid` says what a run measures (shapes, lengths, batches, presets); `harness` builds the models, times interleaved
paired steps and measures peak memory in fresh processes; `report` checks the targets and renders Markdown; `cli` is
`hf-posenc bench` and `benchmarks/run.py`. Versions and the git revision come from `hf_posenc.hub.provenance`.
Nothing in the core or `hub` imports this package, and it imports nothing from the recipes.
"""

from .cli import add_arguments, grid_from_args, main
from .grid import BART_ENCODINGS, BERT_ENCODINGS, PRESETS, SHAPES, Case, Grid, Shape
from .harness import build_model, machine_info, make_inputs, make_step, memory_child, run_grid, sdpa_kernels, time_case
from .report import BASELINE, check_targets, config_key, render_markdown

__all__ = [
    "BART_ENCODINGS",
    "BASELINE",
    "BERT_ENCODINGS",
    "SHAPES",
    "Case",
    "Grid",
    "PRESETS",
    "Shape",
    "add_arguments",
    "build_model",
    "check_targets",
    "config_key",
    "grid_from_args",
    "machine_info",
    "main",
    "make_inputs",
    "make_step",
    "memory_child",
    "render_markdown",
    "run_grid",
    "sdpa_kernels",
    "time_case",
]
