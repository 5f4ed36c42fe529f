"""Loading patched checkpoints exactly, and the `posenc-<type>` model types that route transformers' Auto classes here.

`from_pretrained` reads `config.json` as JSON, resolves the model class from `config.architectures` inside the
`transformers` namespace only, builds it from the config, re-applies the recorded patch, loads the safetensors weights
strictly (tied weights aside) and leaves the `posenc` attention backend set. Checkpoints written by transformers 4.x
with BERT's `relative_key` / `relative_key_query` or NEZHA are imported the same way (`hf_posenc.hub.legacy`).
Unpatched checkpoints load through transformers itself.

`register_model_types` (run on import) registers `posenc-<type>` with `AutoConfig` and every `AutoModel*` class,
transformers' own extension API: after `import hf_posenc`, `AutoModel*.from_pretrained(folder)` of a patched
checkpoint lands in `from_pretrained` below, and `posenc_loader.py` (the shim saved beside a patched config, for
`trust_remote_code=True`) resolves its class names through `auto_class`. Nothing of transformers is modified: without
these types transformers refuses a patched checkpoint, and the activation trip-wire stops a direct
`BertModel.from_pretrained(folder)` (see `hf_posenc.config_form`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..architectures import ARCHITECTURES, present_stacks
from ..config_form import LOADER_MODULE, POSENC_PREFIX, auto_model_classes, auto_targets, disarm_tripwire
from ..patching import patch_model
from ..record import CONFIG_KEY, PatchRecord, StackRecord, read_record, write_record
from ..state import PositionMap, ensure_buffers, installed_tables, remember_hook
from .format import (
    LoadPlan,
    is_patched,
    patched_plan,
    read_config,
    resolve_model_class,
    saved_architecture,
    weight_files,
)
from .legacy import legacy_plan

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# The posenc-<type> model types: config classes and Auto-class entries
# ---------------------------------------------------------------------------------------------------------------------

_AUTO_CLASSES: dict[str, type] = {}
"""Class name -> class, for the names that a checkpoint's `auto_map` gives (`posenc_loader.<name>`)."""


def auto_class(name: str) -> type:
    """The class that `posenc_loader.<name>` stands for (the shim's module-level `__getattr__`, PEP 562)."""
    if name not in _AUTO_CLASSES:
        raise AttributeError(f"module {LOADER_MODULE!r} has no attribute {name!r}")
    return _AUTO_CLASSES[name]


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
        plan = patched_plan(config.to_dict())
        model = _build(resolve_model_class(cls.target, plan.base_type), plan, kwargs.pop("dtype", None))
        _restore_patch(model, plan.record, exact=False)
        return model

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModel") -> None:
        """Called by transformers on remote-code classes; the auto_map is written by hf_posenc itself."""


