"""The checkpoint format of patched models: the `posenc-<type>` model types, saving, and loading them exactly.

**Checkpoint format.** `model.save_pretrained(folder)` of a patched model writes an ordinary transformers folder
(`config.json` + `model.safetensors`) whose config differs in three ways:

* `posenc`: the patch spec (`hf_posenc.patch_spec`), with every option resolved to a number;
* `model_type: "posenc-<type>"` (e.g. `posenc-bert`) instead of `<type>`;
* `auto_map`, naming the classes of `posenc_loader.py`, a 20-line shim saved beside the config.

The distinct model type is what keeps a patched checkpoint from loading silently wrong: transformers without
hf_posenc does not know `posenc-bert`, so `AutoModel*.from_pretrained` refuses it instead of re-initializing the
replaced tables at random. With `trust_remote_code=True` transformers runs the shim, which hands over to the installed
hf_posenc (or raises an `ImportError` that says to install it). After `import hf_posenc` the Auto classes know the
type and load the checkpoint through `from_pretrained` below, without running any code from the checkpoint. In
memory a patched model keeps its own `model_type` (`bert`), so code that keys on it keeps working; only the written
config (and `config.to_dict()`) says `posenc-bert`. Importing hf_posenc wraps `to_dict` and `save_pretrained` of the
config classes of the supported model types to do this (configs without a `posenc` block are written unchanged), and
their `from_pretrained`, so that `BertModel.from_pretrained(folder)` of a patched checkpoint raises an error naming
`hf_posenc.from_pretrained` instead of building the model without its encoding. (Without hf_posenc imported, such
a direct-class load only warns: transformers logs that model type `posenc-bert` differs from `bert` and reports the
missing and unexpected position weights. The Auto classes, which pipelines and most tools use, refuse.)

**Loading** (`from_pretrained`) reads `config.json` as JSON, resolves the model class from `config.architectures`
inside the `transformers` namespace only, builds it from the config, re-applies the recorded patch, loads the
safetensors weights strictly (tied weights aside) and leaves the `posenc` attention backend set. Checkpoints written
by transformers 4.x with BERT's `relative_key` / `relative_key_query` or NEZHA are imported the same way
(`hf_posenc.legacy`). Unpatched checkpoints load through transformers itself.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import transformers
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.models.auto import modeling_auto
from transformers.models.auto.auto_factory import _BaseAutoModelClass
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .. import __version__
from ..architectures import ARCHITECTURES, architecture_for, get_submodule, row_offset
from ..encodings import ENCODINGS, option_defaults
from ..patching import CONFIG_KEY, PositionTable, _remember_hook, grow_length_buffers, patch_model, patch_spec

logger = logging.getLogger(__name__)

POSENC_PREFIX = "posenc-"
"""`config.json` of a patched checkpoint says `model_type: "posenc-<type>"`."""

LOADER_MODULE = "hf_posenc.posenc_loader"
LOADER_FILE = "posenc_loader.py"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
STACK_FIELDS = {"encoding", "options", "keep_absolute", "max_length", "table_init"}
"""Fields of one stack in the `posenc` block (`max_length` / `table_init` are written by `hf_posenc.extension`)."""

# ---------------------------------------------------------------------------------------------------------------------
# The posenc-<type> model types: config classes, Auto-class entries, and the serialization of patched configs
# ---------------------------------------------------------------------------------------------------------------------

_AUTO_CLASSES: dict[str, type] = {}
"""Class name -> class, for the names that a checkpoint's `auto_map` gives (`posenc_loader.<name>`)."""


def auto_class(name: str) -> type:
    """The class that `posenc_loader.<name>` stands for (the shim's module-level `__getattr__`, PEP 562)."""
    if name not in _AUTO_CLASSES:
        raise AttributeError(f"module {LOADER_MODULE!r} has no attribute {name!r}")
    return _AUTO_CLASSES[name]


def base_model_type(model_type: str) -> str:
    """`posenc-bert` -> `bert`; other types are returned unchanged."""
    return model_type.removeprefix(POSENC_PREFIX)


