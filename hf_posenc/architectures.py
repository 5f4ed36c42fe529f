"""Data: where each supported `model_type` keeps its position tables and its self-attention modules.

Adding an architecture means adding one entry to `ARCHITECTURES` (plus its row in the test matrix). Paths are relative
to `model.base_model` (e.g. `BertModel`, `BartModel`, or `BartDecoderWrapper` for `BartForCausalLM`), so every task
head of a family shares one entry. A stack whose module is absent (the encoder of `BartForCausalLM`) is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class StackSpec:
    """One attention stack of an architecture.

    Attributes:
        name: "encoder" or "decoder", the key users pass to `patch_model(model, encoder=..., decoder=...)`.
        module: path of the stack module (it gets the per-forward hook), relative to the base model.
        table: path of the learned absolute position table, relative to the base model.
        table_call: how the model calls the table: "position_ids" (BERT: `table(position_ids)`) or "bart"
            (`table(input_ids, cache_length, position_ids=None)`, which computes the positions itself).
        self_attention: name suffix of the self-attention modules inside the stack. Cross-attention modules do not
            match it and stay position-free (BART's `BartAttention` class serves both, so match by name).
        embeddings: path of the module whose `position_ids` / `token_type_ids` buffers bound the input length, or None.
        row_offset: rows of the table before position 0: BART keeps 2 special rows; RoBERTa counts positions from
            `padding_idx + 1` ("padding_idx+1" is resolved from the config).
    """

    name: str
    module: str
    table: str
    table_call: str
    self_attention: str
    embeddings: str | None = None
    row_offset: int | str = 0


@dataclass(frozen=True)
class ArchitectureSpec:
    """An architecture: its stacks, and the config field naming its activation function (`hf_posenc.hub` uses it
    as the trip-wire that stops stock transformers from building a patched checkpoint without its encoding)."""

    family: str
    stacks: tuple[StackSpec, ...]
    activation_field: str = "hidden_act"


_BERT = ArchitectureSpec(
    family="bert",
    stacks=(
        StackSpec(
            "encoder", "encoder", "embeddings.position_embeddings", "position_ids", "attention.self", "embeddings"
        ),
    ),
)
_ROBERTA = ArchitectureSpec(
    family="roberta",
    stacks=(
        StackSpec(
            "encoder",
            "encoder",
            "embeddings.position_embeddings",
            "position_ids",
            "attention.self",
            "embeddings",
            row_offset="padding_idx+1",
        ),
    ),
)
_DISTILBERT = ArchitectureSpec(
    family="distilbert",
    activation_field="activation",
    stacks=(
        StackSpec(
            "encoder", "transformer", "embeddings.position_embeddings", "position_ids", "attention", "embeddings"
        ),
    ),
)
_BART = ArchitectureSpec(
    family="bart",
    activation_field="activation_function",
    stacks=(
        StackSpec("encoder", "encoder", "encoder.embed_positions", "bart", "self_attn", row_offset=2),
        StackSpec("decoder", "decoder", "decoder.embed_positions", "bart", "self_attn", row_offset=2),
    ),
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "bert": _BERT,
    "electra": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "distilbert": _DISTILBERT,
    "bart": _BART,
    "mbart": _BART,
}
"""`config.model_type` -> where its position tables and self-attention modules live."""


def architecture_for(model: nn.Module) -> ArchitectureSpec:
    """The spec of `model`'s architecture, or a `ValueError` that lists the supported model types."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"hf_posenc does not support model_type {model_type!r} ({type(model).__name__}). "
            f"Supported model types: {sorted(ARCHITECTURES)}."
        )
    return ARCHITECTURES[model_type]


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """`root.get_submodule(path)`, or None when the module is absent (e.g. no encoder in a causal-LM wrapper)."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attribute = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attribute, module)


def row_offset(stack: StackSpec, config) -> int:
    """Rows of the learned table that come before position 0."""
    if stack.row_offset == "padding_idx+1":
        return config.pad_token_id + 1
    return int(stack.row_offset)


def self_attention_modules(stack_module: nn.Module, stack: StackSpec) -> list[tuple[str, nn.Module]]:
    """The self-attention modules of a stack, in layer order, matched by name suffix."""
    suffix = stack.self_attention
    return [(n, m) for n, m in stack_module.named_modules() if n == suffix or n.endswith("." + suffix)]


def attention_shape(module: nn.Module) -> tuple[int, int]:
    """(num_heads, head_dim) of an attention module, whatever the family calls them."""
    heads = next(getattr(module, a) for a in ("num_attention_heads", "num_heads", "n_heads") if hasattr(module, a))
    head_dim = next(getattr(module, a) for a in ("attention_head_size", "head_dim") if hasattr(module, a))
    return int(heads), int(head_dim)


def support_table() -> str:
    """The Markdown table of encodings x architectures that the README shows (a test keeps the two in sync)."""
    from .encodings import ENCODINGS  # the registry is filled on import; architectures stays free of it otherwise

    types = sorted(ARCHITECTURES)
    header = ["encoding", "kind", "learned parameters", "any length", *types]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, cls in ENCODINGS.items():
        cells = [_support_cell(cls, ARCHITECTURES[t]) for t in types]
        learned = "yes" if cls.learned else "no"
        unbounded = "no (extend it)" if cls.max_length_bound else "yes"
        lines.append("| " + " | ".join([f"`{name}`", cls.kind, learned, unbounded, *cells]) + " |")
    return "\n".join(lines)


def _support_cell(cls, arch: ArchitectureSpec) -> str:
    if cls.kind != "none":
        return "✓"
    return "decoder" if any(s.name == "decoder" for s in arch.stacks) else "—"


def step0_table() -> str:
    """What each encoding does to a pretrained model before any training, and its source."""
    from .encodings import ENCODINGS

    lines = ["| encoding | at step 0 on a pretrained model | source |", "|---|---|---|"]
    lines += [f"| `{name}` | {cls.step0} | {cls.citation} |" for name, cls in ENCODINGS.items()]
    return "\n".join(lines)
