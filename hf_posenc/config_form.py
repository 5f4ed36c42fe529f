"""How a patched model's config is written, so that a patched checkpoint never loads silently without its encoding.

`save_pretrained` of a patched model writes an ordinary transformers folder whose `config.json` differs in three ways:

* `posenc`: the patch record (`hf_posenc.record`), with every option resolved to a value;
* `model_type: "posenc-<type>"` (e.g. `posenc-bert`) instead of `<type>`, a type only hf_posenc registers, and an
  `auto_map` naming the classes of `posenc_loader.py`, a 20-line shim saved beside the config;
* the trip-wire: the activation function is replaced by `TRIPWIRE` (the real one moves into the `posenc` block), so
  a transformers class built from the config without hf_posenc fails at once with a `KeyError` quoting it.

The patch gives the model its own config object whose class is `Patched<Config>` (e.g. `PatchedBertConfig`), a
subclass of the base config class made once per base class by `patched_config_class`; only its `to_dict` and
`save_pretrained` differ. No transformers class is modified. In memory `model_type` stays the base one (`bert`).
Patches that keep every learned table at the size the config builds (the identity patch, an extension) are
portable: they are written unchanged, the record kept as provenance.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedConfig
from transformers.models.auto import modeling_auto
from transformers.models.auto.auto_factory import _BaseAutoModelClass
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .architectures import ARCHITECTURES
from .record import CONFIG_KEY, PatchRecord

POSENC_PREFIX = "posenc-"
"""`config.json` of a patched checkpoint says `model_type: "posenc-<type>"`."""

LOADER_MODULE = "hf_posenc.posenc_loader"
LOADER_FILE = "posenc_loader.py"
LOADER_PATH = Path(__file__).parent / LOADER_FILE
PATCHED_PREFIX = "Patched"

TRIPWIRE = "hf_posenc-patched: load this checkpoint with hf_posenc.from_pretrained(path) (pip install hf-posenc)"
"""Written in place of the activation function of a patched checkpoint (the real one moves into the `posenc` block):
a transformers class built from the config without hf_posenc, e.g. `BertModel.from_pretrained(folder)`, fails at once
with a `KeyError` that quotes this text, instead of loading without its encoding."""


def base_model_type(model_type: str) -> str:
    """`posenc-bert` -> `bert`; other types are returned unchanged."""
    return model_type.removeprefix(POSENC_PREFIX)


def auto_model_classes() -> list[type]:
    """transformers' `AutoModel*` classes, by name."""
    found = [
        value
        for name, value in vars(modeling_auto).items()
        if name.startswith("AutoModel") and isinstance(value, type) and issubclass(value, _BaseAutoModelClass)
    ]
    return sorted((c for c in found if c._model_mapping is not None), key=lambda c: c.__name__)


def auto_targets(base_type: str) -> dict[str, str]:
    """Auto class name -> the transformers class it builds for `base_type` (read from the name tables, no imports)."""
    targets = {}
    for auto in auto_model_classes():
        target = auto._model_mapping._model_mapping.get(base_type)
        if isinstance(target, str):
            targets[auto.__name__] = target
    return targets


def auto_map(base_type: str) -> dict[str, str]:
    """The `auto_map` of a patched `base_type` checkpoint: every Auto class -> a class of the loader shim."""
    stem = LOADER_FILE.removesuffix(".py")
    entries = {"AutoConfig": f"{stem}.Posenc{CONFIG_MAPPING[base_type].__name__}"}
    entries.update({auto: f"{stem}.Posenc{target}" for auto, target in auto_targets(base_type).items()})
    return entries


def _portable_limit(config: dict[str, Any]) -> int | None:
    limit = config.get("max_position_embeddings")
    arch = ARCHITECTURES.get(base_model_type(config.get("model_type") or ""))
    if limit is not None and arch and any(stack.row_offset == "padding_idx+1" for stack in arch.stacks):
        limit = limit - (config.get("pad_token_id") or 0) - 1  # RoBERTa's table holds padding_idx + 1 extra rows
    return limit


