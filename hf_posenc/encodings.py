"""The position encodings: one registry and one small class per encoding.

This module holds the math only; it imports nothing from transformers. Two kinds of encoding exist:

* *absolute* encodings produce vectors that are added to the token embeddings (`embed(position_ids)`);
* *relative* encodings act inside self-attention: `attend(query, key, positions, context)` returns the (possibly
  rotated) query and key, an additive score bias, and optionally a value term (Shaw et al. 2018; NEZHA).

The keyword-only arguments of each constructor are the encoding's option schema: `patch_model(model, "rope", base=500)`
passes `base=500` to `RotaryEncoding.__init__`, and an unknown option is a `TypeError` raised before the model changes.
Derived tables (sinusoids, inverse frequencies, slopes) are non-persistent buffers; only learned tensors are
parameters and reach the checkpoint.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from . import relative_terms as terms
from .blockwise import BandedValue, RowTerms
from .option_checks import check_bool, check_choice, check_finite_float, check_int, check_optional_int

ENCODINGS: dict[str, type[PositionEncoding]] = {}
"""Canonical encoding name -> class. Filled by `register_encoding`."""

ALIASES: dict[str, str] = {
    "relative": "relative_key",
    "shaw": "relative_key",
    "huang": "relative_key_query",
    "absolute": "learned",
    "rotary": "rope",
    "t5_bias": "t5",
    "nope": "none",
}
"""Alias -> canonical name. The one place where aliases are documented."""


def register_encoding(name: str) -> Callable[[type[PositionEncoding]], type[PositionEncoding]]:
    """Class decorator that adds an encoding to `ENCODINGS` under `name`; duplicates are refused."""

    def decorator(cls: type[PositionEncoding]) -> type[PositionEncoding]:
        if name in ENCODINGS or name in ALIASES:
            raise ValueError(f"An encoding named {name!r} is already registered ({ENCODINGS.get(name)}).")
        cls.name = name
        ENCODINGS[name] = cls
        return cls

    return decorator


def canonical_name(name: str) -> str:
    """Resolve an alias to its canonical encoding name, or raise a `ValueError` listing the valid names."""
    if not isinstance(name, str):
        raise TypeError(f"An encoding name must be a string, got {type(name).__name__}.")
    name = ALIASES.get(name, name)
    if name not in ENCODINGS:
        aliases = ", ".join(f"{a!r} -> {c!r}" for a, c in sorted(ALIASES.items()))
        raise ValueError(f"Unknown encoding {name!r}. Valid encodings: {sorted(ENCODINGS)} (aliases: {aliases}).")
    return name


def option_defaults(cls: type[PositionEncoding]) -> dict[str, Any]:
    """The option schema of an encoding class: its keyword-only constructor arguments and their defaults."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


@dataclass(frozen=True)
class StackDims:
    """What an encoding needs to know about the attention stack it is attached to."""

    hidden_size: int
    num_heads: int
    head_dim: int
    causal: bool
    max_length: int
    initializer_range: float = 0.02


@dataclass
class Positions:
    """Query and key positions of one attention call: long tensors of shape (Q,) / (K,) or (B, Q) / (B, K)."""

    query: torch.Tensor
    key: torch.Tensor
    offset: int | None = None  # default positions: query row i is at position offset + i, key column j at j

    @classmethod
    def default(cls, q_len: int, k_len: int, device: torch.device) -> Positions:
        """Keys are `0..k_len-1` and queries the last `q_len` of them, which is right for cached decoding."""
        key = torch.arange(k_len, device=device)
        return cls(query=key[k_len - q_len :], key=key, offset=k_len - q_len)

    def relative(self) -> torch.Tensor:
        """Signed distances `query - key`, shape (Q, K) or (B, Q, K)."""
        return self.query.unsqueeze(-1) - self.key.unsqueeze(-2)


