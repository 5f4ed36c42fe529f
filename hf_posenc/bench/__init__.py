"""The benchmark harness: every encoding against the unpatched model, timed and measured (`hf-posenc bench`).

`harness` builds the models, times interleaved paired steps and measures peak memory in fresh processes; `report`
checks the targets and renders Markdown. Nothing in the core or `hub` imports this package.
"""

from .harness import (
    BART_ENCODINGS,
    BERT_ENCODINGS,
    SHAPES,
    Case,
    Grid,
    Shape,
    add_arguments,
    build_model,
    grid_from_args,
    machine_info,
    main,
    make_inputs,
    make_step,
    memory_child,
    run_grid,
    sdpa_kernels,
    time_case,
)
from .report import BASELINE, check_targets, config_key, render_markdown

__all__ = [
    "BART_ENCODINGS",
    "BASELINE",
    "BERT_ENCODINGS",
    "SHAPES",
    "Case",
    "Grid",
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