class _AutoLoader:
    """What transformers' Auto classes see for a `posenc-<type>` config: `from_pretrained` and `_from_config` build
    the transformers class `target` (e.g. `BertForMaskedLM`) through hf_posenc. Subclassed once per target."""

    config_class: ClassVar[type]
    target: ClassVar[str]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs) -> PreTrainedModel:
        if model_args:
            raise TypeError(f"hf_posenc loads {cls.target} without positional model arguments, got {model_args}.")
        return from_pretrained(pretrained_model_name_or_path, cls.target, **kwargs)

    @classmethod
    def _from_config(cls, config: PreTrainedConfig, **kwargs) -> PreTrainedModel:
        """A freshly initialized `target` built from a `posenc-<type>` config, patched as the config records."""
        plan = _patched_plan(config.to_dict())
        model = _build(resolve_model_class(cls.target, plan.base_type), plan, kwargs.pop("dtype", None))
        _restore_patch(model, plan.stacks, exact=False)
        return model

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModel") -> None:
        """Called by transformers on remote-code classes; the auto_map is written by hf_posenc itself."""


def _named(name: str, bases: tuple[type, ...], attributes: dict[str, Any]) -> type:
    cls = type(name, bases, {"__module__": LOADER_MODULE, "__qualname__": name, **attributes})
    _AUTO_CLASSES[name] = cls
    return cls


def _auto_model_classes() -> list[type]:
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
    for auto in _auto_model_classes():
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


def is_portable(config: dict[str, Any]) -> bool:
    """Whether stock transformers loads this patched config correctly: every recorded stack keeps its learned table,
    unmapped, at the size `max_position_embeddings` builds (the identity patch, or an extension). Such checkpoints
    keep their `model_type` and their `posenc` record (provenance), so every other tool still loads them."""
    stacks = (config.get(CONFIG_KEY) or {}).get("stacks") or {}
    limit = config.get("max_position_embeddings")
    arch = ARCHITECTURES.get(base_model_type(config.get("model_type") or ""))
    if arch and any(stack.row_offset == "padding_idx+1" for stack in arch.stacks):
        limit = limit - (config.get("pad_token_id") or 0) - 1  # RoBERTa's table holds padding_idx + 1 extra rows
    return bool(stacks) and all(
        isinstance(entry, dict)
        and entry.get("encoding") == "learned"
        and not entry.get("keep_absolute")
        and not (entry.get("options") or {}).get("position_ids")
        and entry.get("max_length", limit) == limit
        for entry in stacks.values()
    )


TRIPWIRE = "hf_posenc-patched: load this checkpoint with hf_posenc.from_pretrained(path) (pip install hf-posenc)"
"""Written in place of the activation function of a patched checkpoint (the real one moves into the `posenc` block):
a transformers class built from the config without hf_posenc, e.g. `BertModel.from_pretrained(folder)` with the plugin
not imported, fails at once with a `KeyError` that quotes this text, instead of loading without its encoding."""


def _arm_tripwire(output: dict[str, Any], base_type: str) -> None:
    field = ARCHITECTURES[base_type].activation_field
    if field in output and output[field] != TRIPWIRE:
        output[CONFIG_KEY] = {**output[CONFIG_KEY], "activation": output[field]}
        output[field] = TRIPWIRE


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


def _serialized(output: dict[str, Any]) -> dict[str, Any]:
    """A patched config's dict as it is written: `model_type` "posenc-<type>", the loader shim's `auto_map`, and
    the activation trip-wire."""
    model_type = output.get("model_type") or ""
    if not output.get(CONFIG_KEY) or model_type.startswith(POSENC_PREFIX) or model_type not in ARCHITECTURES:
        return output
    if is_portable(output):
        return output
    _arm_tripwire(output, model_type)
    output["model_type"] = POSENC_PREFIX + model_type
    output["auto_map"] = {**(output.get("auto_map") or {}), **auto_map(model_type)}
    return output


