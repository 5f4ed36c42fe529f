"""What a patch installs on a model, and how it is found and removed.

A patch installs, per stack: a `PositionTable` where the learned table stood (unless the encoding keeps it), the
encodings on the self-attention modules, a `StackHook` (backend check, per-forward memo), `GrowBuffers` on BERT-style
embeddings, and `PositionMap` on a learned table whose positions are mapped; and, per model, its own config object
(`own_config`). Every hook is remembered on the module it is registered on (`remember_hook`) so that `remove_patch`
finds it again. Nothing here validates a request: `hf_posenc.patching` does that first.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .architectures import StackSpec, architecture_for, get_submodule, present_stacks, set_submodule
from .attention import BACKEND, attached, detach
from .config_form import patched_config_class, unpatched_config_class
from .encodings import EncodingSpec, PositionContext, PositionEncoding, SinusoidalAbsolute, StackDims
from .record import read_record, write_record

HOOKS_ATTRIBUTE = "_posenc_hooks"


class PositionTable(nn.Module):
    """Stands where the learned absolute table stood and is called the same way.

    It returns the vectors of an absolute encoding (sinusoidal), or a 0-dim zero when the stack's positions now live in
    attention, so that `embeddings + position_embeddings` costs nothing and keeps its shape. The replaced table is
    kept (not registered, not saved) so that `unpatch_model` can restore it.
    """

    def __init__(self, encoding: SinusoidalAbsolute | None, stack: StackSpec, offset: int, original: nn.Module | None):
        super().__init__()
        self.encoding, self.stack, self.offset = encoding, stack, offset
        self.__dict__["original"] = original
        # A 0-dim zero that follows the model's dtype and device: the output when there is no absolute encoding.
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    @property
    def call(self) -> str:
        return self.stack.table_call

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.encoding is None:
            return self.zero
        positions = self.stack.call_positions(args, kwargs, self.zero.device)
        if self.call == "position_ids":  # row ids: RoBERTa's are offset by padding_idx + 1
            positions = (positions - self.offset).clamp(min=0)
        return self.encoding.embed(positions).to(self.zero.dtype)

    def forget_original(self) -> None:
        """Drop the replaced table: a model loaded already patched has none, and must not restore random rows."""
        self.__dict__["original"] = None

    def extra_repr(self) -> str:
        return f"call={self.call!r}, offset={self.offset}" + ("" if self.encoding else ", zero")


class PositionMap:
    """Forward pre-hook of a learned table: maps positions into its `trained_length` trained rows.

    `recurrent`: `p mod T`; `grouped`: `p // group_size` (LongEmbed, Zhu et al. 2024, arXiv:2404.12096). Rows before
    the `offset` (RoBERTa's padding position) pass through unchanged. BART-style tables compute their positions from
    `cache_length`, so the hook computes them the same way and hands the mapped ones over as `position_ids`.
    """

    def __init__(self, mode: str, trained_length: int, group_size: int | None, offset: int, stack: StackSpec) -> None:
        self.mode, self.trained_length, self.group_size = mode, trained_length, group_size
        self.offset, self.stack = offset, stack

    def map_positions(self, positions: torch.Tensor) -> torch.Tensor:
        if self.mode == "recurrent":
            return positions % self.trained_length
        return torch.div(positions, self.group_size, rounding_mode="floor")

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        positions = self.stack.call_positions(args, kwargs, module.weight.device)
        rest = {k: v for k, v in kwargs.items() if k not in ("input", "input_ids", "cache_length", "position_ids")}
        if self.stack.table_call == "position_ids":  # row ids
            shifted = positions - self.offset
            return (torch.where(shifted >= 0, self.map_positions(shifted) + self.offset, positions),), rest
        input_ids = self.stack.parse_table_call(args, kwargs)[0]
        return (input_ids,), {**rest, "position_ids": self.map_positions(positions)}

    def __repr__(self) -> str:
        size = f", group_size={self.group_size}" if self.mode == "grouped" else ""
        return f"PositionMap({self.mode!r}, trained_length={self.trained_length}{size}, offset={self.offset})"


class FrozenPositionsWarning(UserWarning):
    """Freshly initialized position parameters are frozen while the rest of the model trains."""


class StackHook:
    """Forward pre-hook of a patched stack: refuses to run under another attention backend (a relative encoding
    would be silently dropped), starts a fresh per-forward memo, and warns once when the stack's freshly initialized
    position parameters stay frozen while other parameters train (a peft LoRA config that does not list them)."""

    def __init__(self, config: Any, context: PositionContext, needs_backend: bool) -> None:
        self.config, self.context, self.needs_backend = config, context, needs_backend
        self.fresh, self.warned = True, False  # fresh: initialized by the patch, not loaded from a checkpoint

    def __call__(self, module: nn.Module, args) -> None:
        implementation = self.config._attn_implementation
        if self.needs_backend and implementation != BACKEND:
            raise ValueError(
                f"This model was patched by hf_posenc and its position encoding runs in the {BACKEND!r} attention "
                f"backend, but config._attn_implementation is {implementation!r}: the encoding would be silently "
                f"dropped. Call model.set_attn_implementation({BACKEND!r}), or hf_posenc.unpatch_model(model) first."
            )
        self.context.clear()
        self.context.share_learned = not (module.training and _checkpointing(module))
        if self.fresh and not self.warned and module.training and torch.is_grad_enabled():
            self.warned = _warn_if_frozen(module)


def is_position_parameter(name: str) -> bool:
    """Whether a parameter name belongs to a position encoding installed by a patch (a `posenc` submodule)."""
    return ".posenc." in f".{name}"


def _warn_if_frozen(stack_module: nn.Module) -> bool:
    """Warn (and return True) when the position parameters that the stack's attention uses are all frozen while some
    other parameter trains: the new position terms would stay at their initialization (e.g. zeros) through training.

    The parameters are those of the encodings attached to the attention modules, the ones the backend runs: a copy
    that peft's `modules_to_save` makes trainable is not attached, so it does not count.
    """
    used = {id(p) for module in stack_module.modules() if attached(module) for p in attached(module)[0].parameters()}
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


def mark_loaded(model: nn.Module) -> None:
    """The position parameters of `model` came from a checkpoint: no frozen-fresh-parameters warning for them."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, StackHook):
                hook.fresh = False


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


def _checkpointing(stack_module: nn.Module) -> bool:
    """Whether transformers' gradient checkpointing is on for the layers of this stack."""
    return any(getattr(m, "gradient_checkpointing", False) for m in stack_module.children() for m in m.children())


class GrowBuffers:
    """Forward pre-hook on BERT-style embeddings: grow `position_ids` / `token_type_ids` to the input's length.

    transformers slices and gathers these buffers by position, so they would cap the input at the old
    `max_position_embeddings` even when no table does any more.
    """

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __call__(self, module: nn.Module, args, kwargs) -> None:
        tensor = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        tensor = tensor if tensor is not None else args[0]
        needed = tensor.shape[1] + kwargs.get("cache_length", 0) + self.offset
        if module.position_ids.shape[-1] < needed:
            grow_length_buffers(module, max(needed, 2 * module.position_ids.shape[-1]))


def grow_length_buffers(embeddings: nn.Module, length: int) -> None:
    """Resize the `position_ids` (arange) and `token_type_ids` (zeros) buffers of BERT-style embeddings."""
    device = embeddings.position_ids.device
    embeddings.position_ids = torch.arange(length, device=device).expand((1, -1))
    if hasattr(embeddings, "token_type_ids"):
        embeddings.token_type_ids = torch.zeros((1, length), dtype=torch.long, device=device)


def ensure_buffers(embeddings: nn.Module, length: int) -> None:
    """Grow BERT-style length buffers to at least `length` positions."""
    if embeddings.position_ids.shape[-1] < length:
        grow_length_buffers(embeddings, length)


@dataclass
class StackPlan:
    """A validated patch of one stack, with the modules to install (built, not yet attached)."""

    stack: StackSpec
    spec: EncodingSpec
    dims: StackDims
    attention: list[nn.Module]
    encodings: list[PositionEncoding] = field(default_factory=list)  # one per layer, or one shared


def remember_hook(module: nn.Module, handle: Any) -> None:
    """Keep a hook's handle on the module it is registered on, for `remove_patch`."""
    module.__dict__.setdefault(HOOKS_ATTRIBUTE, []).append(handle)


def current_table(base: nn.Module, stack: StackSpec) -> nn.Module | None:
    """The learned table of a stack, looking through a `PositionTable` installed by an earlier patch."""
    table = get_submodule(base, stack.table)
    return table.original if isinstance(table, PositionTable) else table


def installed_tables(model: nn.Module) -> list[PositionTable]:
    """The `PositionTable`s a patch installed on `model`."""
    return [module for module in model.modules() if isinstance(module, PositionTable)]


def own_config(model: nn.Module) -> None:
    """Give `model` its own config object, of the `Patched<Config>` class that writes the patched form.

    Models built from one config object share it; a patch recorded on a shared config would patch the others'
    record and attention backend too. Every submodule that held the old config gets the copy.
    """
    old = model.config
    new = copy.deepcopy(old)
    new.__class__ = patched_config_class(type(old))
    _rebind_config(model, old, new)


def release_config(model: nn.Module) -> None:
    """Give `model`'s config back its base class (after the record was cleared)."""
    model.config.__class__ = unpatched_config_class(type(model.config))


def _rebind_config(model: nn.Module, old: Any, new: Any) -> None:
    for module in model.modules():
        if module.__dict__.get("config") is old:
            module.config = new
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, StackHook) and hook.config is old:
                hook.config = new


