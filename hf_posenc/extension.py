"""Inputs longer than the trained length (BERT: 512, BART: 1024) for models with learned absolute positions.

Two ways past a learned table's `T` trained positions:

* **New rows** (`extend_positions(model, N, init=...)`, or `patch_model(model, "learned", max_length=N, init=...)`):
  the table grows to `N` positions. The inits of the new rows are in `INITS`; the default `copy` keeps every input
  of up to `T` tokens bit-identical and gives longer ones the local position structure the model was trained on.
* **Mapped positions**, no new rows (`patch_model(model, "learned", position_ids="recurrent" | "grouped",
  max_length=N)`): positions are mapped into the trained rows at inference time, as LongEmbed (Zhu et al. 2024,
  arXiv:2404.12096) does for absolute-position embedding models. `recurrent` uses `p mod T`; `grouped` uses
  `p // group_size` (default `group_size = ceil(N / T)`). A forward pre-hook on the table maps the positions, so
  the table, its parameters and the state-dict keys stay as they were.

Either way every limit moves with it: `config.max_position_embeddings` (it sizes the learned tables, so it follows
them: raised when a table grows, kept when positions are mapped, raised to the new limit when no stack keeps a table),
BERT-style `position_ids` / `token_type_ids` buffers, BART's `max_source_positions` / `max_target_positions`, the
tokenizer's `model_max_length`, and `config.posenc` (each changed stack records `max_length`; a learned stack's
`options.init` says how its rows were made). `hf_posenc.hub.folders.update_max_seq_length` updates a
sentence-transformers folder.
Encodings without a table (sinusoidal, relative) run at any length: `max_length` then only updates this bookkeeping.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from . import architectures
from .architectures import StackSpec, get_submodule
from .encodings import (  # noqa: F401  (re-exported)
    EXTENSION_INITS,
    LearnedAbsolute,
    copy_rows,
    interpolate_rows,
    option_defaults,
    random_rows,
    sinusoidal_rows,
)
from .record import CONFIG_KEY, PatchRecord, StackRecord, read_record, stack_record, write_record
from .state import (
    PositionMap,
    PositionTable,
    StackPlan,
    current_table,
    ensure_buffers,
    own_config,
    release_config,
    remember_hook,
    remove_patch,
)

INITS = EXTENSION_INITS
"""Init name -> function filling the new rows (they live beside `learned`, whose `init` option they are)."""

KEEPS_TRAINED_ROWS = ("copy", "sinusoidal", "random")
"""Inits after which inputs of up to the old length give bit-identical outputs."""


def extended_weight(weight: torch.Tensor, offset: int, max_length: int, init: str) -> torch.Tensor:
    """The table `weight` grown to `max_length` positions; its `offset` special rows (BART, RoBERTa) are kept."""
    with torch.no_grad():
        positions = INITS[init](weight[offset:].detach(), max_length)
        return torch.cat([weight[:offset].detach(), positions])


# ---------------------------------------------------------------------------------------------------------------------
# Planning: validate and compute, touch nothing
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class StackLength:
    """What a length change does to one stack.

    Attributes:
        stack: the stack.
        mode: "extend" (new rows), "map" (positions mapped into the trained rows) or "bookkeeping" (no table).
        offset: rows of the table before position 0.
        weight: the grown table weight ("extend").
        position_map: the hook to install ("map").
        init: the init of the new rows ("extend").
    """

    stack: StackSpec
    mode: str
    offset: int
    weight: torch.Tensor | None = None
    position_map: PositionMap | None = None
    init: str | None = None


@dataclass
class LengthPlan:
    max_length: int
    stacks: list[StackLength]
    tokenizer: Any = None


def check_max_length(max_length: Any) -> int:
    """`max_length` as an int, or a `TypeError` / `ValueError` for a non-integer or non-positive one."""
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
        raise TypeError(f"max_length must be a positive int, got {max_length!r} ({type(max_length).__name__}).")
    if max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length}.")
    return int(max_length)


def _check_longer(max_length: int, current: int, stack: StackSpec) -> None:
    if max_length <= current:
        raise ValueError(
            f"max_length={max_length} is not larger than the {stack.name}'s current limit of {current} positions: "
            "extension only grows a model. Pass a larger max_length (truncate inputs to shorten them)."
        )


def check_init(init: Any) -> str:
    if init not in EXTENSION_INITS:
        raise ValueError(f"Unknown init {init!r}. Valid inits: {list(EXTENSION_INITS)} (see hf_posenc.extension).")
    return init


def check_tokenizer(model: nn.Module, tokenizer: Any) -> None:
    """Refuse a tokenizer that does not belong to `model`: more tokens than the model embeds, or another pad id."""
    if tokenizer is None:
        return
    if not hasattr(tokenizer, "model_max_length"):
        raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}.")
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"The tokenizer's vocabulary ({len(tokenizer)} tokens) does not match the model, which embeds {rows} "
            "token ids: it is not this checkpoint's tokenizer. Pass the tokenizer saved with the model."
        )
    model_pad, tokenizer_pad = getattr(model.config, "pad_token_id", None), tokenizer.pad_token_id
    if model_pad is not None and tokenizer_pad is not None and model_pad != tokenizer_pad:
        raise ValueError(
            f"The tokenizer pads with id {tokenizer_pad} but the model's pad_token_id is {model_pad}: it is not this "
            "checkpoint's tokenizer. Pass the tokenizer saved with the model."
        )


def present_stacks(model: nn.Module, stacks: str | Iterable[str] | None = None) -> list[StackSpec]:
    """The stacks of `model` named in `stacks` (default: all present ones), or a `ValueError` listing them."""
    present = architectures.present_stacks(model)
    if stacks is None:
        return present
    names = [stacks] if isinstance(stacks, str) else list(stacks)
    unknown = sorted(set(names) - {s.name for s in present})
    if unknown or not names:
        raise ValueError(
            f"Unknown stack(s) {unknown or names} for {type(model).__name__}; it has {[s.name for s in present]}."
        )
    return [s for s in present if s.name in names]


def _recorded(model: nn.Module, stack: StackSpec) -> StackRecord | None:
    return stack_record(model.config, stack.name)


def _plan_extension(model: nn.Module, stack: StackSpec, table: nn.Embedding, max_length: int, init: str):
    offset = stack.offset(model.config)
    _check_longer(max_length, table.num_embeddings - offset, stack)
    weight = extended_weight(table.weight, offset, max_length, init)
    return StackLength(stack, "extend", offset, weight=weight, init=init)


def _plan_mapping(model: nn.Module, stack: StackSpec, table: nn.Embedding, max_length: int, encoding) -> StackLength:
    """Resolve `group_size` (default `ceil(max_length / T)`) onto the encoding, so that the record rebuilds it."""
    offset = stack.offset(model.config)
    trained = table.num_embeddings - offset
    _check_longer(max_length, trained, stack)
    if encoding.position_ids == "grouped":
        encoding.group_size = encoding.group_size or math.ceil(max_length / trained)
        if encoding.group_size * trained < max_length:
            raise ValueError(
                f"group_size={encoding.group_size} maps at most {encoding.group_size * trained} positions onto the "
                f"{stack.name}'s {trained} trained rows, fewer than max_length={max_length}. Use "
                f"group_size >= {math.ceil(max_length / trained)}, or leave it out to get that."
            )
    position_map = PositionMap(encoding.position_ids, trained, encoding.group_size, offset, stack)
    return StackLength(stack, "map", offset, position_map=position_map)


def plan_for_patch(model: nn.Module, plans: list[StackPlan], max_length: Any, tokenizer: Any) -> LengthPlan | None:
    """Validate `patch_model`'s `max_length` / `tokenizer` against its stack plans; touches nothing but the new
    (not yet installed) encodings, onto which a default `group_size` is resolved."""
    mapped = [p for p in plans if p.spec.cls.keeps_learned_table and p.encodings[0].position_ids is not None]
    if max_length is None:
        if mapped:
            raise ValueError(
                f"position_ids={mapped[0].encodings[0].position_ids!r} maps positions past the trained length: "
                "pass the new input limit as max_length=N."
            )
        if tokenizer is not None:
            raise ValueError("tokenizer= is only used with max_length (its model_max_length is set to it).")
        return None
    max_length = check_max_length(max_length)
    check_tokenizer(model, tokenizer)
    return LengthPlan(max_length, [_plan_patched_stack(model, p, max_length) for p in plans], tokenizer)


def _plan_patched_stack(model: nn.Module, plan: StackPlan, max_length: int) -> StackLength:
    stack, spec = plan.stack, plan.spec
    table = current_table(model.base_model, stack)
    if spec.cls.keeps_learned_table:
        encoding = plan.encodings[0]
        if encoding.position_ids is not None:
            return _plan_mapping(model, stack, table, max_length, encoding)
        return _plan_extension(model, stack, table, max_length, encoding.init)
    if spec.keep_absolute:
        raise ValueError(
            f"keep_absolute=True keeps the {stack.name}'s learned table, which stops at "
            f"{stack.table_limit(table, model.config)} positions, and max_length does not say how to "
            f"fill new rows. Patch without max_length, then grow the kept table with "
            f"hf_posenc.extend_positions(model, {max_length}, init=...)."
        )
    _check_longer(max_length, stack.config_limit(model.config), stack)
    return StackLength(stack, "bookkeeping", stack.offset(model.config))


def _nothing_to_extend(model: nn.Module, stack: StackSpec, table: nn.Module) -> ValueError:
    recorded = _recorded(model, stack)
    encoding = recorded.encoding if recorded else "?"
    if isinstance(table, PositionTable):
        return ValueError(
            f"The {stack.name} has no learned position table to extend: its {encoding!r} encoding computes every "
            "position and runs at any length. To raise the recorded limits (config, buffers, tokenizer) only, call "
            "hf_posenc.set_max_length(model, max_length, tokenizer=...)."
        )
    mode = recorded.options["position_ids"]
    return ValueError(
        f"The {stack.name} maps positions into its trained rows (position_ids={mode!r}), so new rows would never be "
        "used. Re-patch with a larger limit instead: hf_posenc.patch_model(model, 'learned', "
        f"position_ids={mode!r}, max_length=N, replace=True)."
    )


def _is_mapped(model: nn.Module, stack: StackSpec) -> bool:
    recorded = _recorded(model, stack)
    return recorded is not None and recorded.mapped


# ---------------------------------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------------------------------


def apply_length_plan(model: nn.Module, plan: LengthPlan) -> None:
    """Grow tables, install position maps, then update every limit: config, buffers, tokenizer and record."""
    base = model.base_model
    for item in plan.stacks:
        table = get_submodule(base, item.stack.table)
        if item.mode == "extend":
            _set_weight(table, item.weight)
        elif item.mode == "map":
            handle = table.register_forward_pre_hook(item.position_map, with_kwargs=True)
            remember_hook(base.get_submodule(item.stack.module), handle)  # unpatch_model removes it
        _grow_stack_limits(base, item, plan.max_length)
    _update_config(model, plan)
    _update_tokenizer(plan.tokenizer, plan.max_length)
    _record_lengths(model, plan)


def _set_weight(table: nn.Embedding, weight: torch.Tensor) -> None:
    requires_grad = table.weight.requires_grad
    table.weight = nn.Parameter(weight.to(table.weight.device), requires_grad=requires_grad)
    table.num_embeddings = weight.shape[0]


def _grow_stack_limits(base: nn.Module, item: StackLength, max_length: int) -> None:
    """BERT-style `position_ids` / `token_type_ids` buffers and BART's `max_source/target_positions`."""
    if item.stack.embeddings:
        ensure_buffers(base.get_submodule(item.stack.embeddings), max_length + item.offset)
    stack_module = base.get_submodule(item.stack.module)
    for attribute in ("max_source_positions", "max_target_positions"):
        if hasattr(stack_module, attribute):
            setattr(stack_module, attribute, max_length)


