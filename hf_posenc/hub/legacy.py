"""Import checkpoints whose relative position encodings transformers 5 dropped.

transformers 4.x had BERT's `position_embedding_type="relative_key"` (Shaw et al. 2018) and `"relative_key_query"`
(Huang et al. 2020), shared by the BERT-like families (bert, roberta, xlm-roberta, camembert, electra), and the NEZHA
model (`model_type: "nezha"`, Wei et al. 2019). transformers 5 loads the first kind as a plain absolute-position model
(silently ignoring the distance tables) and does not know NEZHA at all. `hf_posenc.from_pretrained` recognizes both
and rebuilds them as hf_posenc-patched transformers 5 models that give the outputs 4.x gave (checked against golden
outputs of transformers 4.57.6 in `tests/fixtures/legacy/`):

* `relative_key[_query]`: the model of the same type, patched with the same encoding and
  `max_distance = max_position_embeddings - 1` (4.x's table of `2 * max_position_embeddings - 1` rows, never clipped
  within the model's length). Each layer's `attention.self.distance_embedding.weight` becomes
  `attention.self.posenc.distance_embedding.weight`; the absolute table, which 4.x created but never used for these
  types, is dropped.
* NEZHA: a `BertModel` / `BertFor*` patched with `nezha` and `max_distance = max_relative_position`. NEZHA has no
  absolute table and no learned position parameters; `nezha.` prefixes become `bert.`, and the fixed
  `relative_positions_encoding.positions_encoding` tables that third-party ports saved are ignored.
"""

from __future__ import annotations

from typing import Any

from ..architectures import ARCHITECTURES
from ..record import PatchRecord, StackRecord
from .format import LoadPlan, saved_architecture

RELATIVE_TYPES = ("relative_key", "relative_key_query")
BERT_LIKE = tuple(t for t, spec in ARCHITECTURES.items() if spec.stacks[0].self_attention == "attention.self")
"""Model types whose 4.x self-attention had the `distance_embedding` tables."""

NEZHA_DEFAULT_MAX_RELATIVE_POSITION = 64  # NezhaConfig's default in transformers 4.x
DROPPED_CONFIG_FIELDS = ("position_embedding_type", "max_relative_position", "transformers_version", "model_type")


def legacy_plan(config: dict[str, Any]) -> LoadPlan | None:
    """The import plan of a transformers 4.x relative-position checkpoint, or None when `config` is not one."""
    if config.get("model_type") == "nezha":
        return _nezha_plan(config)
    if config.get("model_type") in BERT_LIKE and config.get("position_embedding_type") in RELATIVE_TYPES:
        return _relative_plan(config)
    return None


def _base_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in DROPPED_CONFIG_FIELDS}


def _relative_plan(config: dict[str, Any]) -> LoadPlan:
    encoding = config["position_embedding_type"]
    max_distance = int(config.get("max_position_embeddings", 512)) - 1
    record = PatchRecord({"encoder": StackRecord(encoding, {"max_distance": max_distance})})
    return LoadPlan(
        config["model_type"],
        _base_config(config),
        record,
        saved_architecture(config),
        rename=_rename_relative,
        source=f"transformers 4.x {config['model_type']} with position_embedding_type={encoding!r}",
    )


def _rename_relative(key: str) -> str | None:
    if key.endswith("attention.self.distance_embedding.weight"):
        return key.replace("attention.self.distance_embedding", "attention.self.posenc.distance_embedding")
    if key.endswith("embeddings.position_embeddings.weight") or key.endswith("embeddings.position_ids"):
        return None  # created but never used by 4.x for relative types; position_ids is a buffer of old versions
    return key


def _nezha_plan(config: dict[str, Any]) -> LoadPlan:
    max_distance = int(config.get("max_relative_position", NEZHA_DEFAULT_MAX_RELATIVE_POSITION))
    record = PatchRecord({"encoder": StackRecord("nezha", {"max_distance": max_distance})})
    architecture = saved_architecture(config)
    bert_architecture = "Bert" + architecture.removeprefix("Nezha") if architecture else None
    base = _base_config(config)
    base["architectures"] = [bert_architecture] if bert_architecture else None
    return LoadPlan("bert", base, record, bert_architecture, rename=_rename_nezha, source="transformers 4.x NEZHA")


def _rename_nezha(key: str) -> str | None:
    if "relative_positions_encoding.positions_encoding" in key:
        return None  # a fixed sinusoid table that third-party ports saved; hf_posenc computes it
    return "bert." + key.removeprefix("nezha.") if key.startswith("nezha.") else key