def _hook_config_class(config_class: type[PreTrainedConfig]) -> None:
    """Make `config_class` write patched configs as `posenc-<type>` with the loader shim beside them, and refuse to
    read a `posenc-<type>` config as a plain one (what `BertModel.from_pretrained(folder)` would do)."""
    if "_posenc_hooked" in vars(config_class):
        return
    original_to_dict, original_save = config_class.to_dict, config_class.save_pretrained
    original_from_pretrained = config_class.from_pretrained.__func__

    @functools.wraps(original_to_dict)
    def to_dict(self) -> dict[str, Any]:
        return _serialized(original_to_dict(self))

    @functools.wraps(original_save)
    def save_pretrained(self, save_directory, *args, **kwargs):
        if getattr(self, CONFIG_KEY, None) and not is_portable(self.to_dict()):  # before the original (may push)
            os.makedirs(save_directory, exist_ok=True)
            shutil.copyfile(Path(__file__).parent.parent / LOADER_FILE, Path(save_directory) / LOADER_FILE)
        return original_save(self, save_directory, *args, **kwargs)

    @functools.wraps(original_from_pretrained)
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        loaded = original_from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        patched = getattr(config, CONFIG_KEY, None) and not is_portable(config.to_dict())
        if patched and not cls.model_type.startswith(POSENC_PREFIX):
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a model whose position encoding was replaced by hf_posenc "
                f"(model_type '{POSENC_PREFIX}{cls.model_type}'); {cls.__name__}.from_pretrained would rebuild it "
                "without that encoding. Load it with hf_posenc.from_pretrained(path), or with "
                "transformers.AutoModel*.from_pretrained(path) after `import hf_posenc`."
            )
        return loaded

    config_class.to_dict, config_class.save_pretrained = to_dict, save_pretrained
    config_class.from_pretrained = classmethod(from_pretrained)
    config_class._posenc_hooked = True


def _disarming_init(base_config: type[PreTrainedConfig]) -> Callable[..., None]:
    """`__init__` of a `posenc-<type>` config class: the saved config's real activation function comes back."""
    model_type = POSENC_PREFIX + base_config.model_type

    def __init__(self, **kwargs) -> None:
        kwargs = disarm_tripwire({**kwargs, "model_type": model_type})
        kwargs.pop("model_type")
        base_config.__init__(self, **kwargs)

    return __init__


def register_model_types() -> None:
    """Register `posenc-<type>` for every supported model type with AutoConfig and every AutoModel* class.

    Called when hf_posenc is imported; idempotent.
    """
    for base_type in ARCHITECTURES:
        base_config = CONFIG_MAPPING[base_type]
        name = f"Posenc{base_config.__name__}"
        config_class = _AUTO_CLASSES.get(name) or _named(
            name, (base_config,), {"model_type": POSENC_PREFIX + base_type, "__init__": _disarming_init(base_config)}
        )
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        autos = {auto.__name__: auto for auto in _auto_model_classes()}
        for auto_name, target in auto_targets(base_type).items():
            loader = _AUTO_CLASSES.get(f"Posenc{target}") or _named(
                f"Posenc{target}", (_AutoLoader,), {"config_class": config_class, "target": target}
            )
            autos[auto_name].register(config_class, loader, exist_ok=True)
        _hook_config_class(base_config)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class LoadPlan:
    """How to rebuild a checkpoint: its base model type and config, the stacks to patch, and key renames.

    Attributes:
        base_type: the transformers model type the model is built as (e.g. "bert").
        config: the config dict of that type, without hf_posenc's fields.
        stacks: the `posenc` block's stacks (stack name -> {"encoding", "options", "keep_absolute", ...}).
        architecture: the class the checkpoint was saved from (`config.architectures[0]`), if recorded.
        rename: maps a checkpoint key to the model's key, or to None to drop it (legacy imports).
        source: what wrote the checkpoint, for messages.
    """

    base_type: str
    config: dict[str, Any]
    stacks: dict[str, dict[str, Any]]
    architecture: str | None
    rename: Callable[[str], str | None] = staticmethod(lambda key: key)
    source: str = "hf_posenc"