def _update_config(model: nn.Module, plan: LengthPlan) -> None:
    """`max_position_embeddings` sizes the learned tables when the model is built, so it follows the tables (the
    largest, when BART's differ); only when no stack keeps a table does it become the new input limit."""
    config, base = model.config, model.base_model
    sizes = []
    for stack in present_stacks(model):
        table = get_submodule(base, stack.table)
        if isinstance(table, nn.Embedding):
            sizes.append(table.num_embeddings - stack.config_rows(config))
    if not sizes:
        sizes = [config.max_position_embeddings, plan.stacks[0].stack.config_size(plan.max_length, config)]
    config.max_position_embeddings = max(sizes)


def _update_tokenizer(tokenizer: Any, max_length: int) -> None:
    """`model_max_length` bounds truncation and the too-long warning; `save_pretrained` writes it."""
    if tokenizer is None:
        return
    tokenizer.model_max_length = max_length
    tokenizer.init_kwargs["model_max_length"] = max_length


def learned_record(init: str = "copy") -> StackRecord:
    """The record of a stack that keeps its learned table, as `patch_model(model, "learned", init=...)` writes it."""
    return StackRecord("learned", {**option_defaults(LearnedAbsolute), "init": init})


def _record_lengths(model: nn.Module, plan: LengthPlan) -> None:
    """Each changed stack records `max_length` (and its init); every other stack that keeps a learned table records
    its own limit too (BART's stacks may differ, and `max_position_embeddings` can hold only one of them)."""
    record = read_record(model.config) or PatchRecord({})
    changed, stacks = {item.stack.name: item for item in plan.stacks}, {}
    for stack in present_stacks(model):
        item, table = changed.get(stack.name), get_submodule(model.base_model, stack.table)
        if item is None and not isinstance(table, nn.Embedding):
            continue
        entry = record.stacks.get(stack.name) or learned_record()
        if item is not None and item.mode == "extend":
            if entry.cls.keeps_learned_table:
                entry = replace(entry, options={**entry.options, "init": item.init})
            else:
                entry = replace(entry, table_init=item.init)  # a hybrid's kept table
        limit = plan.max_length if item is not None else entry.max_length or _limit(model, stack)
        stacks[stack.name] = replace(entry, max_length=limit)
    write_record(model.config, record.with_stacks(stacks))


