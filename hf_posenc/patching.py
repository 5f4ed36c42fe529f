"""`patch_model` and `unpatch_model`: validate everything, then mutate.

A patch is planned first (`plan_patch`): the request is parsed, every option is checked against its encoding's
schema by building the new encoding modules, and only when all of that succeeded is the model touched. A failed call
leaves the model as it was. What a patch installs, and how it is removed, is `hf_posenc.state`; the record it writes
is `hf_posenc.record`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .architectures import (
    StackSpec,
    architecture_for,
    attention_shape,
    get_submodule,
    present_stacks,
    self_attention_modules,
    set_submodule,
)
from .attention import BACKEND, attach
from .encodings import (
    ATTENTION_KEYS,
    ENCODINGS,
    AttentionOptions,
    EncodingSpec,
    PositionContext,
    PositionEncoding,
    StackDims,
    build_encoding,
    canonical_name,
    option_defaults,
)
from .extension import apply_length_plan, plan_for_patch
from .record import PatchRecord, StackRecord, read_record, write_record
from .state import (
    ExplicitPositions,
    GrowBuffers,
    PositionTable,
    StackHook,
    StackPlan,
    TablePositions,
    current_table,
    own_config,
    release_config,
    remember_hook,
    remove_patch,
)
from .trainable import remember_tokenizer_limit, restore_tokenizer_limit

# ---------------------------------------------------------------------------------------------------------------------
# Planning: parse and validate, build new modules, touch nothing
# ---------------------------------------------------------------------------------------------------------------------


def _stack_requests(
    model: nn.Module, encoding, encoder, decoder, options: dict, keep_absolute: bool, attention: dict
) -> dict[str, EncodingSpec]:
    """Turn the arguments of `patch_model` into one `EncodingSpec` per requested stack.

    Every call form reaches the one schema check in `_check_options`: the call's `**options` apply to every stack
    requested by name (`encoding` or `encoder=` / `decoder=` as a string); a per-stack dict carries its own options.
    """
    present = [s.name for s in present_stacks(model)]
    per_stack = {"encoder": encoder, "decoder": decoder}
    for name, value in per_stack.items():
        if value is not None and name not in present:
            raise ValueError(f"{type(model).__name__} has no {name} stack; it has: {present}.")
    if encoding is None and all(per_stack[name] is None for name in present):
        raise ValueError(f"Name an encoding (valid: {sorted(ENCODINGS)}), or one per stack with {present}=...")
    requests, named = {}, []
    for name in present:
        value = per_stack[name] if per_stack[name] is not None else encoding
        if value is None:
            continue  # this stack keeps its current encoding
        requests[name] = _parse_request(value, options, keep_absolute, attention)
        if isinstance(value, str):
            named.append(name)
    if options and not named:
        raise TypeError(
            f"Options {sorted(options)} were given to patch_model, but every stack has its own request dict: put them "
            "there, e.g. encoder={'encoding': 'rope', 'base': 500}."
        )
    for name, spec in requests.items():
        _check_options(spec, name, from_call=name in named and bool(options))
    return requests


def _parse_request(value, options: dict, keep_absolute: bool, attention: dict) -> EncodingSpec:
    """A stack request is a name (with the call's options), a dict `{"encoding": name, **options}` or a spec. The
    call's attention options apply to every stack; a dict's own (`attention_window`, ...) override them."""
    if isinstance(value, EncodingSpec):
        return EncodingSpec(
            canonical_name(value.encoding), dict(value.options), value.keep_absolute, {**attention, **value.attention}
        )
    if isinstance(value, dict):
        value = dict(value)
        if "encoding" not in value:
            raise ValueError(f"A per-stack request needs an 'encoding' key, got keys {sorted(value)}.")
        name, keep = value.pop("encoding"), value.pop("keep_absolute", keep_absolute)
        own = {k: value.pop(k) for k in ATTENTION_KEYS if k in value}
        return EncodingSpec(canonical_name(name), value, keep, {**attention, **own})
    if not isinstance(value, str):
        raise TypeError(f"An encoding request must be a name or a dict, got {type(value).__name__}.")
    return EncodingSpec(canonical_name(value), dict(options), keep_absolute, dict(attention))


def _check_options(spec: EncodingSpec, stack: str, from_call: bool) -> None:
    """The option schema: an option the encoding does not take is a `TypeError` naming the valid ones."""
    valid = option_defaults(spec.cls)
    unknown = sorted(set(spec.options) - set(valid))
    if unknown:
        hint = (
            " (options given to patch_model apply to every stack requested by name; give one stack its own with "
            f"{stack}={{'encoding': {spec.encoding!r}, ...}})"
            if from_call
            else ""
        )
        raise TypeError(
            f"Unknown option(s) {unknown} for encoding {spec.encoding!r} on the {stack}. "
            f"Valid options: {sorted(valid)}{hint}."
        )


def _stack_dims(model: nn.Module, stack: StackSpec, attention: list[nn.Module]) -> StackDims:
    config = model.config
    heads, head_dim = attention_shape(attention[0])
    table = current_table(model.base_model, stack)
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
    needs_table = spec.cls.keeps_learned_table or spec.keep_absolute
    if needs_table and not isinstance(table, nn.Embedding):
        raise ValueError(
            f"The {stack.name} has no learned absolute table any more (an earlier patch removed it), so "
            f"{spec.encoding!r}{' with keep_absolute=True' if spec.keep_absolute else ''} cannot be applied. "
            "Reload the original checkpoint to get the table back."
        )


def _resolve_auto_options(spec: EncodingSpec, table: nn.Module | None) -> None:
    """Resolve data-dependent defaults into values, so that the recorded spec rebuilds the same model."""
    weight = table.weight if isinstance(table, nn.Embedding) else None
    spec.options = spec.cls.resolve_options(spec.options, weight, spec.keep_absolute)


def _build_encodings(spec: EncodingSpec, dims: StackDims, layers: int) -> list[PositionEncoding]:
    if spec.cls.keeps_learned_table:
        return [build_encoding(spec.encoding, dims, spec.options)]  # validates options; nothing to attach
    first = build_encoding(spec.encoding, dims, spec.options)
    if not spec.cls.per_layer:
        return [first]
    return [first] + [build_encoding(spec.encoding, dims, spec.options) for _ in range(layers - 1)]


def _limits(model: nn.Module, stack: StackSpec, table: nn.Module | None, max_length) -> tuple[int, int]:
    """(trained length, input cap) of a stack: the learned table's length (else the config's limit), and the new
    `max_length` when one is given (validated later by `hf_posenc.extension`), else the config's limit."""
    config_limit = stack.config_limit(model.config)
    trained = stack.table_limit(table, model.config) if isinstance(table, nn.Embedding) else config_limit
    cap = max_length if isinstance(max_length, int) and not isinstance(max_length, bool) else config_limit
    return trained, max(cap, config_limit)