def is_portable(config: dict[str, Any]) -> bool:
    """Whether stock transformers loads this patched config dict correctly: every recorded stack keeps its learned
    table, unmapped, at the size `max_position_embeddings` builds (the identity patch, or an extension)."""
    try:
        record = PatchRecord.from_dict(config.get(CONFIG_KEY))
    except ValueError:
        return False
    limit = _portable_limit(config)
    return all(
        s.cls.keeps_learned_table and not s.keep_absolute and not s.mapped and (s.max_length or limit) == limit
        for s in record.stacks.values()
    )


def disarm_tripwire(config: dict[str, Any]) -> dict[str, Any]:
    """The config dict with its real activation function back (a copy; unchanged when not armed)."""
    arch = ARCHITECTURES.get(base_model_type(config.get("model_type") or ""))
    block = config.get(CONFIG_KEY)
    if arch is None or config.get(arch.activation_field) != TRIPWIRE or not isinstance(block, dict):
        return config
    if "activation" not in block:
        raise ValueError("config.json is armed by hf_posenc but its 'posenc' block lost the activation function.")
    block = dict(block)
    return {**config, arch.activation_field: block.pop("activation"), CONFIG_KEY: block}


def serialized_config(output: dict[str, Any]) -> dict[str, Any]:
    """A patched config's dict as it is written: `model_type` "posenc-<type>", the loader shim's `auto_map`, and
    the activation trip-wire (the real activation moves into the record). Portable and unpatched dicts pass."""
    model_type = output.get("model_type") or ""
    if not output.get(CONFIG_KEY) or model_type not in ARCHITECTURES or is_portable(output):
        return output
    field = ARCHITECTURES[model_type].activation_field
    if field in output and output[field] != TRIPWIRE:
        record = replace(PatchRecord.from_dict(output[CONFIG_KEY]), activation=output[field])
        output[CONFIG_KEY], output[field] = record.to_dict(), TRIPWIRE
    output["model_type"] = POSENC_PREFIX + model_type
    output["auto_map"] = {**(output.get("auto_map") or {}), **auto_map(model_type)}
    return output


class _WritesPatchedForm:
    """Mixed into `Patched<Config>`: writes the config in the patched form and the loader shim beside it."""

    def to_dict(self) -> dict[str, Any]:
        return serialized_config(super().to_dict())

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, CONFIG_KEY, None) and not is_portable(self.to_dict()):  # before the original (may push)
            os.makedirs(save_directory, exist_ok=True)
            shutil.copyfile(LOADER_PATH, Path(save_directory) / LOADER_FILE)
        return super().save_pretrained(save_directory, *args, **kwargs)


_PATCHED_CLASSES: dict[type, type] = {}


def patched_config_class(base: type[PreTrainedConfig]) -> type[PreTrainedConfig]:
    """`Patched<base>`: `base` writing the patched form. Made once per base class; found again by name in this
    module (PEP 562 `__getattr__`), so that pickled and deep-copied configs keep their class."""
    if issubclass(base, _WritesPatchedForm):
        return base
    if base not in _PATCHED_CLASSES:
        name = PATCHED_PREFIX + base.__name__
        _PATCHED_CLASSES[base] = type(name, (_WritesPatchedForm, base), {"__module__": __name__, "__qualname__": name})
    return _PATCHED_CLASSES[base]


def unpatched_config_class(cls: type[PreTrainedConfig]) -> type[PreTrainedConfig]:
    """The base config class of a `Patched<Config>` class (other classes are returned unchanged)."""
    return next((base for base, patched in _PATCHED_CLASSES.items() if patched is cls), cls)


def __getattr__(name: str) -> type:
    """`Patched<Config>` classes by name, for pickle (PEP 562)."""
    if name.startswith(PATCHED_PREFIX):
        for model_type in ARCHITECTURES:
            if CONFIG_MAPPING[model_type].__name__ == name.removeprefix(PATCHED_PREFIX):
                return patched_config_class(CONFIG_MAPPING[model_type])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
