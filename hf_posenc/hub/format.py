"""The checkpoint format, read side: what a checkpoint folder is and how to rebuild it, without building anything.

A patched checkpoint is an ordinary transformers folder (`config.json` + safetensors) whose config says
`model_type: "posenc-<type>"`, carries the patch record (`posenc`) and the activation trip-wire; how it is written is
`hf_posenc.config_form`. Here: reading `config.json` as JSON (never as code), the `LoadPlan` of a patched config
(base type, base config, record), the model class resolved inside the `transformers` namespace only, and the
safetensors files. `hf_posenc.hub.legacy` makes plans for transformers 4.x checkpoints; `hf_posenc.hub.loading`
executes plans.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from transformers import PreTrainedModel
from transformers.models.auto.auto_factory import _BaseAutoModelClass
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..architectures import ARCHITECTURES
from ..config_form import (
    LOADER_FILE,
    LOADER_MODULE,
    POSENC_PREFIX,
    TRIPWIRE,
    auto_map,
    auto_targets,
    base_model_type,
    disarm_tripwire,
    is_portable,
)
from ..record import CONFIG_KEY, PatchRecord, StackRecord
from .files import read_json
from .folders import check_safetensors

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


@dataclass
class LoadPlan:
    """How to rebuild a checkpoint: its base model type and config, the patch record, and key renames.

    Attributes:
        base_type: the transformers model type the model is built as (e.g. "bert").
        config: the config dict of that type, without hf_posenc's fields.
        record: the patch to apply (the `posenc` block, or what a legacy checkpoint amounts to).
        architecture: the class the checkpoint was saved from (`config.architectures[0]`), if recorded.
        rename: maps a checkpoint key to the model's key, or to None to drop it (legacy imports).
        source: what wrote the checkpoint, for messages.
    """

    base_type: str
    config: dict[str, Any]
    record: PatchRecord
    architecture: str | None
    rename: Callable[[str], str | None] = staticmethod(lambda key: key)
    source: str = "hf_posenc"

    @property
    def stacks(self) -> dict[str, StackRecord]:
        return self.record.stacks


def read_config(folder: Path) -> dict[str, Any]:
    """`config.json` of a checkpoint folder, parsed as JSON (never as code)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a transformers checkpoint: it has no config.json.")
    config = read_json(path)
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{path} has no model_type: it is not a transformers model config.")
    return config


def saved_architecture(config: dict[str, Any]) -> str | None:
    """`config.architectures[0]`: the class the checkpoint was saved from, if recorded."""
    names = config.get("architectures") or []
    return names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None


def is_patched(config: dict[str, Any]) -> bool:
    """Whether a config dict was written by hf_posenc (a `posenc` block, or the `posenc-<type>` model type)."""
    return config.get(CONFIG_KEY) is not None or config["model_type"].startswith(POSENC_PREFIX)


def patched_plan(config: dict[str, Any]) -> LoadPlan:
    """The plan of a config dict written by hf_posenc; a `ValueError` says what is wrong with it."""
    config = disarm_tripwire(config)
    base_type = base_model_type(config["model_type"])
    if base_type not in ARCHITECTURES:
        raise ValueError(
            f"config.json has model_type {config['model_type']!r}; hf_posenc supports {sorted(ARCHITECTURES)}."
        )
    record = PatchRecord.from_dict(config.get(CONFIG_KEY))
    drop = {CONFIG_KEY, "model_type", "auto_map", "transformers_version"}
    base_config = {k: v for k, v in config.items() if k not in drop}
    return LoadPlan(base_type, base_config, record, saved_architecture(config))


def resolve_model_class(name: str | type | None, model_type: str | None) -> type[PreTrainedModel]:
    """A model class from the `transformers` namespace only (never an arbitrary import).

    `name` is a class name (e.g. "BertForMaskedLM"), a transformers model class, an `AutoModel*` class (resolved for
    `model_type`), or None (the base model of `model_type`).
    """
    base_type = base_model_type(model_type or "")
    if isinstance(name, type) and issubclass(name, _BaseAutoModelClass):
        name = auto_targets(base_type).get(name.__name__) or name.__name__
    if name is None:
        name = auto_targets(base_type).get("AutoModel")
    cls = name if isinstance(name, type) else getattr(transformers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel) and cls.__module__.startswith("transformers.")):
        raise ValueError(
            f"Cannot build {name!r}: hf_posenc only builds model classes of the transformers library "
            f"(e.g. {auto_targets(base_type).get('AutoModel', 'BertModel')!r}); nothing else is imported."
        )
    # (CONFIG_MAPPING is lazy: its .get() returns None even for known types)
    expected = CONFIG_MAPPING[base_type] if base_type in CONFIG_MAPPING else None  # noqa: SIM401
    if expected is not None and not issubclass(expected, cls.config_class):
        raise ValueError(
            f"{cls.__name__} is not a {base_type!r} model class; the checkpoint is a {base_type!r} model."
        )
    return cls


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, checked complete; a `ValueError` naming the file for a truncated
    one, and for pickled-only weights or none at all."""
    if (folder / SAFE_WEIGHTS).is_file():
        return [check_safetensors(folder / SAFE_WEIGHTS)]
    if (folder / SAFE_INDEX).is_file():
        index = read_json(folder / SAFE_INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{folder / SAFE_INDEX} has no weight_map: the file is incomplete or corrupt.")
        names = sorted(set(weight_map.values()))
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"{folder} lacks the weight files {missing} that {SAFE_INDEX} lists: it is incomplete.")
        return [check_safetensors(folder / name) for name in names]
    unsafe = sorted(
        p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
    )
    if unsafe:
        raise ValueError(
            f"{folder} holds weights only as {unsafe}. hf_posenc loads safetensors only (pickled weights can run code "
            "when loaded). Convert once, in an environment you trust: load with transformers and save_pretrained."
        )
    raise ValueError(f"{folder} is not a checkpoint: it has no {SAFE_WEIGHTS} (nor {SAFE_INDEX}).")


__all__ = [
    "CONFIG_KEY",
    "LOADER_FILE",
    "LOADER_MODULE",
    "POSENC_PREFIX",
    "SAFE_INDEX",
    "SAFE_WEIGHTS",
    "TRIPWIRE",
    "LoadPlan",
    "auto_map",
    "auto_targets",
    "base_model_type",
    "disarm_tripwire",
    "is_patched",
    "is_portable",
    "patched_plan",
    "read_config",
    "resolve_model_class",
    "saved_architecture",
    "weight_files",
]
