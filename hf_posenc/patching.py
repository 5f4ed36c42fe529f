"""`patch_model` and `unpatch_model`: validate everything, then mutate.

A patch is planned first (`plan_patch`): the request is parsed, every option is checked by building the new encoding
modules, and only when all of that succeeded is the model touched (`_apply`). A failed call leaves the model as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import __version__
from .architectures import (
    ArchitectureSpec,
    StackSpec,
    architecture_for,
    attention_shape,
    get_submodule,
    row_offset,
    self_attention_modules,
    set_submodule,
)
from .attention import BACKEND
from .encodings import (
    ENCODINGS,
    EncodingSpec,
    PositionContext,
    PositionEncoding,
    SinusoidalAbsolute,
    StackDims,
    build_encoding,
    canonical_name,
)

CONFIG_KEY = "posenc"
"""The `config.json` field that records the patch (see `patch_spec`)."""


# ---------------------------------------------------------------------------------------------------------------------
# Modules the patch installs
# ---------------------------------------------------------------------------------------------------------------------


class PositionTable(nn.Module):
    """Stands where the learned absolute table stood and is called the same way.

    It returns the vectors of an absolute encoding (sinusoidal), or a 0-dim zero when the stack's positions now live in
    attention, so that `embeddings + position_embeddings` costs nothing and keeps its shape. The replaced table is
    kept (not registered, not saved) so that `unpatch_model` can restore it.
    """

    def __init__(self, encoding: SinusoidalAbsolute | None, call: str, offset: int, original: nn.Module | None):
        super().__init__()
        self.encoding = encoding
        self.call, self.offset = call, offset
        self.__dict__["original"] = original
        # A 0-dim zero that follows the model's dtype and device: the output when there is no absolute encoding.
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.encoding is None:
            return self.zero
        positions = self._positions(*args, **kwargs)
        return self.encoding.embed(positions).to(self.zero.dtype)

    def _positions(self, *args, **kwargs) -> torch.Tensor:
        if self.call == "position_ids":  # BERT-style: table(position_ids); RoBERTa offsets them by padding_idx + 1
            return (args[0] - self.offset).clamp(min=0)
        input_ids, cache_length = args[0], (args[1] if len(args) > 1 else kwargs.get("cache_length", 0))
        position_ids = kwargs.get("position_ids")  # BART-style: the table computes positions itself
        if position_ids is None:
            return torch.arange(cache_length, cache_length + input_ids.shape[1], device=self.zero.device)
        return position_ids

    def extra_repr(self) -> str:
        return f"call={self.call!r}, offset={self.offset}" + ("" if self.encoding else ", zero")


class StackHook:
    """Forward pre-hook of a patched stack: refuses to run under another attention backend (a relative encoding
    would be silently dropped) and starts a fresh per-forward memo."""

    def __init__(self, config, context: PositionContext, needs_backend: bool) -> None:
        self.config, self.context, self.needs_backend = config, context, needs_backend

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


# ---------------------------------------------------------------------------------------------------------------------
# Planning: parse and validate, build new modules, touch nothing
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class StackPlan:
    stack: StackSpec
    spec: EncodingSpec
    dims: StackDims
    attention: list[nn.Module]
    encodings: list[PositionEncoding] = field(default_factory=list)  # one per layer, or one shared


def _stack_requests(
    arch: ArchitectureSpec, model: nn.Module, encoding, encoder, decoder, options: dict, keep_absolute: bool
) -> dict[str, EncodingSpec]:
    """Turn the arguments of `patch_model` into one `EncodingSpec` per present stack."""
    present = [s.name for s in arch.stacks if get_submodule(model.base_model, s.module) is not None]
    per_stack = {"encoder": encoder, "decoder": decoder}
    for name, value in per_stack.items():
        if value is not None and name not in present:
            raise ValueError(f"{type(model).__name__} has no {name} stack; it has: {present}.")
    if encoding is None and all(per_stack[name] is None for name in present):
        raise ValueError(f"Name an encoding (valid: {sorted(ENCODINGS)}), or one per stack with {present}=...")
    requests = {}
    for name in present:
        value = per_stack[name] if per_stack[name] is not None else encoding
        if value is None:
            continue  # this stack keeps its current encoding
        requests[name] = _parse_request(value, options if per_stack[name] is None else {}, keep_absolute)
    return requests


def _parse_request(value, options: dict, keep_absolute: bool) -> EncodingSpec:
    """A stack request is a name (with the call's options) or a dict `{"encoding": name, **options}`."""
    if isinstance(value, EncodingSpec):
        return EncodingSpec(canonical_name(value.encoding), dict(value.options), value.keep_absolute)
    if isinstance(value, dict):
        value = dict(value)
        if "encoding" not in value:
            raise ValueError(f"A per-stack request needs an 'encoding' key, got keys {sorted(value)}.")
        name, keep = value.pop("encoding"), value.pop("keep_absolute", keep_absolute)
        return EncodingSpec(canonical_name(name), value, keep)
    if not isinstance(value, str):
        raise TypeError(f"An encoding request must be a name or a dict, got {type(value).__name__}.")
    return EncodingSpec(canonical_name(value), dict(options), keep_absolute)


def _current_table(base: nn.Module, stack: StackSpec) -> nn.Module | None:
    """The learned table of a stack, looking through a `PositionTable` installed by an earlier patch."""
    table = get_submodule(base, stack.table)
    if isinstance(table, PositionTable):
        return table.original
    return table


def _stack_dims(model: nn.Module, stack: StackSpec, attention: list[nn.Module]) -> StackDims:
    config = model.config
    heads, head_dim = attention_shape(attention[0])
    table = _current_table(model.base_model, stack)
    width = table.embedding_dim if isinstance(table, nn.Embedding) else heads * head_dim
    return StackDims(
        hidden_size=width,
        num_heads=heads,
        head_dim=head_dim,
        causal=bool(getattr(attention[0], "is_causal", False)),
        max_length=config.max_position_embeddings,
        initializer_range=getattr(config, "initializer_range", getattr(config, "init_std", 0.02)),
    )


def _validate(spec: EncodingSpec, stack: StackSpec, dims: StackDims, table: nn.Module | None) -> None:
    kind = spec.cls.kind
    if kind == "none" and not dims.causal:
        raise ValueError(
            f"Encoding 'none' is refused for the bidirectional {stack.name}: without positions, bidirectional "
            "attention is permutation-invariant and the encoder sees a bag of words. Use it on causal decoders only "
            "(e.g. BART's decoder); for encoders choose one of "
            f"{sorted(n for n, c in ENCODINGS.items() if c.kind != 'none')}."
        )
    if spec.keep_absolute and kind != "relative":
        raise ValueError(f"keep_absolute=True only applies to relative encodings, not to {spec.encoding!r}.")
    needs_table = spec.encoding == "learned" or spec.keep_absolute
    if needs_table and not isinstance(table, nn.Embedding):
        raise ValueError(
            f"The {stack.name} has no learned absolute table any more (an earlier patch removed it), so "
            f"{spec.encoding!r}{' with keep_absolute=True' if spec.keep_absolute else ''} cannot be applied. "
            "Reload the original checkpoint to get the table back."
        )


def _resolve_auto_options(spec: EncodingSpec, table: nn.Module | None) -> None:
    """Resolve data-dependent defaults into numbers, so that the recorded spec rebuilds the same model."""
    if spec.encoding == "sinusoidal" and spec.options.get("scale", "auto") == "auto":
        learned_std = table.weight.detach().float().std().item() if isinstance(table, nn.Embedding) else None
        spec.options["scale"] = learned_std * 2**0.5 if learned_std else 1.0
    if spec.cls.kind == "relative" and spec.options.get("init", "auto") == "auto" and "init" in _option_names(spec):
        spec.options["init"] = "zeros" if spec.keep_absolute else "normal"


def _option_names(spec: EncodingSpec) -> set[str]:
    from .encodings import option_defaults

    return set(option_defaults(spec.cls))


def _build_encodings(spec: EncodingSpec, dims: StackDims, layers: int) -> list[PositionEncoding]:
    if spec.cls.kind == "absolute" and spec.encoding == "learned":
        return [build_encoding(spec.encoding, dims, spec.options)]  # validates options; nothing to attach
    first = build_encoding(spec.encoding, dims, spec.options)
    if not spec.cls.per_layer:
        return [first]
    return [first] + [build_encoding(spec.encoding, dims, spec.options) for _ in range(layers - 1)]


def plan_patch(
    model: nn.Module, encoding=None, *, encoder=None, decoder=None, keep_absolute: bool = False, **options: Any
) -> list[StackPlan]:
    """Parse and validate a patch request and build its modules, without touching `model`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_model expects a transformers model, got {type(model).__name__}.")
    arch = architecture_for(model)
    requests = _stack_requests(arch, model, encoding, encoder, decoder, options, keep_absolute)
    plans = []
    for stack in arch.stacks:
        if stack.name not in requests:
            continue
        stack_module = get_submodule(model.base_model, stack.module)
        attention = [m for _, m in self_attention_modules(stack_module, stack)]
        spec, table = requests[stack.name], _current_table(model.base_model, stack)
        dims = _stack_dims(model, stack, attention)
        _validate(spec, stack, dims, table)
        _resolve_auto_options(spec, table)
        plans.append(StackPlan(stack, spec, dims, attention, _build_encodings(spec, dims, len(attention))))
    return plans


# ---------------------------------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------------------------------


def _install_table(model: nn.Module, plan: StackPlan) -> None:
    """Replace the learned table unless the encoding keeps it (learned, or keep_absolute=True)."""
    spec, stack, base = plan.spec, plan.stack, model.base_model
    if spec.encoding == "learned" or spec.keep_absolute:
        return
    original = _current_table(base, stack)
    absolute = plan.encodings[0] if spec.cls.kind == "absolute" else None
    table = PositionTable(absolute, stack.table_call, row_offset(stack, model.config), original)
    device, dtype = _device_dtype(plan.attention[0])
    set_submodule(base, stack.table, table.to(device=device, dtype=dtype))
    if stack.embeddings:
        embeddings = base.get_submodule(stack.embeddings)
        handle = embeddings.register_forward_pre_hook(GrowBuffers(table.offset), with_kwargs=True)
        _remember_hook(embeddings, handle)


def _install_attention(model: nn.Module, plan: StackPlan) -> None:
    """Attach the relative encoding to every self-attention module of the stack, and the per-forward hook."""
    stack_module = model.base_model.get_submodule(plan.stack.module)
    context = PositionContext(plan.dims.causal)
    relative = plan.spec.cls.kind == "relative"
    device, dtype = _device_dtype(plan.attention[0])
    encodings = [e.to(device=device, dtype=dtype if e.learned else None) for e in plan.encodings]
    if relative and not plan.spec.cls.per_layer:
        stack_module.posenc = encodings[0]
    for index, module in enumerate(plan.attention):
        if relative:
            encoding = encodings[index] if plan.spec.cls.per_layer else encodings[0]
            if plan.spec.cls.per_layer:
                module.posenc = encoding
            module.__dict__["_posenc"] = (encoding, context)
    handle = stack_module.register_forward_pre_hook(StackHook(model.config, context, relative))
    _remember_hook(stack_module, handle)


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def _remember_hook(module: nn.Module, handle) -> None:
    module.__dict__.setdefault("_posenc_hooks", []).append(handle)


def patch_spec(model: nn.Module) -> dict[str, Any] | None:
    """The patch recorded on `model.config`, or None for an unpatched model."""
    return getattr(getattr(model, "config", None), CONFIG_KEY, None)


def _record(model: nn.Module, plans: list[StackPlan]) -> None:
    stacks = {}
    for plan in plans:
        options = plan.encodings[0].options() if plan.encodings else dict(plan.spec.options)
        stacks[plan.stack.name] = {
            "encoding": plan.spec.encoding,
            "options": options,
            "keep_absolute": plan.spec.keep_absolute,
        }
    previous = patch_spec(model) or {}
    stacks = {**previous.get("stacks", {}), **stacks}
    setattr(model.config, CONFIG_KEY, {"version": __version__, "stacks": stacks})


def patch_model(
    model: nn.Module,
    encoding: str | None = None,
    *,
    encoder: str | dict | None = None,
    decoder: str | dict | None = None,
    keep_absolute: bool = False,
    replace: bool = False,
    max_length: int | None = None,
    tokenizer: Any = None,
    **options: Any,
) -> nn.Module:
    """Swap the position encoding of a BERT- or BART-family model in place.

    Args:
        model: a transformers model of a supported `model_type` (see `hf_posenc.ARCHITECTURES`), any task head.
        encoding: the encoding for every stack (see `hf_posenc.ENCODINGS` and `hf_posenc.ALIASES`).
        encoder, decoder: per-stack encodings for seq2seq models, as a name or `{"encoding": name, **options}`;
            they override `encoding` for their stack.
        keep_absolute: keep the learned absolute table beside a relative encoding (a hybrid). With the relative
            terms initialized to zero (the default then) the patched model starts with unchanged outputs.
        replace: allow patching a model that is already patched (the earlier patch is undone first).
        max_length: a new input limit for the patched stacks (see `hf_posenc.extension`). `learned` grows its table
            (its `init` option fills the new rows) or, with `position_ids="recurrent" | "grouped"`, maps positions
            into the trained rows; other encodings have no table and only update the limits (config, buffers,
            tokenizer, `config.posenc`).
        tokenizer: with `max_length`, the model's tokenizer, whose `model_max_length` is set to it.
        **options: the encoding's options (its keyword-only constructor arguments), e.g. `base=10000` for rope.

    Returns:
        The same model, patched.

    Raises:
        ValueError: unknown encoding or model type, out-of-range option, `none` on an encoder, an already patched
            model without `replace=True`.
        TypeError: an option the encoding does not have.
    """
    if patch_spec(model) is not None and not replace:
        raise ValueError(
            f"This model is already patched ({patch_spec(model)['stacks']}). Pass replace=True to replace the "
            "patch, or call hf_posenc.unpatch_model(model) first."
        )
    plans = plan_patch(model, encoding, encoder=encoder, decoder=decoder, keep_absolute=keep_absolute, **options)
    # --- issue 3 (extension): validate max_length / tokenizer before any change, apply after the patch ---
    from .extension import apply_length_plan, plan_for_patch  # extension imports this module

    length_plan = plan_for_patch(model, plans, max_length, tokenizer)
    # --- end issue 3 ---
    if patch_spec(model) is not None:
        _remove_patch(model)
    for plan in plans:
        _install_table(model, plan)
        _install_attention(model, plan)
    _record(model, plans)
    if length_plan is not None:  # issue 3
        apply_length_plan(model, length_plan)
    if any(plan.spec.cls.kind == "relative" for plan in plans):
        model.set_attn_implementation(BACKEND)
    return model


def unpatch_model(model: nn.Module) -> nn.Module:
    """Undo `patch_model`: restore the learned tables, remove the encodings and hooks, go back to SDPA.

    A table that the patch replaced comes back as it was; a model loaded from a patched checkpoint has no original
    table to restore, and `unpatch_model` raises a `ValueError` for it instead of leaving a model without positions.
    """
    if patch_spec(model) is None:
        raise ValueError("This model is not patched by hf_posenc.")
    arch, base = architecture_for(model), model.base_model
    for stack in arch.stacks:
        table = get_submodule(base, stack.table)
        if isinstance(table, PositionTable) and table.original is None:
            raise ValueError(f"The {stack.name} has no original table to restore (it was loaded already patched).")
    _remove_patch(model)
    if model.config._attn_implementation == BACKEND:
        model.set_attn_implementation("sdpa")
    return model


def _remove_patch(model: nn.Module) -> None:
    """Remove encodings, hooks and the record; restore each replaced table that is still at hand."""
    for stack in architecture_for(model).stacks:
        _unpatch_stack(model.base_model, stack)
    setattr(model.config, CONFIG_KEY, None)


def _unpatch_stack(base: nn.Module, stack: StackSpec) -> None:
    stack_module = get_submodule(base, stack.module)
    if stack_module is None:
        return
    table = get_submodule(base, stack.table)
    if isinstance(table, PositionTable) and table.original is not None:
        set_submodule(base, stack.table, table.original)
        # A `max_length` given with the patch raised the limit; the restored table sets it again (BART's table has
        # 2 rows more than its limit, RoBERTa's limit counts its padding rows).
        base.config.max_position_embeddings = table.original.num_embeddings - (
            row_offset(stack, base.config) if stack.table_call == "bart" else 0
        )
    for module in [stack_module, *([base.get_submodule(stack.embeddings)] if stack.embeddings else [])]:
        for handle in module.__dict__.pop("_posenc_hooks", []):
            handle.remove()
    for module in stack_module.modules():
        module.__dict__.pop("_posenc", None)
        if "posenc" in module._modules:
            del module._modules["posenc"]
