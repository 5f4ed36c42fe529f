"""Recipes (the `[recipes]` extra): datasets, the Accelerate training loop, classification / MLM / seq2seq runs,
results (tables, plots) and sweeps. Built on the core and `hf_posenc.hub`; nothing below imports this package.
"""

from .training import RunConfig, run_classification

__all__ = ["RunConfig", "run_classification"]