def _limit(model: nn.Module, stack: StackSpec) -> int:
    return stack.table_limit(get_submodule(model.base_model, stack.table), model.config)


# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------


def extend_positions(
    model: nn.Module,
    max_length: int,
    *,
    init: str = "copy",
    tokenizer: Any = None,
    stacks: str | Iterable[str] | None = None,
) -> nn.Module:
    """Grow the learned absolute position tables of `model` to `max_length` positions, in place.

    The same as `patch_model(model, "learned", max_length=max_length, init=init)` on an unpatched model; on a patched
    one it grows the tables the patch kept (`learned`, or a hybrid's with `keep_absolute=True`) and leaves the rest of
    the patch alone. Row offsets are respected: BART's 2 special rows and RoBERTa's rows up to `padding_idx` are kept
    and only the position rows grow. Every limit is updated (see the module docstring).

    Args:
        model: a transformers model of a supported `model_type`, any task head.
        max_length: the new number of positions (the longest input), larger than the current one.
        init: how to fill the new rows, one of `hf_posenc.extension.INITS`: `copy` (default: tile the trained rows,
            Longformer; inputs of up to the old length keep bit-identical outputs), `interpolate` (stretch the
            whole table, Chen et al. 2023), `sinusoidal` (sinusoids at the trained rows' scale), `random` (the weak
            baseline).
        tokenizer: the model's tokenizer; its `model_max_length` is set to `max_length`.
        stacks: the stacks to grow (BART: `["encoder"]` or `["decoder"]`); default all.

    Returns:
        The same model.

    Raises:
        TypeError: a non-integer `max_length`, or a `tokenizer` that is not a tokenizer.
        ValueError: a `max_length` that is not positive or not larger than a stack's current one, an unknown `init`
            or stack, a stack with no learned table to grow, a tokenizer that does not match the model. The model is
            unchanged after any of these.
    """
    max_length, init = check_max_length(max_length), check_init(init)
    check_tokenizer(model, tokenizer)
    items = []
    for stack in present_stacks(model, stacks):
        table = get_submodule(model.base_model, stack.table)
        if not isinstance(table, nn.Embedding) or _is_mapped(model, stack):
            raise _nothing_to_extend(model, stack, table)
        items.append(_plan_extension(model, stack, table, max_length, init))
    own_config(model)
    apply_length_plan(model, LengthPlan(max_length, items, tokenizer))
    return model


