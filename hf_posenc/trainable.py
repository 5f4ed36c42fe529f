"""Position parameters and training: which parameters a patch's encodings learn, a warning when they stay frozen
while the rest of the model trains (a peft LoRA config freezes every parameter it does not target), and the
tokenizer limit a patch changed, remembered so that `unpatch_model` can give it back.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

from torch import nn

from .attention import attached


class FrozenPositionsWarning(UserWarning):
    """Freshly initialized position parameters are frozen while the rest of the model trains."""


def is_position_parameter(name: str) -> bool:
    """Whether a parameter name belongs to a position encoding installed by a patch (a `posenc` submodule)."""
    return ".posenc." in f".{name}"


def warn_if_frozen(stack_module: nn.Module) -> bool:
    """Warn (and return True) when the position parameters that the stack's attention uses are all frozen while some
    other parameter trains: the new position terms would stay at their initialization (e.g. zeros) through training.

    The parameters are those of the encodings attached to the attention modules, the ones the backend runs: a copy
    that peft's `modules_to_save` makes trainable is not attached, so it does not count.
    """
    encodings = [entry[0] for entry in map(attached, stack_module.modules()) if entry and entry[0] is not None]
    used = {id(p) for encoding in encodings for p in encoding.parameters()}
    names, training = [], False
    for name, parameter in stack_module.named_parameters(remove_duplicate=False):
        if id(parameter) in used:
            if parameter.requires_grad:
                return False
            names.append(name)
        else:
            training = training or parameter.requires_grad
    if not (names and training):
        return False
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    warnings.warn(
        f"hf_posenc: the freshly initialized position parameters ({shown}) are frozen while other parameters train, "
        "so the new position encoding never learns. A peft LoRA config freezes every parameter it does not target, "
        "and the copies that its modules_to_save trains are not the ones the attention backend runs. Make them "
        "trainable after get_peft_model: `for p in hf_posenc.position_parameters(model).values(): "
        "p.requires_grad_(True)` (save with `model.merge_and_unload().save_pretrained(...)`, which keeps them).",
        FrozenPositionsWarning,
        stacklevel=2,
    )
    return True


def position_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The learned position-encoding parameters a patch installed on `model` (name -> parameter), e.g. to make them
    trainable under a peft LoRA config, which freezes every parameter it does not target (peft's `modules_to_save`
    does not help: its trainable copies are not the modules the attention backend runs)."""
    return {name: p for name, p in model.named_parameters() if is_position_parameter(name)}


TOKENIZER_ATTRIBUTE = "_posenc_tokenizer_limit"
_UNSET = object()


@dataclass
class TokenizerLimit:
    """A tokenizer's `model_max_length` before a patch changed it, held weakly (the patch does not keep it alive)."""

    tokenizer: weakref.ref
    model_max_length: Any
    init_kwarg: Any = _UNSET


def remember_tokenizer_limit(model: nn.Module, tokenizer: Any) -> None:
    """Remember `tokenizer`'s limit before a patch sets it; a second patch with the same tokenizer keeps the first."""
    held = model.__dict__.get(TOKENIZER_ATTRIBUTE)
    if tokenizer is None or (held is not None and held.tokenizer() is tokenizer):
        return
    kwargs = getattr(tokenizer, "init_kwargs", {})
    model.__dict__[TOKENIZER_ATTRIBUTE] = TokenizerLimit(
        weakref.ref(tokenizer), tokenizer.model_max_length, kwargs.get("model_max_length", _UNSET)
    )


def restore_tokenizer_limit(model: nn.Module) -> None:
    """Give the remembered tokenizer (if it is still alive) back its limit from before the patch."""
    held = model.__dict__.pop(TOKENIZER_ATTRIBUTE, None)
    tokenizer = held.tokenizer() if held is not None else None
    if tokenizer is None:
        return
    tokenizer.model_max_length = held.model_max_length
    if held.init_kwarg is _UNSET:
        tokenizer.init_kwargs.pop("model_max_length", None)
    else:
        tokenizer.init_kwargs["model_max_length"] = held.init_kwarg


__all__ = [
    "FrozenPositionsWarning",
    "TokenizerLimit",
    "is_position_parameter",
    "position_parameters",
    "remember_tokenizer_limit",
    "restore_tokenizer_limit",
    "warn_if_frozen",
]