@dataclass(frozen=True)
class AttentionOptions:
    """How a patched stack attends, beside its position encoding (validated by `hf_posenc.patching`).

    Attributes:
        scale: None, or "log": for a key length `K` above `scale_length` the scores `q.k` are sharpened by
            `log(K) / log(scale_length)` (the attention temperature of YaRN, Peng et al. 2023, arXiv:2309.00071;
            LongEmbed appendix B, Zhu et al. 2024, arXiv:2404.12096; Chiang & Cholak 2022, arXiv:2202.12172).
            At or below `scale_length` nothing changes. `K` is the call's key length, padding included: in a
            padded batch every input takes the factor of the longest one.
        scale_length: the reference length (the trained length).
        window: None (full attention), or local attention: token `i` attends to token `j` when `|i - j| <= window // 2`
            (token indices, not position ids; Longformer, Beltagy et al. 2020, arXiv:2004.05150).
        global_tokens: with a window, the token indices that attend to, and are attended by, every token.
        global_stride: with a window, every `global_stride`-th token (index 0, N, 2N, ...) is global too; None: none.
    """

    scale: str | None = None
    scale_length: int | None = None
    window: int | None = None
    global_tokens: tuple[int, ...] = (0,)
    global_stride: int | None = None

    @property
    def active(self) -> bool:
        """Whether the stack needs the posenc backend for these options."""
        return self.scale is not None or self.window is not None

    def scale_factor(self, key_length: int) -> float:
        """The factor on `q.k` for `key_length` keys: 1.0 at or below the reference length."""
        if self.scale is None or key_length <= self.scale_length:
            return 1.0
        return math.log(key_length) / math.log(self.scale_length)

    def global_index(self, index: torch.Tensor) -> torch.Tensor:
        """Which token indices (a long tensor) are global."""
        tokens = torch.tensor(self.global_tokens, dtype=index.dtype, device=index.device)
        is_global = (index.unsqueeze(-1) == tokens).any(-1)
        return is_global | (index % self.global_stride == 0) if self.global_stride else is_global

    def band(self, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
        """The (Q, K) boolean local + global pattern; queries are the last `q_len` of the `k_len` tokens."""
        keys = torch.arange(k_len, device=device)
        queries = keys[k_len - q_len :]
        near = (queries.unsqueeze(-1) - keys).abs() <= self.window // 2
        return near | self.global_index(queries).unsqueeze(-1) | self.global_index(keys)


ATTENTION_KEYS = ("attention_scale", "attention_scale_length", "attention_window", "global_tokens", "global_stride")
"""The `patch_model` arguments that set a stack's `AttentionOptions` (also accepted in a per-stack request dict)."""


class PositionContext:
    """Per-stack memo of tables that every layer of one forward pass can share (biases, cos/sin, indices).

    A forward pre-hook on the stack calls `clear()`, so tables are computed once per forward, not once per layer, and
    never outlive the autograd graph they belong to. `position_ids` holds the logical positions a caller passed to
    the model for this stack in this forward (`hf_posenc.state.ExplicitPositions` requests them, the stack's hook
    takes them), else None; `options` the stack's attention options.
    """

    def __init__(self, causal: bool, options: AttentionOptions | None = None) -> None:
        self.causal = causal
        self.options = options if options is not None else AttentionOptions()
        self.position_ids: torch.Tensor | None = None
        self.requested: torch.Tensor | None = None  # set by the model's hook, taken by the stack's
        self.routed = False  # whether a model hook routes position ids here (else the backend reads its kwargs)
        self.cache: dict[Hashable, Any] = {}
        # Under gradient checkpointing a layer's forward is replayed in backward; a learned table shared through
        # this memo would be computed in layer 0's replay region and reused elsewhere, which breaks the replay's
        # saved-tensor bookkeeping. The stack hook sets this flag then, and learned tables are rebuilt per layer.
        self.share_learned = True

    def memo(self, key: Hashable, compute: Callable[[], Any], learned: bool = False) -> Any:
        """Return the cached value for `key`, computing it on first use in this forward pass.

        `learned=True` marks a value that depends on parameters: it is not shared while `share_learned` is off.
        """
        if learned and not self.share_learned:
            return compute()
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def clear(self) -> None:
        self.cache.clear()


@dataclass
class AttentionTerms:
    """What a relative encoding contributes to one attention call.

    Attributes:
        query, key: the (possibly rotated) query and key, (B, H, Q, D) / (B, H, K, D).
        bias: an additive score bias broadcastable to (B, H, Q, K), in units of the scaled scores, or None.
        shared_bias: True when `bias` is the same object for every layer of the stack (it may then be merged with the
            attention mask once per forward).
        rows: the terms as a recipe for any block of query rows (`hf_posenc.blockwise.RowTerms`): a bias that needs
            gradients or depends on the query, a value term (Shaw et al., NEZHA). The backend then never keeps a
            (B, H, Q, K) tensor for backward. When `bias` is also given, it is used whenever nothing is
            differentiated.
    """

    query: torch.Tensor
    key: torch.Tensor
    bias: torch.Tensor | None = None
    shared_bias: bool = False
    rows: RowTerms | None = None


def positions_key(positions: Positions) -> Hashable:
    """A memo key for a `Positions`: default positions are keyed by shape, explicit ones by tensor identity."""
    return (id(positions.query), id(positions.key), tuple(positions.query.shape), tuple(positions.key.shape))


class PositionEncoding(nn.Module):
    """Base class. Subclasses declare their kind and what they need, and take options as keyword-only arguments."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "relative"  # "absolute", "relative" or "none"
    learned: ClassVar[bool] = False  # has parameters that reach the checkpoint
    per_layer: ClassVar[bool] = False  # one instance per attention layer (else one shared by the stack)
    max_length_bound: ClassVar[bool] = False  # cannot run past its table (only the learned absolute table)
    keeps_learned_table: ClassVar[bool] = False  # the patch leaves the checkpoint's learned table in place
    citation: ClassVar[str] = ""
    step0: ClassVar[str] = ""  # what patching a pretrained model with this encoding does before any training

    def __init__(self, dims: StackDims) -> None:
        super().__init__()
        self.dims = dims

    def derived_tables(self) -> dict[str, torch.Tensor]:
        """Tables computed from the options (fp32), kept as non-persistent buffers; none by default."""
        return {}

    def _register_derived_tables(self) -> None:
        for name, table in self.derived_tables().items():
            self.register_buffer(name, table, persistent=False)

    def _apply(self, fn, recurse: bool = True):
        """After `.to()` / `.half()`, recompute derived tables in fp32 on the new device.

        A cast to bf16 would round inverse frequencies and slopes (RoPE angles at position 2000 would be off by
        whole radians); transformers' rotary modules keep them in fp32 for the same reason.
        """
        super()._apply(fn, recurse)
        for name, table in self.derived_tables().items():
            setattr(self, name, table.to(getattr(self, name).device))
        return self

    @classmethod
    def resolve_options(
        cls, options: dict[str, Any], table: torch.Tensor | None, keep_absolute: bool
    ) -> dict[str, Any]:
        """Data-dependent defaults resolved into values, so that the recorded options rebuild the same model.

        `table` is the weight of the stack's learned table (None when an earlier patch removed it). Relative
        encodings with an `init` option start at zero beside a kept table (the patched model then starts with the
        unpatched outputs) and from a normal init otherwise.
        """
        resolved = dict(options)
        if cls.kind == "relative" and "init" in option_defaults(cls) and resolved.get("init", "auto") == "auto":
            resolved["init"] = "zeros" if keep_absolute else "normal"
        return resolved

    def options(self) -> dict[str, Any]:
        """The resolved options, JSON-serializable, such that `type(self)(dims, **self.options())` rebuilds it."""
        return {name: getattr(self, name) for name in option_defaults(type(self))}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


RELATIVE_INITS = ("auto", "normal", "zeros")

MAX_POSITIONS = 2**20
"""Largest distance, bucket count, length or group size an option may name: a million positions is past any context
these models run, tables of that many rows take gigabytes, and larger ints overflow torch's sizes and Python floats."""

MAX_BASE = 1e12
"""Largest sinusoid / RoPE base: past it every frequency but the first is below 1e-12 per token in fp32 (no position
signal left), and NTK's rescaled base would overflow a float."""


def _check_init(encoding: str, init: Any) -> str:
    return check_choice(encoding, "init", init, RELATIVE_INITS)


def _init_table(weight: torch.Tensor, init: str, std: float) -> None:
    """`zeros` gives a function-preserving start (with keep_absolute=True); `normal` matches BERT's own init."""
    with torch.no_grad():
        if init == "zeros":
            weight.zero_()
        else:
            weight.normal_(0.0, std)


def sinusoid_table(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. 2017: `PE[p, 2i] = sin(p / base^(2i/d))`, `PE[p, 2i+1] = cos(p / base^(2i/d))`, interleaved.

    Computed in fp32; `positions` has any shape, the result has one more dimension of size `dim`.
    """
    inv_freq = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return table[..., :dim]


# ---------------------------------------------------------------------------------------------------------------------
# Absolute encodings
# ---------------------------------------------------------------------------------------------------------------------


# Inits of the new rows when a learned table grows: (trained rows (T, D), new length N) -> (N, D), in the table's
# dtype.
# They are the `init` option of `learned`, so they live beside it; `hf_posenc.extension` applies them.


def copy_rows(trained: torch.Tensor, length: int) -> torch.Tensor:
    """Tile the trained rows: position `p` gets row `p mod T` (Beltagy et al. 2020, Longformer, arXiv:2004.05150).

    Longformer extended RoBERTa from 512 to 4096 positions this way and reports the copy init as crucial: attention
    heads keep their strong local position patterns, so fine-tuning converges much faster than from random rows.
    The trained rows are kept untouched.
    """
    index = torch.arange(trained.shape[0], length, device=trained.device) % trained.shape[0]
    return torch.cat([trained, trained[index]])


def interpolate_rows(trained: torch.Tensor, length: int) -> torch.Tensor:
    """Linear interpolation of the whole table onto `length` positions (position interpolation, Chen et al. 2023,
    arXiv:2306.15595; LongEmbed applies it to absolute tables). The first and last rows are kept (align_corners);
    every other row moves, so even short inputs change: the model sees positions at a finer spacing."""
    grid = trained.float().T.unsqueeze(0)  # (1, D, T)
    stretched = nn.functional.interpolate(grid, size=length, mode="linear", align_corners=True)
    return stretched[0].T.to(trained.dtype)


def sinusoidal_rows(trained: torch.Tensor, length: int) -> torch.Tensor:
    """New rows from the sinusoids of Vaswani et al. 2017 (arXiv:1706.03762), scaled to the trained table.

    Each dimension gets the trained rows' mean and standard deviation (`mean_d + std_d * sqrt(2) * sin/cos(...)`,
    the sinusoids having a standard deviation of about 1/sqrt(2)), so the embedding LayerNorm sees vectors of the size
    it was trained on. The trained rows are kept untouched.
    """
    stats = trained.float()
    mean, std = stats.mean(0), stats.std(0, unbiased=False)
    positions = torch.arange(trained.shape[0], length, device=trained.device)
    waves = sinusoid_table(positions, trained.shape[1]) * 2**0.5
    return torch.cat([trained, (mean + std * waves).to(trained.dtype)])


def random_rows(trained: torch.Tensor, length: int) -> torch.Tensor:
    """New rows drawn from `N(0, s^2)`, `s` the standard deviation of the trained rows: the weak baseline (Longformer
    compares against it). Uses torch's global generator: seed it with `torch.manual_seed` to reproduce."""
    std = trained.float().std().item()
    fresh = torch.randn(length - trained.shape[0], trained.shape[1], device=trained.device) * std
    return torch.cat([trained, fresh.to(trained.dtype)])


EXTENSION_INITS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "copy": copy_rows,
    "interpolate": interpolate_rows,
    "sinusoidal": sinusoidal_rows,
    "random": random_rows,
}
"""How `extend_positions` fills new rows of a learned table: init name -> function (the `init` option of `learned`)."""