def set_max_length(
    model: nn.Module, max_length: int, *, tokenizer: Any = None, stacks: str | Iterable[str] | None = None
) -> nn.Module:
    """Raise the recorded input limit of stacks that have no learned table (sinusoidal or relative encodings).

    Such stacks already run at any length; this updates the bookkeeping only: `config.max_position_embeddings`,
    BERT-style buffers, the tokenizer's `model_max_length` and `config.posenc`. A stack that still has a learned
    table is refused (it needs new rows: `extend_positions`).
    """
    max_length = check_max_length(max_length)
    check_tokenizer(model, tokenizer)
    items = []
    for stack in present_stacks(model, stacks):
        table = get_submodule(model.base_model, stack.table)
        if isinstance(table, nn.Embedding):
            raise ValueError(
                f"The {stack.name} keeps a learned table of {_limit(model, stack)} positions, which bounds its input: "
                "grow it with hf_posenc.extend_positions(model, max_length, init=...)."
            )
        recorded = _recorded(model, stack)
        _check_longer(max_length, (recorded and recorded.max_length) or stack.config_limit(model.config), stack)
        items.append(StackLength(stack, "bookkeeping", stack.offset(model.config)))
    own_config(model)
    apply_length_plan(model, LengthPlan(max_length, items, tokenizer))
    return model