def from_pretrained(
    name_or_path: str | os.PathLike,
    model_class: str | type | None = None,
    *,
    config: PreTrainedConfig | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a checkpoint saved from an hf_posenc-patched model, a legacy relative-position checkpoint, or a plain one.

    Args:
        name_or_path: a local folder or a Hub repo id (only `*.json`, `*.safetensors`, tokenizer and card files are
            downloaded; no code).
        model_class: the transformers class to build, as a class or a name looked up in the `transformers` namespace
            (e.g. "BertForSequenceClassification", or an `AutoModelFor*` class); default `config.architectures[0]`.
            A different head than the saved one gets its new parameters freshly initialized, as in transformers.
        config: a config to use instead of the folder's `config.json` (what the Auto classes pass).
        dtype: the parameters' dtype; default the checkpoint's (`config.dtype`).
        device: where to put the model; default CPU.
        revision, token, cache_dir, local_files_only: Hub download options.
        **kwargs: what transformers' Auto classes pass along (`torch_dtype`, `device_map` naming one device,
            `subfolder`, `trust_remote_code` (ignored: no code is ever run from the checkpoint), ...).

    Returns:
        The model in eval mode, patched as recorded, with the `posenc` attention backend set where it is needed.

    Raises:
        FileNotFoundError: `name_or_path` is neither a folder nor a Hub repo id.
        ValueError: a folder that is not a safetensors checkpoint; a missing, corrupted or newer-major `posenc`
            block; weights whose keys or shapes do not match the block; a model class outside transformers.
    """
    dtype, device, subfolder = _loader_options(dtype, device, kwargs)
    folder = _local_folder(name_or_path, revision, token, cache_dir, local_files_only, subfolder)
    config_dict = config.to_dict() if config is not None else read_config(folder)
    plan = load_plan(config_dict)
    if plan is None:  # an ordinary transformers checkpoint
        cls = resolve_model_class(model_class or saved_architecture(config_dict), config_dict.get("model_type"))
        options = {"config": config, "dtype": dtype, "attn_implementation": kwargs.get("attn_implementation")}
        model = cls.from_pretrained(
            folder, use_safetensors=True, **{k: v for k, v in options.items() if v is not None}
        )
        return model.to(device) if device is not None else model
    cls = resolve_model_class(model_class or plan.architecture, plan.base_type)
    model = _build(cls, plan, dtype)
    _restore_patch(model, plan.stacks, exact=cls.__name__ == plan.architecture)
    load_weights(model, _read_weights(folder, plan.rename), exact=cls.__name__ == plan.architecture, plan=plan)
    return _finish(model, folder, name_or_path, device)


def _loader_options(dtype, device, kwargs: dict[str, Any]) -> tuple[Any, Any, str | None]:
    """Accept what transformers' Auto classes and pipelines pass; refuse what would be silently ignored."""
    dtype = kwargs.pop("torch_dtype", None) if dtype is None else dtype
    device_map = kwargs.pop("device_map", None)
    if device_map is not None:
        if not isinstance(device_map, str | torch.device | int) or device_map == "auto":
            raise ValueError(f"hf_posenc loads onto one device; got device_map={device_map!r}. Pass device='cuda:0'.")
        device = device if device is not None else device_map
    subfolder = kwargs.pop("subfolder", None) or None
    ignored = {
        "trust_remote_code",
        "adapter_kwargs",
        "code_revision",
        "force_download",
        "proxies",
        "attn_implementation",
    }
    attn = kwargs.get("attn_implementation")
    if attn not in (None, "sdpa", "posenc"):
        raise ValueError(f"Patched models run in the 'posenc' attention backend (over SDPA); got {attn!r}.")
    unknown = sorted(k for k in kwargs if k not in ignored and not k.startswith("_"))
    if unknown:
        raise TypeError(f"hf_posenc.from_pretrained got unexpected argument(s) {unknown}.")
    return (None if dtype == "auto" else dtype), device, subfolder


def _local_folder(name_or_path, revision, token, cache_dir, local_files_only, subfolder) -> Path:
    """The checkpoint folder: a local one, or a snapshot of a Hub repo without any code files."""
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file; pass the checkpoint folder that holds config.json.")
        return path / subfolder if subfolder else path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError as error:
        raise FileNotFoundError(f"{name_or_path} is neither a local folder nor a Hub repo id ({error}).") from None
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "README.md"]
    if subfolder:
        patterns = [f"{subfolder}/{p}" for p in patterns]
    folder = snapshot_download(
        str(name_or_path),
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        allow_patterns=patterns,
    )
    return Path(folder) / subfolder if subfolder else Path(folder)


