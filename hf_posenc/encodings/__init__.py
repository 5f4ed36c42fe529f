"""The position encodings: one registry and one small class per encoding.

This package holds the math only; it imports nothing from transformers. Two kinds of encoding exist:

* *absolute* encodings produce vectors that are added to the token embeddings (`embed(position_ids)`);
* *relative* encodings act inside self-attention: `attend(query, key, positions, context)` returns the (possibly
  rotated) query and key, an additive score bias, and optionally a value term (Shaw et al. 2018; NEZHA).

The keyword-only arguments of each constructor are the encoding's option schema: `patch_model(model, "rope", base=500)`
passes `base=500` to `RotaryEncoding.__init__`, and an unknown option is a `TypeError` raised before the model changes.
Derived tables (sinusoids, inverse frequencies, slopes) are non-persistent buffers; only learned tensors are
parameters and reach the checkpoint.

Layout: `base` (the registry, shared types, base classes, option checks, `build_encoding`), then one module per
family: `absolute` (learned, sinusoidal, none), `relative` (Shaw, Huang, NEZHA, T5), `alibi`, `rope`. Importing the
package imports them all, which fills the registry.
"""

from __future__ import annotations

# The families in registry order (the order of the encoding tables in the docs), before the re-exports below.
from . import absolute, relative, alibi, rope  # isort: skip  # noqa: F401
from .absolute import (
    EXTENSION_INITS,
    POSITION_ID_MAPS,
    LearnedAbsolute,
    NoPosition,
    SinusoidalAbsolute,
    copy_rows,
    interpolate_rows,
    random_rows,
    sinusoidal_rows,
)
from .alibi import (
    ALiBi,
    alibi_slopes,
)
from .base import (
    ALIASES,
    ATTENTION_KEYS,
    ENCODINGS,
    MAX_BASE,
    MAX_POSITIONS,
    RELATIVE_INITS,
    AttentionOptions,
    AttentionTerms,
    EncodingSpec,
    PositionContext,
    PositionEncoding,
    Positions,
    RelativeEncoding,
    StackDims,
    build_encoding,
    canonical_name,
    check_init,
    default_positions_key,
    init_table,
    option_defaults,
    positions_key,
    register_encoding,
    require,
    sinusoid_table,
)
from .relative import (
    HuangRelativeKeyQuery,
    NezhaFunctionalRelative,
    ShawRelativeKey,
    T5RelativeBias,
    t5_relative_buckets,
)
from .rope import (
    ROPE_SCALINGS,
    RotaryEncoding,
    rotate,
)

__all__ = [
    "ENCODINGS",
    "ALIASES",
    "register_encoding",
    "canonical_name",
    "option_defaults",
    "StackDims",
    "Positions",
    "AttentionOptions",
    "ATTENTION_KEYS",
    "PositionContext",
    "AttentionTerms",
    "positions_key",
    "default_positions_key",
    "PositionEncoding",
    "require",
    "RELATIVE_INITS",
    "MAX_POSITIONS",
    "MAX_BASE",
    "check_init",
    "init_table",
    "sinusoid_table",
    "RelativeEncoding",
    "build_encoding",
    "EncodingSpec",
    "copy_rows",
    "interpolate_rows",
    "sinusoidal_rows",
    "random_rows",
    "EXTENSION_INITS",
    "POSITION_ID_MAPS",
    "LearnedAbsolute",
    "SinusoidalAbsolute",
    "NoPosition",
    "ShawRelativeKey",
    "HuangRelativeKeyQuery",
    "NezhaFunctionalRelative",
    "t5_relative_buckets",
    "T5RelativeBias",
    "alibi_slopes",
    "ALiBi",
    "ROPE_SCALINGS",
    "RotaryEncoding",
    "rotate",
]
