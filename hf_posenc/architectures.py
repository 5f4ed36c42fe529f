"""Data: where each supported `model_type` keeps its position tables and its self-attention modules.

Adding an architecture means adding one entry to `ARCHITECTURES` (plus its row in the test matrix). Paths are relative
to `model.base_model` (e.g. `BertModel`, `BartModel`, or `BartDecoderWrapper` for `BartForCausalLM`), so every task
head of a family shares one entry. A stack whose module is absent (the encoder of `BartForCausalLM`) is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
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

    def offset(self, config: Any) -> int:
        """Rows of the learned table that come before position 0."""
        if self.row_offset == "padding_idx+1":  # `config` may be a config object or its dict
            return (config["pad_token_id"] if isinstance(config, dict) else config.pad_token_id) + 1
        return int(self.row_offset)

    def config_rows(self, config: Any) -> int:
        """Rows the model adds to `config.max_position_embeddings` itself (BART builds `mpe + 2` rows, BERT `mpe`)."""
        return self.offset(config) if self.table_call == "bart" else 0

    def table_rows(self, config: Any) -> int:
        """Rows of the learned table that `config.max_position_embeddings` builds."""
        return config.max_position_embeddings + self.config_rows(config)

    def config_limit(self, config: Any) -> int:
        """The input limit that `config.max_position_embeddings` implies (RoBERTa: 514 -> 512, BART: 1024)."""
        return self.table_rows(config) - self.offset(config)

    def table_limit(self, table: nn.Embedding, config: Any) -> int:
        """The input limit of a learned table of this stack."""
        return table.num_embeddings - self.offset(config)

    def config_size(self, limit: int, config: Any) -> int:
        """The `max_position_embeddings` that builds a table for inputs of up to `limit` positions."""
        return limit + self.offset(config) - self.config_rows(config)

    def parse_table_call(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        """Split a call of the table into `(rows, position_ids, cache_length)`.

        BERT-style tables are called `table(rows)` with row ids (offset included): `rows` is set. BART-style ones
        are called `table(input_ids, cache_length=0, position_ids=None)` and compute positions themselves:
        `position_ids` (None when not given) and `cache_length` are set, and `rows` is the `input_ids`.
        """
        if self.table_call == "position_ids":
            return (args[0] if args else kwargs["input"]), None, 0
        input_ids = args[0] if args else kwargs["input_ids"]
        cache_length = args[1] if len(args) > 1 else kwargs.get("cache_length", 0)
        return input_ids, kwargs.get("position_ids"), cache_length

    def call_positions(self, args: tuple, kwargs: dict, device: torch.device) -> torch.Tensor:
        """The positions (from 0, offset removed) a call of the table asks for."""
        rows, position_ids, cache_length = self.parse_table_call(args, kwargs)
        if self.table_call == "position_ids":
            return rows
        if position_ids is None:
            return torch.arange(cache_length, cache_length + rows.shape[1], device=device)
        return position_ids


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
    """Rows of the learned table that come before position 0 (`stack.offset(config)`)."""
    return stack.offset(config)


def present_stacks(model: nn.Module) -> list[StackSpec]:
    """The stacks of `model`'s architecture whose module is present (BartForCausalLM has no encoder)."""
    return [s for s in architecture_for(model).stacks if get_submodule(model.base_model, s.module) is not None]


def self_attention_modules(stack_module: nn.Module, stack: StackSpec) -> list[tuple[str, nn.Module]]:
    """The self-attention modules of a stack, in layer order, matched by name suffix."""
    suffix = stack.self_attention
    return [(n, m) for n, m in stack_module.named_modules() if n == suffix or n.endswith("." + suffix)]


def attention_shape(module: nn.Module) -> tuple[int, int]:
    """(num_heads, head_dim) of an attention module, whatever the family calls them."""
    heads = next(getattr(module, a) for a in ("num_attention_heads", "num_heads", "n_heads") if hasattr(module, a))
    head_dim = next(getattr(module, a) for a in ("attention_head_size", "head_dim") if hasattr(module, a))
    return int(heads), int(head_dim)