def _named(name: str, bases: tuple[type, ...], attributes: dict[str, Any]) -> type:
    cls = type(name, bases, {"__module__": LOADER_MODULE, "__qualname__": name, **attributes})
    _AUTO_CLASSES[name] = cls
    return cls


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
    autos = {auto.__name__: auto for auto in auto_model_classes()}
    for base_type in ARCHITECTURES:
        base_config = CONFIG_MAPPING[base_type]
        name = f"Posenc{base_config.__name__}"
        config_class = _AUTO_CLASSES.get(name) or _named(
            name, (base_config,), {"model_type": POSENC_PREFIX + base_type, "__init__": _disarming_init(base_config)}
        )
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_name, target in auto_targets(base_type).items():
            loader = _AUTO_CLASSES.get(f"Posenc{target}") or _named(
                f"Posenc{target}", (_AutoLoader,), {"config_class": config_class, "target": target}
            )
            autos[auto_name].register(config_class, loader, exist_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


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
    _restore_patch(model, plan.record, exact=cls.__name__ == plan.architecture)
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


def load_plan(config: dict[str, Any]) -> LoadPlan | None:
    """How to rebuild the checkpoint with this config: a patched or a legacy one; None for an ordinary checkpoint."""
    return patched_plan(config) if is_patched(config) else legacy_plan(config)


def _build(cls: type[PreTrainedModel], plan: LoadPlan, dtype) -> PreTrainedModel:
    """The model built from the plan's config: freshly initialized, every tensor then comes from the checkpoint."""
    config = CONFIG_MAPPING[plan.base_type].from_dict(copy.deepcopy(plan.config))
    model = cls._from_config(config, **({"dtype": dtype} if dtype is not None else {}))
    _size_kept_tables(model, plan.record)
    return model


def _size_kept_tables(model: PreTrainedModel, record: PatchRecord) -> None:
    """Kept learned tables take their recorded length (BART's two stacks may differ; the config holds one length)."""
    for stack in present_stacks(model):
        entry, table = record.stacks.get(stack.name), model.base_model.get_submodule(stack.table)
        if entry is None or not entry.keeps_table or not entry.max_length or entry.mapped:
            continue
        if not isinstance(table, nn.Embedding):
            continue
        rows = entry.max_length + stack.offset(model.config)
        if table.num_embeddings != rows:
            table.weight = nn.Parameter(table.weight.new_zeros(rows, table.embedding_dim))
            table.num_embeddings = rows
        stack_module = model.base_model.get_submodule(stack.module)
        for attribute in ("max_source_positions", "max_target_positions"):
            if hasattr(stack_module, attribute):
                setattr(stack_module, attribute, entry.max_length)


def _request(entry: StackRecord) -> dict[str, Any]:
    """The `patch_model` request that rebuilds a recorded stack (a position map is re-installed as state)."""
    options = {**entry.options, **({"position_ids": None, "group_size": None} if entry.mapped else {})}
    return {"encoding": entry.encoding, **options, "keep_absolute": entry.keep_absolute, **entry.attention_request()}


def _restore_patch(model: PreTrainedModel, record: PatchRecord, exact: bool = True) -> None:
    """Patch `model` as `record` says, then put the record itself on the config.

    Length changes are restored as state (table sizes, position maps), not replayed: the config already has the grown
    sizes, and `patch_model(max_length=...)` only ever grows a model.
    """
    present = {s.name: s for s in present_stacks(model)}
    missing = sorted(set(record.stacks) - set(present))
    if missing and exact:
        raise ValueError(f"The posenc block patches {missing}, which {type(model).__name__} does not have.")
    requests = {name: _request(record.stacks[name]) for name in present if name in record.stacks}
    try:
        patch_model(model, encoder=requests.get("encoder"), decoder=requests.get("decoder"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"The posenc block cannot be applied to {type(model).__name__}: {error}") from error
    rebuilt = read_record(model.config)
    stacks = {name: _merged_record(rebuilt.stacks[name], record.stacks[name]) for name in requests}
    for name in requests:
        if record.stacks[name].mapped:
            _install_position_map(model, present[name], record.stacks[name])
    write_record(model.config, PatchRecord(stacks))


def _merged_record(rebuilt: StackRecord, recorded: StackRecord) -> StackRecord:
    """The rebuilt stack's record plus the recorded length fields; a recorded option that the rebuilt encoding does
    not reproduce means a block that hf_posenc did not write."""
    mapping = {
        k: recorded.options[k] for k in ("position_ids", "group_size") if recorded.mapped and k in recorded.options
    }
    options = {**rebuilt.options, **mapping}
    differing = {k: (v, options.get(k)) for k, v in recorded.options.items() if options.get(k) != v}
    if differing:
        raise ValueError(f"The posenc block's options do not rebuild: recorded vs rebuilt {differing}.")
    return replace(rebuilt, options=options, max_length=recorded.max_length, table_init=recorded.table_init)


def _install_position_map(model: PreTrainedModel, stack, entry: StackRecord) -> None:
    """Re-install the position map of a `learned` stack (LongEmbed's recurrent / grouped ids)."""
    table, offset = model.base_model.get_submodule(stack.table), stack.offset(model.config)
    options = entry.options
    position_map = PositionMap(
        options["position_ids"], table.num_embeddings - offset, options.get("group_size"), offset, stack
    )
    handle = table.register_forward_pre_hook(position_map, with_kwargs=True)
    remember_hook(model.base_model.get_submodule(stack.module), handle)
    if stack.embeddings and entry.max_length:
        ensure_buffers(model.base_model.get_submodule(stack.embeddings), entry.max_length + offset)


def _read_weights(folder: Path, rename: Callable[[str], str | None]) -> dict[str, torch.Tensor]:
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
    for table in installed_tables(model):
        table.forget_original()
    if model.can_generate() and (folder / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    model.config._name_or_path = str(name_or_path)
    model.eval()
    return model.to(device) if device is not None else model


register_model_types()
