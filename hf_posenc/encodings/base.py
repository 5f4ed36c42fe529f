"""The registry, the types every encoding shares (dims, positions, attention options, the per-forward context and
the terms an encoding hands the backend), the base classes, the option checks and the builder."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..blockwise import RowTerms
from ..option_checks import check_bool, check_choice

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
            At or below `scale_length` nothing changes. `K` is each input's own length (padding not counted), so
            an input's output does not depend on what it is batched with.
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

    def scale_factors(self, key_counts: torch.Tensor) -> torch.Tensor:
        """The factors on `q.k` (float32) for a tensor of per-input key counts; 1.0 up to the reference length."""
        if self.scale is None:
            return torch.ones(key_counts.shape, dtype=torch.float32, device=key_counts.device)
        counts = key_counts.to(torch.float64).clamp(min=self.scale_length)
        return (counts.log() / math.log(self.scale_length)).float()

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


def default_positions_key(positions: Positions, query: torch.Tensor) -> tuple:
    """A key for a table of default positions: their lengths and offset, with the query's dtype and device."""
    return (positions.query.shape[-1], positions.key.shape[-1], positions.offset, query.dtype, query.device)


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


def require(condition: bool, message: str) -> None:
    """Raise a `ValueError` with `message` unless `condition` holds (the encodings' cross-option checks)."""
    if not condition:
        raise ValueError(message)


RELATIVE_INITS = ("auto", "normal", "zeros")

MAX_POSITIONS = 2**20
"""Largest distance, bucket count, length or group size an option may name: a million positions is past any context
these models run, tables of that many rows take gigabytes, and larger ints overflow torch's sizes and Python floats."""

MAX_BASE = 1e12
"""Largest sinusoid / RoPE base: past it every frequency but the first is below 1e-12 per token in fp32 (no position
signal left), and NTK's rescaled base would overflow a float."""


def check_init(encoding: str, init: Any) -> str:
    """A relative table's `init` option, checked against `RELATIVE_INITS`."""
    return check_choice(encoding, "init", init, RELATIVE_INITS)


def init_table(weight: torch.Tensor, init: str, std: float) -> None:
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


class RelativeEncoding(PositionEncoding):
    """A relative encoding acts inside attention through `attend`."""

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, positions: Positions, context: PositionContext
    ) -> AttentionTerms:
        raise NotImplementedError


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