def make_portable(model: nn.Module) -> bool:
    """Drop `config.posenc` when `model` needs nothing from hf_posenc to load, so that `save_pretrained` writes a plain
    transformers checkpoint that stock transformers, sentence-transformers and other tools load as it is.

    That is the case after `extend_positions` on an unpatched model when every stack keeps an unmapped learned table
    of the size `config.max_position_embeddings` builds (a patched checkpoint is otherwise written as
    `posenc-<type>`, see `hf_posenc.hub`). The record only adds provenance (the init) then. Returns True when it
    dropped the record, False (changing nothing) otherwise: other encodings, position maps, or BART stacks of
    different lengths, which only hf_posenc's loader can rebuild.
    """
    record, present = read_record(model.config), present_stacks(model)
    if record is None or set(record.stacks) != {s.name for s in present}:
        return False
    for stack in present:
        entry, table = record.stacks[stack.name], get_submodule(model.base_model, stack.table)
        plain = entry.cls.keeps_learned_table and not entry.keep_absolute and not entry.mapped
        if not (
            plain and isinstance(table, nn.Embedding) and _limit(model, stack) == stack.config_limit(model.config)
        ):
            return False
    remove_patch(model)  # `patch_model(model, "learned", ...)` also left a (no-op) stack hook
    delattr(model.config, CONFIG_KEY)
    release_config(model)
    return True