def remove_patch(model: nn.Module) -> None:
    """Remove encodings, hooks and the record; restore each replaced table that is still at hand."""
    for stack in architecture_for(model).stacks:
        _remove_from_stack(model.base_model, stack)
    if read_record(model.config) is not None:
        write_record(model.config, None)


def _remove_from_stack(base: nn.Module, stack: StackSpec) -> None:
    stack_module = get_submodule(base, stack.module)
    if stack_module is None:
        return
    table = get_submodule(base, stack.table)
    if isinstance(table, PositionTable) and table.original is not None:
        set_submodule(base, stack.table, table.original)
        # A `max_length` given with the patch raised the limit; the restored table sets it again.
        base.config.max_position_embeddings = table.original.num_embeddings - stack.config_rows(base.config)
    for module in [stack_module, *([base.get_submodule(stack.embeddings)] if stack.embeddings else [])]:
        for handle in module.__dict__.pop(HOOKS_ATTRIBUTE, []):
            handle.remove()
    for module in stack_module.modules():
        detach(module)
        if "posenc" in module._modules:
            del module._modules["posenc"]


__all__ = [
    "FrozenPositionsWarning",
    "GrowBuffers",
    "PositionMap",
    "PositionTable",
    "StackHook",
    "StackPlan",
    "current_table",
    "ensure_buffers",
    "grow_length_buffers",
    "installed_tables",
    "is_position_parameter",
    "mark_loaded",
    "own_config",
    "position_parameters",
    "present_stacks",
    "release_config",
    "remember_hook",
    "remember_tokenizer_limit",
    "remove_patch",
    "restore_tokenizer_limit",
]