def read_config(folder: Path) -> dict[str, Any]:
    """`config.json` of a checkpoint folder, parsed as JSON (never as code)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a transformers checkpoint: it has no config.json.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}.") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{path} has no model_type: it is not a transformers model config.")
    return config


def load_plan(config: dict[str, Any]) -> LoadPlan | None:
    """How to rebuild the checkpoint with this config: a patched or a legacy one; None for an ordinary checkpoint."""
    from .legacy import legacy_plan  # legacy imports LoadPlan from here

    if config.get(CONFIG_KEY) is not None or config["model_type"].startswith(POSENC_PREFIX):
        return _patched_plan(config)
    return legacy_plan(config)


def saved_architecture(config: dict[str, Any]) -> str | None:
    """`config.architectures[0]`: the class the checkpoint was saved from, if recorded."""
    names = config.get("architectures") or []
    return names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None


def _patched_plan(config: dict[str, Any]) -> LoadPlan:
    config = disarm_tripwire(config)
    base_type = base_model_type(config["model_type"])
    if base_type not in ARCHITECTURES:
        raise ValueError(
            f"config.json has model_type {config['model_type']!r}; hf_posenc supports {sorted(ARCHITECTURES)}."
        )
    stacks = check_posenc_block(config.get(CONFIG_KEY))
    drop = {CONFIG_KEY, "model_type", "auto_map", "transformers_version"}
    base_config = {k: v for k, v in config.items() if k not in drop}
    return LoadPlan(base_type, base_config, stacks, saved_architecture(config))


def check_posenc_block(block: Any) -> dict[str, dict[str, Any]]:
    """Validate the `posenc` block of a config and return its stacks; a `ValueError` says what is wrong."""
    how = "hf_posenc writes it with model.save_pretrained after hf_posenc.patch_model; was config.json edited?"
    if block is None:
        raise ValueError(
            f"config.json says model_type 'posenc-*' but has no 'posenc' block to rebuild the model. {how}"
        )
    if not isinstance(block, dict) or not isinstance(block.get("stacks"), dict) or not block["stacks"]:
        raise ValueError(f"The 'posenc' block must be {{'version': ..., 'stacks': {{...}}}}, got {block!r}. {how}")
    _check_version(block.get("version"))
    for name, stack in block["stacks"].items():
        where = f"posenc block, stack {name!r}"
        if name not in ("encoder", "decoder"):
            raise ValueError(f"{where}: unknown stack; stacks are 'encoder' and 'decoder'.")
        if not isinstance(stack, dict) or not {"encoding", "options"} <= set(stack):
            raise ValueError(f"{where}: needs 'encoding' and 'options', got {stack!r}.")
        unknown = sorted(set(stack) - STACK_FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(STACK_FIELDS)}.")
        if stack["encoding"] not in ENCODINGS:
            raise ValueError(f"{where}: unknown encoding {stack['encoding']!r}; known: {sorted(ENCODINGS)}.")
        if not isinstance(stack["options"], dict):
            raise ValueError(f"{where}: 'options' must be a dict, got {stack['options']!r}.")
        valid = option_defaults(ENCODINGS[stack["encoding"]])
        if set(stack["options"]) - set(valid):
            raise ValueError(f"{where}: unknown option(s) {sorted(set(stack['options']) - set(valid))}.")
    return copy.deepcopy(block["stacks"])


def _check_version(version: Any) -> None:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)\S*", version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"The 'posenc' block has no valid version (got {version!r}); expected e.g. {__version__!r}.")
    if int(match.group(1)) > int(__version__.split(".")[0]):
        raise ValueError(
            f"This checkpoint was written by hf_posenc {version}, a newer major version than the installed "
            f"{__version__}. Upgrade: pip install -U hf-posenc."
        )


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


def _build(cls: type[PreTrainedModel], plan: LoadPlan, dtype) -> PreTrainedModel:
    """The model built from the plan's config: freshly initialized, every tensor then comes from the checkpoint."""
    config = CONFIG_MAPPING[plan.base_type].from_dict(copy.deepcopy(plan.config))
    model = cls._from_config(config, **({"dtype": dtype} if dtype is not None else {}))
    _size_kept_tables(model, plan.stacks)
    return model