# Inference-time position maps of the learned table (length extension without new rows).
POSITION_ID_MAPS = ("recurrent", "grouped")
"""LongEmbed's position maps into the trained rows (implemented in `hf_posenc.state.PositionMap`)."""


@register_encoding("learned")
class LearnedAbsolute(PositionEncoding):
    """The checkpoint's own learned absolute table, left in place (the identity patch; the base for extension).

    `init` only matters when `max_length` grows the table (see `hf_posenc.extend_positions`). `position_ids`
    ("recurrent": `p mod T`, "grouped": `p // group_size`) instead maps positions past the trained length `T` into the
    trained rows at inference time, with no new rows (LongEmbed, Zhu et al. 2024); it needs `max_length`, and
    `group_size` defaults to `ceil(max_length / T)`.
    """

    kind = "absolute"
    learned = True
    max_length_bound = True
    keeps_learned_table = True
    citation = "Devlin et al. 2019, BERT (arXiv:1810.04805)"
    step0 = "identity: outputs are bit-identical to the unpatched model"

    def __init__(
        self, dims: StackDims, *, init: str = "copy", position_ids: str | None = None, group_size: int | None = None
    ) -> None:
        super().__init__(dims)
        init = check_choice(self.name, "init", init, EXTENSION_INITS)
        # Position maps (LongEmbed): past the trained length, positions map into the trained rows.
        position_ids = check_choice(self.name, "position_ids", position_ids, POSITION_ID_MAPS, optional=True)
        group_size = check_optional_int(self.name, "group_size", group_size, low=2, high=MAX_POSITIONS)
        _check(group_size is None or position_ids == "grouped", "group_size only applies to position_ids='grouped'.")
        self.position_ids, self.group_size = position_ids, group_size
        self.init = init