def _check_positive_int(name: str, value: Any, low: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r} of type {type(value).__name__}. {fix}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}. {fix}")
    return value


def attention_options(request: dict[str, Any], stack: str, trained_length: int, cap: int) -> AttentionOptions:
    """Validate a stack's attention options (`patch_model`'s `attention_scale`, `attention_scale_length`,
    `attention_window`, `global_tokens`, `global_stride`) into `AttentionOptions`; nothing is changed on error.

    Args:
        request: the raw options (keys of `ATTENTION_KEYS`; absent ones take their defaults).
        stack: the stack's name, for messages.
        trained_length: the default reference length of `attention_scale` (the original table's size).
        cap: the stack's input limit, the largest valid `attention_window`.
    """
    unknown = sorted(set(request) - set(ATTENTION_KEYS))
    if unknown:
        raise TypeError(f"Unknown attention option(s) {unknown}; valid: {list(ATTENTION_KEYS)}.")
    where = f"(on the {stack})"
    scale, length = request.get("attention_scale"), request.get("attention_scale_length")
    if scale not in (None, "log") or isinstance(scale, bool):
        raise ValueError(f"attention_scale must be None or 'log', got {scale!r} {where}.")
    if scale is None and length is not None:
        raise ValueError(f"attention_scale_length={length!r} needs attention_scale='log' {where}.")
    if scale is not None:
        fix = "It is the trained length, past which scores are sharpened by log(L) / log(reference)."
        length = _check_positive_int(
            "attention_scale_length", length if length is not None else trained_length, 2, fix
        )
    window = request.get("attention_window")
    tokens, stride = request.get("global_tokens", (0,)), request.get("global_stride")
    if window is None and (tuple(tokens or ()) != (0,) or stride is not None):
        raise ValueError(f"global_tokens / global_stride apply to local attention: pass attention_window too {where}.")
    if window is None:
        return AttentionOptions(scale, length)
    window = _check_positive_int("attention_window", window, 1, "Each token sees window // 2 tokens each side.")
    if window > cap:
        raise ValueError(
            f"attention_window={window} is larger than the input limit {cap} {where}: the window would cover every "
            f"input, i.e. full attention. Use a window <= {cap}, or omit attention_window."
        )
    if not isinstance(tokens, list | tuple) or any(
        isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in tokens
    ):
        raise ValueError(f"global_tokens must be a tuple of token indices >= 0 (e.g. (0,) for CLS), got {tokens!r}.")
    if stride is not None:
        _check_positive_int("global_stride", stride, 1, "Every global_stride-th token is global; None: none.")
    return AttentionOptions(scale, length, window, tuple(sorted(set(tokens))), stride)


