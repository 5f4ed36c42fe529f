"""hf_posenc: swap, extend and publish the position encoding of pretrained BERT- and BART-family models.

Importing the package registers the `posenc` attention backend with transformers.
"""

from .architectures import ARCHITECTURES
from .attention import BACKEND, register_backend
from .encodings import ALIASES, ENCODINGS, PositionEncoding, register_encoding
from .extension import extend_positions, make_portable, set_max_length
from .hub import from_pretrained, push_to_hub, read_results, render_model_card, save_for_hub, update_max_seq_length
from .patching import patch_model, patch_spec, plan_patch, unpatch_model
from .trainable import position_parameters
from .version import __version__

register_backend()

_RECIPE_NAMES = ("RunConfig", "adapt", "run_classification")


def __getattr__(name: str):
    """`hf_posenc.RunConfig`, `hf_posenc.adapt` and `hf_posenc.run_classification` live in the recipes layer (the
    `[recipes]` extra): imported on first use, so `import hf_posenc` needs only the core dependencies."""
    if name in _RECIPE_NAMES:
        import importlib

        return getattr(importlib.import_module("hf_posenc.recipes"), name)
    raise AttributeError(f"module 'hf_posenc' has no attribute {name!r}")


__all__ = [
    "__version__",
    "ALIASES",
    "ARCHITECTURES",
    "BACKEND",
    "ENCODINGS",
    "PositionEncoding",
    "RunConfig",
    "adapt",
    "extend_positions",
    "from_pretrained",
    "make_portable",
    "patch_model",
    "patch_spec",
    "plan_patch",
    "position_parameters",
    "push_to_hub",
    "read_results",
    "register_encoding",
    "render_model_card",
    "run_classification",
    "save_for_hub",
    "set_max_length",
    "unpatch_model",
    "update_max_seq_length",
]