@register_encoding("sinusoidal")
class SinusoidalAbsolute(PositionEncoding):
    """Fixed sinusoids of Vaswani et al. 2017 added to the token embeddings; no parameters, any length.

    `scale` multiplies the table. The default `"auto"` is resolved at patch time to the standard deviation of the
    learned table it replaces divided by the sinusoids' own (1/sqrt(2)), so the embedding LayerNorm sees inputs of the
    size it was trained on; without a table to match it resolves to 1.0.
    """

    kind = "absolute"
    citation = "Vaswani et al. 2017, Attention Is All You Need (arXiv:1706.03762)"
    step0 = "replaces the learned table by sinusoids of the same scale: order must be re-learned in fine-tuning"

    def __init__(self, dims: StackDims, *, base: float = 10000.0, scale: float | str = "auto") -> None:
        super().__init__(dims)
        self.base = check_finite_float(self.name, "base", base, low=1.0, high=MAX_BASE, low_open=True)
        # The table is added to token embeddings of order one: a scale past 100 would drown them.
        if not (isinstance(scale, str) and scale == "auto"):
            scale = check_finite_float(self.name, "scale", scale, low=0.0, high=100.0, low_open=True)
        self.scale = scale

    @classmethod
    def resolve_options(
        cls, options: dict[str, Any], table: torch.Tensor | None, keep_absolute: bool
    ) -> dict[str, Any]:
        """`scale="auto"`: the learned table's standard deviation over the sinusoids' own (1/sqrt(2))."""
        resolved = dict(options)
        if resolved.get("scale", "auto") == "auto":
            learned_std = table.detach().float().std().item() if table is not None else None
            resolved["scale"] = learned_std * 2**0.5 if learned_std else 1.0
        return resolved

    def embed(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Vectors for `position_ids` (any shape), fp32, shape `(*position_ids.shape, hidden_size)`."""
        scale = 1.0 if self.scale == "auto" else self.scale
        return sinusoid_table(position_ids, self.dims.hidden_size, self.base) * scale


@register_encoding("none")
class NoPosition(PositionEncoding):
    """No position information at all (Kazemnejad et al. 2023, NoPE). Causal decoders only.

    A causal mask already breaks permutation symmetry, so a decoder can infer positions; a bidirectional encoder
    without positions is a bag of words, so `none` is refused there.
    """

    kind = "none"
    citation = "Kazemnejad et al. 2023, The Impact of Positional Encoding on Length Generalization (arXiv:2305.19466)"
    step0 = "removes the learned table: the decoder must re-learn order from causality"


# ---------------------------------------------------------------------------------------------------------------------
# Relative encodings
# ---------------------------------------------------------------------------------------------------------------------


class RelativeEncoding(PositionEncoding):
    """A relative encoding acts inside attention through `attend`."""

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, positions: Positions, context: PositionContext
    ) -> AttentionTerms:
        raise NotImplementedError


def _clipped_index(positions: Positions, max_distance: int, context: PositionContext) -> torch.Tensor:
    """`clip(i - j, -k, k) + k`, shape (Q, K) or (B, Q, K), shared by every layer of the forward pass."""

    def compute() -> torch.Tensor:
        return positions.relative().clamp(-max_distance, max_distance) + max_distance

    return context.memo(("clipped_index", max_distance, positions_key(positions)), compute)


def _window(positions: Positions, key: torch.Tensor, max_distance: int) -> dict[str, int] | None:
    """The static arguments of the window forms for default positions; None for explicit positions (gather forms)."""
    if positions.offset is None:
        return None
    return {"max_distance": max_distance, "k_len": key.shape[-2], "offset": positions.offset}


@register_encoding("relative_key")
class ShawRelativeKey(RelativeEncoding):
    """Shaw et al. 2018 relative keys, as BERT's former `position_embedding_type="relative_key"`.

    A learned vector `r_d` per clipped distance `d = clip(i - j, -max_distance, max_distance)`, one table per layer;
    the score gains `q_i . r_d` (before the 1/sqrt(head_dim) scaling, as in BERT). The default `max_distance` is the
    model's `max_position_embeddings - 1`, which is BERT's table of `2 * max_position_embeddings - 1` rows.
    """

    learned = True
    per_layer = True
    citation = "Shaw et al. 2018, Self-Attention with Relative Position Representations (arXiv:1803.02155)"
    step0 = "adds q.r terms (random unless init='zeros'); the absolute table is dropped unless keep_absolute=True"

    def __init__(self, dims: StackDims, *, max_distance: int | None = None, init: str = "auto") -> None:
        super().__init__(dims)
        max_distance = check_optional_int(self.name, "max_distance", max_distance, low=1, high=MAX_POSITIONS)
        max_distance = dims.max_length - 1 if max_distance is None else max_distance
        self.max_distance, self.init = max_distance, _check_init(self.name, init)
        self.distance_embedding = nn.Embedding(2 * max_distance + 1, dims.head_dim)
        self.reset_parameters(init)

    def reset_parameters(self, init: str) -> None:
        _init_table(self.distance_embedding.weight, "normal" if init == "auto" else init, self.dims.initializer_range)

    def attend(self, query, key, positions, context):
        table, window = self.distance_embedding.weight, _window(positions, key, self.max_distance)
        if window is not None:
            bias = partial(terms.window_distance_bias, **window)
            return AttentionTerms(query, key, rows=RowTerms(inputs=(table,), bias=bias, max_rows=terms.WINDOW_ROWS))
        index = _clipped_index(positions, self.max_distance, context)
        return AttentionTerms(query, key, rows=RowTerms(inputs=(table, index), bias=terms.query_distance_bias))


@register_encoding("relative_key_query")
class HuangRelativeKeyQuery(ShawRelativeKey):
    """Huang et al. 2020 (method 4), as BERT's former `relative_key_query`: the score gains `q_i . r_d + k_j . r_d`."""

    citation = (
        "Huang et al. 2020, Improve Transformer Models with Better Relative Position Embeddings (arXiv:2009.13658)"
    )
    step0 = "adds q.r + k.r terms (random unless init='zeros'); absolute table dropped unless keep_absolute=True"

    def attend(self, query, key, positions, context):
        table, window = self.distance_embedding.weight, _window(positions, key, self.max_distance)
        if window is not None:
            bias = partial(terms.window_query_key_bias, **window)
            rows = RowTerms(inputs=(table,), prepare=terms.key_state, bias=bias, max_rows=terms.WINDOW_ROWS)
            return AttentionTerms(query, key, rows=rows)
        index = _clipped_index(positions, self.max_distance, context)
        rows = RowTerms(inputs=(table, index), prepare=terms.key_distance_scores, bias=terms.query_key_distance_bias)
        return AttentionTerms(query, key, rows=rows)


@register_encoding("nezha")
class NezhaFunctionalRelative(RelativeEncoding):
    """NEZHA's functional relative encoding (Wei et al. 2019): fixed sinusoids of the clipped distance on keys and
    values; no parameters.

    As in NEZHA's code, the distance is `d = clip(j - i, -k, k)` and the vector is the sinusoid of row `d + k` of a
    `(2k + 1, head_dim)` table; the score gains `q_i . r_d` (before scaling) and the output gains
    `sum_j p_ij r_d`. The value term needs the attention probabilities, so this encoding runs attention explicitly.
    """

    citation = (
        "Wei et al. 2019, NEZHA: Neural Contextualized Representation for Chinese Language Understanding "
        "(arXiv:1909.00204)"
    )
    step0 = "adds fixed q.r and p.r terms; the absolute table is dropped unless keep_absolute=True"

    def __init__(self, dims: StackDims, *, max_distance: int = 64) -> None:
        super().__init__(dims)
        self.max_distance = check_int(self.name, "max_distance", max_distance, low=1, high=MAX_POSITIONS)
        self._register_derived_tables()

    def derived_tables(self) -> dict[str, torch.Tensor]:
        return {"table": sinusoid_table(torch.arange(2 * self.max_distance + 1), self.dims.head_dim)}

    def attend(self, query, key, positions, context):
        # NEZHA indexes by j - i, the opposite sign of BERT's relative_key: flip the table (or the index).
        k, window = self.max_distance, _window(positions, key, self.max_distance)
        if window is not None:
            flipped = self.table.flip(0)
            bias, value = partial(terms.window_distance_bias, **window), partial(terms.window_value_term, **window)
            banded = BandedValue(partial(terms.band_columns, **window), partial(terms.banded_value_term, **window))
            band_rows = max(32, 1 << (2 * k - 1).bit_length())  # about the band's own width, 2k
            rows = RowTerms(inputs=(flipped,), bias=bias, value=value, banded_value=banded, max_rows=band_rows)
            return AttentionTerms(query, key, rows=rows)
        index = context.memo(
            ("nezha_index", k, positions_key(positions)), lambda: 2 * k - _clipped_index(positions, k, context)
        )
        rows = RowTerms(inputs=(self.table, index), bias=terms.query_distance_bias, value=terms.distance_value_term)
        return AttentionTerms(query, key, rows=rows)


def t5_relative_buckets(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each `relative = key - query` distance (Raffel et al. 2020; transformers' T5Attention).

    Half the buckets are exact small distances, the rest logarithmically larger ones up to `max_distance`; in
    bidirectional mode, half the buckets are for keys after the query.
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    log_ratio = torch.log(relative.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + log_ratio * (num_buckets - max_exact)).long().clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


@register_encoding("t5")
class T5RelativeBias(RelativeEncoding):
    """T5's bucketed relative bias: a learned scalar per head and bucket, shared by the layers of a stack.

    Buckets are bidirectional in encoders and causal in decoders. The bias is computed once per forward pass.
    """

    learned = True
    citation = "Raffel et al. 2020, Exploring the Limits of Transfer Learning with T5 (arXiv:1910.10683)"
    step0 = "adds a learned per-head bias (random unless init='zeros'); absolute table dropped unless keep_absolute"

    def __init__(self, dims: StackDims, *, num_buckets: int = 32, max_distance: int = 128, init: str = "auto") -> None:
        super().__init__(dims)
        # Half the buckets (a quarter in encoders) are exact distances; the log-spaced rest need max_distance past
        # them.
        num_buckets = check_int(self.name, "num_buckets", num_buckets, low=4, high=MAX_POSITIONS)
        max_distance = check_int(self.name, "max_distance", max_distance, low=num_buckets // 2 + 1, high=MAX_POSITIONS)
        self.num_buckets, self.max_distance, self.init = num_buckets, max_distance, _check_init(self.name, init)
        self.relative_attention_bias = nn.Embedding(num_buckets, dims.num_heads)
        self.reset_parameters(init)

    def reset_parameters(self, init: str) -> None:
        _init_table(
            self.relative_attention_bias.weight, "normal" if init == "auto" else init, self.dims.initializer_range
        )

    def _buckets(self, relative: torch.Tensor) -> torch.Tensor:
        """The bucket of each signed distance `i - j` (T5's convention is key - query, hence the minus)."""
        return t5_relative_buckets(-relative, not self.dims.causal, self.num_buckets, self.max_distance)

    def _bias(self, positions: Positions, dtype: torch.dtype) -> torch.Tensor:
        """The whole (1 | B, H, Q, K) bias, contiguous (the fused kernel would copy a strided one in every layer)."""
        if positions.offset is None:
            return terms.heads_first(self.relative_attention_bias(self._buckets(positions.relative()))).to(dtype)
        q_len, k_len = positions.query.shape[-1], positions.key.shape[-1]
        distances = terms.descending_distances(q_len, k_len, positions.offset, positions.key.device)
        per_distance = self.relative_attention_bias(self._buckets(distances)).T  # (H, Q + K - 1), one per distance
        return terms.toeplitz_rows(per_distance, slice(0, q_len), q_len, k_len).unsqueeze(0).to(dtype).contiguous()

    def attend(self, query, key, positions, context):
        # The whole bias is computed once per forward pass and without gradients: the backend uses it when nothing is
        # differentiated, and for the forward blocks otherwise. Gradients come from `bias` rows recomputed block by
        # block in backward. It is never kept across passes: no key proves the weights unchanged (fused optimizers,
        # `.data` edits and dtype round trips change them without bumping `weight._version`).
        weight = self.relative_attention_bias.weight
        with torch.no_grad():
            if positions.offset is None:
                memo_key = ("t5", positions_key(positions), query.dtype)
            else:
                memo_key = ("t5_default", *_default_key(positions, query))
            bias = context.memo(memo_key, lambda: self._bias(positions, query.dtype))
        return AttentionTerms(
            query, key, bias=bias, shared_bias=True, rows=self._rows(weight, positions, bias, context)
        )

    def _rows(self, weight, positions: Positions, bias: torch.Tensor, context: PositionContext) -> RowTerms:
        if positions.offset is None:
            buckets = context.memo(
                ("t5_buckets", positions_key(positions)), lambda: self._buckets(positions.relative())
            )
            return RowTerms(inputs=(weight, buckets), bias=terms.bucket_bias, forward_bias=bias)
        q_len, k_len = positions.query.shape[-1], positions.key.shape[-1]
        distances = terms.descending_distances(q_len, k_len, positions.offset, positions.key.device)
        buckets = context.memo(
            ("t5_distance_buckets", q_len, k_len, positions.offset), lambda: self._buckets(distances)
        )
        toeplitz = partial(terms.toeplitz_bias, q_len=q_len, k_len=k_len)
        return RowTerms(inputs=(weight, buckets), prepare=terms.bucket_values, bias=toeplitz, forward_bias=bias)


def _default_key(positions: Positions, query: torch.Tensor) -> tuple:
    return (positions.query.shape[-1], positions.key.shape[-1], positions.offset, query.dtype, query.device)


def _cached(module: nn.Module, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A bias kept on `module` across forward passes (the last key only). Recomputing an (H, L, L) bias costs about as
    much as a layer at L = 2048; keeping it costs its memory between passes.

    Only for tables that depend on nothing but the key and non-learned buffers derived from the options (ALiBi): a
    table computed from a learned parameter must go through the per-forward `PositionContext.memo` instead, since no
    key can prove a parameter unchanged between passes.
    """
    cached = module.__dict__.get("_bias_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    module.__dict__["_bias_cache"] = None  # free the old one before computing the new one
    value = compute()
    module.__dict__["_bias_cache"] = (key, value)
    return value


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The head slopes of Press et al. 2022: a geometric sequence starting at 2^(-8/n); for a head count that is not a
    power of two, the slopes of the next power of two are interleaved in, as in the paper's code and BLOOM."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base ** (2 * i + 1) for i in range(min(closest, num_heads - closest))]
    return torch.tensor(slopes, dtype=torch.float32)


@register_encoding("alibi")
class ALiBi(RelativeEncoding):
    """Press et al. 2022 linear biases `-m_h |i - j|`: symmetric for bidirectional attention; in decoders the causal
    mask removes `j > i`, which leaves the paper's `-m_h (i - j)`. No parameters; one bias per forward pass."""

    citation = "Press et al. 2022, Train Short, Test Long: Attention with Linear Biases (arXiv:2108.12409)"
    step0 = "adds a fixed distance penalty; the absolute table is dropped unless keep_absolute=True"

    def __init__(self, dims: StackDims, *, slope_scale: float = 1.0) -> None:
        super().__init__(dims)
        # Past 1e4 a one-token distance costs thousands of logits (attention is exactly local already) and long
        # distances overflow half precision.
        self.slope_scale = check_finite_float(self.name, "slope_scale", slope_scale, low=0.0, high=1e4, low_open=True)
        self._register_derived_tables()

    def derived_tables(self) -> dict[str, torch.Tensor]:
        return {"slopes": alibi_slopes(self.dims.num_heads) * self.slope_scale}

    def _bias(self, positions: Positions, dtype: torch.dtype) -> torch.Tensor:
        if positions.offset is None:
            distance = positions.relative().abs().to(torch.float32)  # (Q, K) or (B, Q, K)
        else:  # default positions: straight from float aranges, one (Q, K) pass fewer
            query = positions.query.to(torch.float32)
            distance = (query.unsqueeze(-1) - positions.key.to(torch.float32)).abs_()
        distance = distance.unsqueeze(0) if distance.dim() == 2 else distance
        return torch.mul(distance.unsqueeze(1), -self.slopes.view(1, -1, 1, 1)).to(dtype)

    def attend(self, query, key, positions, context):
        if positions.offset is None:
            memo_key = ("alibi", positions_key(positions), query.dtype)
            bias = context.memo(memo_key, lambda: self._bias(positions, query.dtype))
        else:  # a constant of the lengths: kept across forward passes
            bias = _cached(self, _default_key(positions, query), lambda: self._bias(positions, query.dtype))
        return AttentionTerms(query, key, bias=bias, shared_bias=True)


ROPE_SCALINGS = (None, "linear", "ntk", "yarn")


def _yarn_inv_freq(inv_freq: torch.Tensor, factor: float, original_max_length: int, dim: int, base: float):
    """YaRN (Peng et al. 2023): interpolate low frequencies, keep high ones, blend linearly in between
    (beta_fast=32, beta_slow=1), as transformers' `_compute_yarn_parameters`."""

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original_max_length / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(32)), 0)
    high = min(math.ceil(correction_dim(1)), dim - 1)
    ramp = (torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)
    extrapolation_weight = 1 - ramp.clamp(0, 1)
    return inv_freq / factor * (1 - extrapolation_weight) + inv_freq * extrapolation_weight


@register_encoding("rope")
class RotaryEncoding(RelativeEncoding):
    """Rotary position embedding (Su et al. 2021) of queries and keys, in transformers' rotate-half layout.

    Scaling for lengths past the trained one: `linear` position interpolation (Chen et al. 2023), `ntk` (NTK-aware
    base change, bloc97 2023), `yarn` (Peng et al. 2023, with its attention temperature). `original_max_length`
    defaults to the model's `max_position_embeddings`.
    """

    citation = "Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding (arXiv:2104.09864)"
    step0 = "rotates queries and keys: pretrained attention patterns are disturbed until fine-tuning adapts"

    def __init__(
        self,
        dims: StackDims,
        *,
        base: float = 10000.0,
        scaling: str | None = None,
        factor: float = 1.0,
        original_max_length: int | None = None,
    ) -> None:
        super().__init__(dims)
        _check(dims.head_dim % 2 == 0, f"rope needs an even head_dim, got {dims.head_dim}.")
        name = self.name
        self.base = check_finite_float(name, "base", base, low=1.0, high=MAX_BASE, low_open=True)
        self.scaling = check_choice(name, "scaling", scaling, ROPE_SCALINGS)
        # 1e6 times the trained length is past any real context, and NTK's factor ** (dim / (dim - 2)) stays a float.
        self.factor = check_finite_float(name, "factor", factor, low=1.0, high=1e6)
        _check(scaling is None or self.factor > 1, f"scaling={scaling!r} needs factor > 1, got {factor!r}.")
        _check(scaling != "ntk" or dims.head_dim > 2, f"scaling='ntk' needs a head_dim > 2, got {dims.head_dim}.")
        original_max_length = check_optional_int(
            name, "original_max_length", original_max_length, low=1, high=MAX_POSITIONS
        )
        self.original_max_length = dims.max_length if original_max_length is None else original_max_length
        self.attention_factor = self._inv_freq()[1]
        self._register_derived_tables()

    def derived_tables(self) -> dict[str, torch.Tensor]:
        return {"inv_freq": self._inv_freq()[0]}

    def _inv_freq(self) -> tuple[torch.Tensor, float]:
        dim, base = self.dims.head_dim, self.base
        if self.scaling == "ntk":
            base = base * self.factor ** (dim / (dim - 2))
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        if self.scaling == "linear":
            return inv_freq / self.factor, 1.0
        if self.scaling == "yarn":
            inv_freq = _yarn_inv_freq(inv_freq, self.factor, self.original_max_length, dim, base)
            return inv_freq, 0.1 * math.log(self.factor) + 1.0
        return inv_freq, 1.0

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., L, head_dim) cos and sin tables for `positions` (..., L), in fp32 and cast at the end."""
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return (angles.cos() * self.attention_factor).to(dtype), (angles.sin() * self.attention_factor).to(dtype)

    def _tables(self, positions: Positions, dtype: torch.dtype, context: PositionContext):
        def compute():
            def shaped(p):  # (L,) -> (1, 1, L, D); (B, L) -> (B, 1, L, D)
                cos, sin = self.cos_sin(p, dtype)
                return (cos, sin) if p.dim() == 1 else (cos.unsqueeze(1), sin.unsqueeze(1))

            return shaped(positions.query), shaped(positions.key)

        return context.memo(("rope", positions_key(positions), dtype), compute)

    def attend(self, query, key, positions, context):
        (q_cos, q_sin), (k_cos, k_sin) = self._tables(positions, query.dtype, context)
        return AttentionTerms(rotate(query, q_cos, q_sin), rotate(key, k_cos, k_sin))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply the rotary rotation in rotate-half layout: `x * cos + rotate_half(x) * sin`."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def build_encoding(name: str, dims: StackDims, options: dict[str, Any]) -> PositionEncoding:
    """Instantiate a registered encoding, turning an unknown option into a `TypeError` that lists the valid ones."""
    cls = ENCODINGS[canonical_name(name)]
    valid = option_defaults(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"Unknown option(s) {unknown} for encoding {cls.name!r}. Valid options: {sorted(valid)}.")
    return cls(dims, **options)


@dataclass
class EncodingSpec:
    """A parsed request for one stack: the canonical encoding name, its options and whether to keep the table."""

    encoding: str
    options: dict[str, Any] = field(default_factory=dict)
    keep_absolute: bool = False
    attention: dict[str, Any] = field(default_factory=dict)  # raw attention options (ATTENTION_KEYS), unvalidated

    def __post_init__(self) -> None:
        check_bool(self.encoding, "keep_absolute", self.keep_absolute)

    @property
    def cls(self) -> type[PositionEncoding]:
        return ENCODINGS[self.encoding]