def plan_patch(
    model: nn.Module,
    encoding=None,
    *,
    encoder=None,
    decoder=None,
    keep_absolute: bool = False,
    max_length: int | None = None,
    attention: dict[str, Any] | None = None,
    **options: Any,
) -> list[StackPlan]:
    """Parse and validate a patch request and build its modules, without touching `model`.

    `attention` holds `patch_model`'s attention options (`ATTENTION_KEYS`) for every requested stack; `max_length`
    the new input limit, which caps `attention_window`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_model expects a transformers model, got {type(model).__name__}.")
    arch = architecture_for(model)
    requests = _stack_requests(model, encoding, encoder, decoder, options, keep_absolute, dict(attention or {}))
    plans = []
    for stack in arch.stacks:
        if stack.name not in requests:
            continue
        stack_module = get_submodule(model.base_model, stack.module)
        attention = [m for _, m in self_attention_modules(stack_module, stack)]
        spec, table = requests[stack.name], current_table(model.base_model, stack)
        dims = _stack_dims(model, stack, attention)
        _validate(spec, stack, dims, table)
        _resolve_auto_options(spec, table)
        limits = _limits(model, stack, table, max_length)
        plan = StackPlan(stack, spec, dims, attention, _build_encodings(spec, dims, len(attention)))
        plan.options = attention_options(spec.attention, stack.name, *limits)
        plans.append(plan)
    return plans


# ---------------------------------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------------------------------


def _install_table(model: nn.Module, plan: StackPlan) -> None:
    """Replace the learned table unless the encoding keeps it (learned, or keep_absolute=True)."""
    spec, stack, base = plan.spec, plan.stack, model.base_model
    if spec.cls.keeps_learned_table or spec.keep_absolute:
        return
    original = current_table(base, stack)
    absolute = plan.encodings[0] if spec.cls.kind == "absolute" else None
    table = PositionTable(absolute, stack, stack.offset(model.config), original)
    device, dtype = _device_dtype(plan.attention[0])
    set_submodule(base, stack.table, table.to(device=device, dtype=dtype))
    if stack.embeddings:
        embeddings = base.get_submodule(stack.embeddings)
        remember_hook(embeddings, embeddings.register_forward_pre_hook(GrowBuffers(table.offset), with_kwargs=True))


def _install_attention(model: nn.Module, plan: StackPlan) -> None:
    """Attach the relative encoding to every self-attention module of the stack, and the per-forward hook."""
    stack_module = model.base_model.get_submodule(plan.stack.module)
    context = PositionContext(plan.dims.causal, plan.options)
    relative, per_layer = plan.spec.cls.kind == "relative", plan.spec.cls.per_layer
    device, dtype = _device_dtype(plan.attention[0])
    encodings = [e.to(device=device, dtype=dtype if e.learned else None) for e in plan.encodings]
    if relative and not per_layer:
        stack_module.posenc = encodings[0]  # registered once, so the shared parameters are saved once
    for index, module in enumerate(plan.attention):
        if relative:
            encoding = encodings[index] if per_layer else encodings[0]
            if per_layer:
                module.posenc = encoding
            attach(module, encoding, context)
        elif plan.options.active:
            attach(module, None, context)
    needs_backend = relative or plan.options.active
    remember_hook(
        stack_module, stack_module.register_forward_pre_hook(StackHook(model.config, context, needs_backend))
    )
    _install_explicit_positions(model, plan, context, stack_module)


def _install_explicit_positions(model: nn.Module, plan: StackPlan, context: PositionContext, stack_module) -> None:
    """Route the position ids a caller passes to the model into the stack (see `ExplicitPositions`)."""
    base, stack = model.base_model, plan.stack
    embeddings = base.get_submodule(stack.embeddings) if stack.embeddings else None
    if stack.name == "decoder" and not any(s.name == "encoder" for s in present_stacks(model)):
        # A decoder-only model (BartForCausalLM) calls its decoder directly, with the caller's `position_ids`; the
        # hook goes first, before the stack hook takes the ids.
        table = stack.table.removeprefix(stack.module + ".")
        hook = ExplicitPositions(context, stack, "position_ids", embeddings, table)
        handle = stack_module.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
    else:
        argument = "decoder_position_ids" if stack.name == "decoder" else "position_ids"
        hook = ExplicitPositions(context, stack, argument, embeddings, stack.table)
        handle = base.register_forward_pre_hook(hook, with_kwargs=True)
        # Ids requested for a stack the call did not run (BART given `encoder_outputs`, or a call that raised) must
        # not reach its next, unrelated call.
        remember_hook(stack_module, base.register_forward_hook(hook.forget, always_call=True))
        if stack.name == "encoder" and stack.table_call == "bart":
            # BART's encoder is also run alone (`generate` runs it first; a caller hands it `position_ids`): the
            # ids given to it are taken too. Not the decoder's: BartModel hands a call's `position_ids` to both.
            table = stack.table.removeprefix(stack.module + ".")
            direct = ExplicitPositions(context, stack, "position_ids", embeddings, table, given_only=True)
            remember_hook(stack_module, stack_module.register_forward_pre_hook(direct, with_kwargs=True, prepend=True))
    context.routed = True
    remember_hook(stack_module, handle)
    if stack.table_call == "bart":
        table, positions = get_submodule(base, stack.table), TablePositions(context)
        remember_hook(stack_module, table.register_forward_pre_hook(positions, with_kwargs=True, prepend=True))
        remember_hook(stack_module, table.register_forward_hook(positions.squeeze))


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def patch_spec(model: nn.Module) -> dict[str, Any] | None:
    """The patch recorded on `model.config` (the `config.posenc` block as a dict), or None for an unpatched model."""
    record = read_record(getattr(model, "config", None))
    return None if record is None else record.to_dict()


def _record(model: nn.Module, plans: list[StackPlan]) -> None:
    stacks = {}
    for plan in plans:
        options = plan.encodings[0].options() if plan.encodings else dict(plan.spec.options)
        stacks[plan.stack.name] = StackRecord(plan.spec.encoding, options, plan.spec.keep_absolute).with_attention(
            plan.options
        )
    write_record(model.config, PatchRecord(stacks))


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
    attention_scale: str | None = None,
    attention_scale_length: int | None = None,
    attention_window: int | None = None,
    global_tokens: tuple[int, ...] = (0,),
    global_stride: int | None = None,
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
        attention_scale: None, or "log": for `L` keys past `attention_scale_length`, scores are sharpened by
            `log(L) / log(attention_scale_length)` (YaRN's attention temperature, arXiv:2309.00071; LongEmbed
            appendix B). Exactly nothing changes at or below the reference. `L` is each input's own length (padding
            not counted), so an input's output does not depend on its batch. Any encoding (`learned` too: the model
            then runs in the posenc backend).
        attention_scale_length: the reference (trained) length; defaults to the original table's size.
        attention_window: local attention (Longformer, Beltagy et al. 2020): token `i` attends to token `j` only when
            `|i - j| <= attention_window // 2`, or when either is global; at most the input limit.
        global_tokens: with `attention_window`, token indices that attend to and are attended by all (CLS: `(0,)`).
        global_stride: with `attention_window`, every `global_stride`-th token is global too.
        **options: the encoding's options (its keyword-only constructor arguments), e.g. `base=10000` for rope.

    Returns:
        The same model, patched.

    Raises:
        ValueError: unknown encoding or model type, out-of-range option, `none` on an encoder, an already patched
            model without `replace=True`, a bad attention option (unknown `attention_scale`, a window outside
            `[1, input limit]`, global tokens without a window).
        TypeError: an option the encoding does not have.
    """
    previous = read_record(getattr(model, "config", None))
    if previous is not None and not replace:
        raise ValueError(
            f"This model is already patched ({previous.to_dict()['stacks']}). Pass replace=True to replace the "
            "patch, or call hf_posenc.unpatch_model(model) first."
        )
    given = dict(
        attention_scale=attention_scale,
        attention_scale_length=attention_scale_length,
        attention_window=attention_window,
        global_stride=global_stride,
    )
    attention = {k: v for k, v in given.items() if v is not None}
    if global_tokens != (0,):
        attention["global_tokens"] = global_tokens
    plans = plan_patch(
        model,
        encoding,
        encoder=encoder,
        decoder=decoder,
        keep_absolute=keep_absolute,
        max_length=max_length,
        attention=attention,
        **options,
    )
    length_plan = plan_for_patch(model, plans, max_length, tokenizer)
    # Validated: from here on the model changes.
    if previous is not None:
        remove_patch(model)
    own_config(model)
    for plan in plans:
        _install_table(model, plan)
        _install_attention(model, plan)
    _record(model, plans)
    if length_plan is not None:
        remember_tokenizer_limit(model, tokenizer)  # `unpatch_model` gives it back
        apply_length_plan(model, length_plan)
    if any(plan.spec.cls.kind == "relative" or plan.options.active for plan in plans):
        model.set_attn_implementation(BACKEND)
    return model


def unpatch_model(model: nn.Module) -> nn.Module:
    """Undo `patch_model`: restore the learned tables, remove the encodings and hooks, go back to SDPA.

    A table that the patch replaced comes back as it was, and so does the `model_max_length` of a tokenizer given
    to `patch_model(max_length=..., tokenizer=...)` (if it is still alive). A model loaded from a patched checkpoint
    has no original table to restore, and `unpatch_model` raises a `ValueError` for it instead of leaving a model
    without positions.
    """
    if read_record(getattr(model, "config", None)) is None:
        raise ValueError("This model is not patched by hf_posenc.")
    base = model.base_model
    for stack in architecture_for(model).stacks:
        table = get_submodule(base, stack.table)
        if isinstance(table, PositionTable) and table.original is None:
            raise ValueError(f"The {stack.name} has no original table to restore (it was loaded already patched).")
    remove_patch(model)
    release_config(model)
    restore_tokenizer_limit(model)
    if model.config._attn_implementation == BACKEND:
        model.set_attn_implementation("sdpa")
    return model