def _size_kept_tables(model: PreTrainedModel, stacks: dict[str, dict[str, Any]]) -> None:
    """Kept learned tables take their recorded length (BART's two stacks may differ; the config holds one length)."""
    for stack in architecture_for(model).stacks:
        entry, table = stacks.get(stack.name) or {}, get_submodule(model.base_model, stack.table)
        keeps = entry.get("encoding") == "learned" or entry.get("keep_absolute")
        if not keeps or not entry.get("max_length") or _mapped(entry) or not isinstance(table, nn.Embedding):
            continue
        rows = entry["max_length"] + row_offset(stack, model.config)
        if table.num_embeddings != rows:
            table.weight = nn.Parameter(table.weight.new_zeros(rows, table.embedding_dim))
            table.num_embeddings = rows
        stack_module = model.base_model.get_submodule(stack.module)
        for attribute in ("max_source_positions", "max_target_positions"):
            if hasattr(stack_module, attribute):
                setattr(stack_module, attribute, entry["max_length"])


def _mapped(entry: dict[str, Any]) -> bool:
    return entry.get("encoding") == "learned" and bool((entry.get("options") or {}).get("position_ids"))


def _restore_patch(model: PreTrainedModel, stacks: dict[str, dict[str, Any]], exact: bool = True) -> None:
    """Patch `model` as `stacks` records, then put the record itself on the config.

    Length changes are restored as state (table sizes, position maps), not replayed: the config already has the grown
    sizes, and `patch_model(max_length=...)` only ever grows a model.
    """
    present = {s.name: s for s in architecture_for(model).stacks if get_submodule(model.base_model, s.module)}
    missing = sorted(set(stacks) - set(present))
    if missing and exact:
        raise ValueError(f"The posenc block patches {missing}, which {type(model).__name__} does not have.")
    requests = {}
    for name in set(stacks) & set(present):
        entry = stacks[name]
        options = {**entry["options"], **({"position_ids": None, "group_size": None} if _mapped(entry) else {})}
        requests[name] = {"encoding": entry["encoding"], **options, "keep_absolute": bool(entry.get("keep_absolute"))}
    try:
        patch_model(model, encoder=requests.get("encoder"), decoder=requests.get("decoder"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"The posenc block cannot be applied to {type(model).__name__}: {error}") from error
    record = {name: _merged_record(patch_spec(model)["stacks"][name], stacks[name]) for name in requests}
    for name in requests:
        if _mapped(stacks[name]):
            _install_position_map(model, present[name], stacks[name])
    setattr(model.config, CONFIG_KEY, {"version": __version__, "stacks": record})


def _merged_record(rebuilt: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """The rebuilt stack's record plus the recorded length fields; a recorded option that the rebuilt encoding does
    not reproduce means a block that hf_posenc did not write."""
    options = {
        **rebuilt["options"],
        **{
            k: recorded["options"][k]
            for k in ("position_ids", "group_size")
            if _mapped(recorded) and k in recorded["options"]
        },
    }
    differing = {k: (v, options.get(k)) for k, v in recorded["options"].items() if options.get(k) != v}
    if differing:
        raise ValueError(f"The posenc block's options do not rebuild: recorded vs rebuilt {differing}.")
    extra = {k: recorded[k] for k in ("max_length", "table_init") if k in recorded}
    return {**rebuilt, "options": options, **extra}


def _install_position_map(model: PreTrainedModel, stack, entry: dict[str, Any]) -> None:
    """Re-install `hf_posenc.extension`'s position map of a `learned` stack (LongEmbed's recurrent / grouped ids)."""
    from ..extension import PositionMap

    table, offset = model.base_model.get_submodule(stack.table), row_offset(stack, model.config)
    options = entry["options"]
    position_map = PositionMap(
        options["position_ids"], table.num_embeddings - offset, options.get("group_size"), offset, stack.table_call
    )
    _remember_hook(
        model.base_model.get_submodule(stack.module), table.register_forward_pre_hook(position_map, with_kwargs=True)
    )
    if stack.embeddings and entry.get("max_length"):
        embeddings = model.base_model.get_submodule(stack.embeddings)
        if embeddings.position_ids.shape[-1] < entry["max_length"] + offset:
            grow_length_buffers(embeddings, entry["max_length"] + offset)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder; a `ValueError` for pickled-only weights or none at all."""
    if (folder / SAFE_WEIGHTS).is_file():
        return [folder / SAFE_WEIGHTS]
    if (folder / SAFE_INDEX).is_file():
        weight_map = json.loads((folder / SAFE_INDEX).read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    unsafe = sorted(
        p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
    )
    if unsafe:
        raise ValueError(
            f"{folder} holds weights only as {unsafe}. hf_posenc loads safetensors only (pickled weights can run code "
            "when loaded). Convert once, in an environment you trust: load with transformers and save_pretrained."
        )
    raise ValueError(f"{folder} is not a checkpoint: it has no {SAFE_WEIGHTS} (nor {SAFE_INDEX}).")


def _read_weights(folder: Path, rename: Callable[[str], str | None]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for path in weight_files(folder):
        for key, tensor in load_file(path).items():
            new_key = rename(key)
            if new_key is not None:
                state[new_key] = tensor
    return state


def load_weights(model: PreTrainedModel, state: dict[str, torch.Tensor], exact: bool, plan: LoadPlan) -> None:
    """Load `state` into `model`, strictly: every tensor of the model must come from the checkpoint, except tied ones
    (and, when `model` has another head than the saved one, the new head's); shapes must match.
    """
    state = _align_prefix(model, state)
    expected = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(
            f"The weights do not match the model rebuilt from config.json ({plan.source}): "
            f"{'; '.join(mismatched[:5])}. Was config.json (its '{CONFIG_KEY}' block) edited after saving?"
        )
    missing = [k for k in expected if k not in state and not _is_tied(model, k, state)]
    unexpected = [k for k in state if k not in expected]
    new_head = [] if exact else _head_keys(model, missing)
    missing = [k for k in missing if k not in new_head]
    if missing or (unexpected and exact):
        raise ValueError(
            f"The weights do not match the model rebuilt from config.json ({plan.source}): missing "
            f"{missing[:6]}{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
            f"{'...' if len(unexpected) > 6 else ''}. Was config.json (its '{CONFIG_KEY}' block) edited after saving?"
        )
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    if new_head or unexpected:
        logger.warning(
            "%s: newly initialized %s; unused checkpoint tensors %s.", type(model).__name__, new_head, unexpected
        )


def _head_keys(model: PreTrainedModel, keys: list[str]) -> list[str]:
    """The keys outside the base model (and its optional pooler): what another task head may initialize afresh."""
    if model.base_model is model:
        return [k for k in keys if k.startswith("pooler.")]
    prefix = model.base_model_prefix + "."
    return [k for k in keys if not k.startswith(prefix) or k.startswith(prefix + "pooler.")]


def _align_prefix(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add or strip the base-model prefix (e.g. `bert.`) when a head model loads a base checkpoint or vice versa."""
    prefix = model.base_model_prefix + "."
    model_has = any(k.startswith(prefix) for k in model.state_dict())
    state_has = any(k.startswith(prefix) for k in state)
    if model_has and not state_has:
        return {prefix + k: v for k, v in state.items()}
    if state_has and not model_has:
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return state


def _is_tied(model: PreTrainedModel, key: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether `key` shares its storage with a tensor that the checkpoint provides (tied embeddings)."""
    tensors = model.state_dict(keep_vars=True)
    pointer = tensors[key].data_ptr()
    return any(k in state and k != key and t.data_ptr() == pointer for k, t in tensors.items())


def _finish(model: PreTrainedModel, folder: Path, name_or_path, device) -> PreTrainedModel:
    """A loaded model has no original table to restore: `unpatch_model` must refuse rather than restore random rows."""
    for module in model.modules():
        if isinstance(module, PositionTable):
            module.__dict__["original"] = None
    if model.can_generate() and (folder / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    model.config._name_or_path = str(name_or_path)
    model.eval()
    return model.to(device) if device is not None else model


register_model_types()
