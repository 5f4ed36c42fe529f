"""What a patch installs on a model, and how it is found and removed.

A patch installs, per stack: a `PositionTable` where the learned table stood (unless the encoding keeps it), the
encodings on the self-attention modules, a `StackHook` (backend check, per-forward memo), `GrowBuffers` on BERT-style
embeddings, and `PositionMap` on a learned table whose positions are mapped; and, per model, its own config object
(`own_config`). Every hook is remembered on the module it is registered on (`remember_hook`) so that `remove_patch`
finds it again. Nothing here validates a request: `hf_posenc.patching` does that first.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .architectures import StackSpec, architecture_for, get_submodule, present_stacks, set_submodule
from .attention import BACKEND, detach
from .config_form import patched_config_class, unpatched_config_class
from .encodings import AttentionOptions, EncodingSpec, PositionContext, PositionEncoding, SinusoidalAbsolute, StackDims
from .record import read_record, write_record
from .trainable import warn_if_frozen

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


class StackHook:
    """Forward pre-hook of a patched stack: refuses to run under another attention backend (a relative encoding
    would be silently dropped), starts a fresh per-forward memo, and warns once when the stack's freshly initialized
    position parameters stay frozen while other parameters train (a peft LoRA config that does not list them)."""

    def __init__(self, config: Any, context: PositionContext, needs_backend: bool) -> None:
        self.config, self.context, self.needs_backend = config, context, needs_backend
        self.fresh, self.warned = True, False  # fresh: initialized by the patch, not loaded from a checkpoint

    def __call__(self, module: nn.Module, args) -> None:
        if self.fresh and not self.warned and module.training and torch.is_grad_enabled():
            self.warned = warn_if_frozen(module)
        implementation = self.config._attn_implementation
        if self.needs_backend and implementation != BACKEND:
            raise ValueError(
                f"This model was patched by hf_posenc and its position encoding runs in the {BACKEND!r} attention "
                f"backend, but config._attn_implementation is {implementation!r}: the encoding would be silently "
                f"dropped. Call model.set_attn_implementation({BACKEND!r}), or hf_posenc.unpatch_model(model) first."
            )
        self.context.clear()
        self.context.share_learned = not (module.training and _checkpointing(module))
        # The ids the model was called with reach this stack's forward only; a stack called directly (BART's
        # `generate` runs the encoder on its own) gets its default positions unless it is handed ids itself. They
        # stay set after the forward, so that gradient checkpointing replays the layers with them.
        self.context.position_ids, self.context.requested = self.context.requested, None


class ExplicitPositions:
    """Forward pre-hook (with kwargs) on the base model: hands the position ids a caller passed to the model to one
    patched stack, as logical positions (from 0), through the stack's `PositionContext`.

    The encoder takes `position_ids`; a decoder takes `decoder_position_ids`, or `position_ids` when the model has no
    encoder (`BartForCausalLM`, which calls its decoder directly: the hook then sits on the decoder). BART's encoder
    run alone takes its `position_ids` too (a second hook on it, `given_only`). Row ids
    (RoBERTa's, offset by `padding_idx + 1`) are turned into positions. The attention backend and BART's tables read
    them from the context: transformers' BART neither accepts position ids for its encoder nor passes BERT's to
    attention per stack.
    """

    def __init__(
        self,
        context: PositionContext,
        stack: StackSpec,
        argument: str,
        embeddings: nn.Module | None,
        table: str,
        given_only: bool = False,
    ) -> None:
        self.context, self.stack, self.argument, self.embeddings = context, stack, argument, embeddings
        self.table = table  # the table's path from the hooked module
        self.given_only = given_only  # on a stack its model also calls: a call without ids keeps the model's

    def forget(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Forward hook: drop ids requested for a stack that the call did not run."""
        self.context.requested = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get(self.argument)
        if ids is None and args:  # passed positionally
            names = [n for n in inspect.signature(module.forward).parameters if n not in ("args", "kwargs")]
            if self.argument in names and names.index(self.argument) < len(args):
                ids = args[names.index(self.argument)]
        if ids is not None:
            offset = self.stack.offset(module.config) if self.stack.table_call == "position_ids" else 0
            largest = int(ids.max())
            self._check_table(module, largest - offset)
            if self.embeddings is not None:  # BERT gathers token_type_ids by row id: the buffers must reach them
                ensure_buffers(self.embeddings, largest + 1)
            ids = ids - offset
        elif self.given_only:
            return
        self.context.requested = ids

    def _check_table(self, base: nn.Module, largest: int) -> None:
        """A position past a learned table (not mapped into it) would fail deep inside `nn.Embedding`."""
        table = get_submodule(base, self.table)
        if not isinstance(table, nn.Embedding) or any(isinstance(h, PositionMap) for h in _pre_hooks(table)):
            return
        limit = self.stack.table_limit(table, base.config)
        if largest >= limit:
            raise ValueError(
                f"position_ids reach position {largest}, but the {self.stack.name}'s learned table has {limit} "
                f"positions. Grow it first: hf_posenc.extend_positions(model, {largest + 1}) or "
                f"patch_model(model, 'learned', max_length={largest + 1}); or lower the augmentation's target_length."
            )


def _pre_hooks(module: nn.Module) -> list:
    return list(module._forward_pre_hooks.values())


class TablePositions:
    """Forward pre- and post-hook of a BART-style table (learned or `PositionTable`): it computes its positions
    itself, so the hook hands it the stack's explicit positions. transformers' `BartLearnedPositionalEmbedding`
    unsqueezes explicit ids to one batch row (it only ever gets 1-D ones); per-row ids give a (1, B, L, D) output,
    which the post-hook returns as (B, L, D)."""

    def __init__(self, context: PositionContext) -> None:
        self.context = context

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.context.position_ids is None:
            return None
        return args, {**kwargs, "position_ids": self.context.position_ids}

    def squeeze(self, module: nn.Module, args: tuple, output: torch.Tensor):
        return output.squeeze(0) if output.dim() == 4 else None


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
    options: AttentionOptions = field(default_factory=AttentionOptions)


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


def mark_loaded(model: nn.Module) -> None:
    """The position parameters of `model` came from a checkpoint: no frozen-fresh-parameters warning for them."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, StackHook):
                hook.fresh = False


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
    "ExplicitPositions",
    "GrowBuffers",
    "PositionMap",
    "PositionTable",
    "StackHook",
    "StackPlan",
    "TablePositions",
    "current_table",
    "ensure_buffers",
    "grow_length_buffers",
    "installed_tables",
    "mark_loaded",
    "own_config",
    "present_stacks",
    "release_config",
    "remember_hook",
    "remove_patch",
]
