"""Deprecated alias of `hf_posenc.recipes` (moved there); it will be removed in the next release."""

import importlib
import warnings

warnings.warn(
    "hf_posenc.reporting moved to hf_posenc.recipes; the old path goes in the next release.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(importlib.import_module("hf_posenc.recipes"), name)
