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

import huggingface_hub
import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils.loading_report import LoadStateDictInfo, log_state_dict_report

from ..architectures import ARCHITECTURES, present_stacks
from ..config_form import (
    LOADER_MODULE,
    POSENC_PREFIX,
    auto_model_classes,
    auto_targets,
    base_model_type,
    disarm_tripwire,
)
from ..patching import patch_model
from ..record import CONFIG_KEY, PatchRecord, StackRecord, read_record, write_record
from ..state import PositionMap, ensure_buffers, installed_tables, mark_loaded, remember_hook
from .folders import check_local_source
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


LOADER_ARGUMENTS = frozenset({"trust_remote_code", "adapter_kwargs", "code_revision", "force_download", "proxies"})
"""transformers' `from_pretrained` arguments that change nothing here (no code is ever run from a checkpoint; the
download options that matter are named parameters)."""


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
    ignore_mismatched_sizes: bool = False,
    output_loading_info: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a checkpoint saved from an hf_posenc-patched model, a legacy relative-position checkpoint, or a plain one.

    The keyword arguments follow transformers' `from_pretrained`: config overrides such as `num_labels=5`, a new task
    head (`model_class`), `ignore_mismatched_sizes`, `torch_dtype` / `dtype`, `device_map`, `use_safetensors`,
    `low_cpu_mem_usage`, `output_loading_info`. New head weights are initialized as transformers initializes them and
    reported in transformers' load report; the position-encoding weights always load strictly.

    Args:
        name_or_path: a local folder or a Hub repo id (only `*.json`, `*.safetensors`, tokenizer and card files are
            downloaded; no code). A path-looking name (absolute, `./`, `../`, with a separator and not a Hub id)
            that does not exist is a `FileNotFoundError`, never a Hub request.
        model_class: the transformers class to build, as a class or a name looked up in the `transformers` namespace
            (e.g. "BertForSequenceClassification", or an `AutoModelFor*` class); default `config.architectures[0]`.
            A different head than the saved one gets its new parameters freshly initialized, as in transformers.
        config: a config to use instead of the folder's `config.json` (what the Auto classes pass).
        dtype: the parameters' dtype (`torch_dtype` is accepted too); default the checkpoint's (`config.dtype`).
        device: where to put the model; default CPU. `device_map` naming one device (or "auto": the first
            accelerator, else CPU) does the same.
        revision, token, cache_dir, local_files_only: Hub download options.
        ignore_mismatched_sizes: initialize afresh the head weights whose shape differs from the checkpoint's (e.g.
            a classifier loaded with another `num_labels`), instead of raising. Never applies to position weights.
        output_loading_info: also return a dict of `missing_keys`, `unexpected_keys`, `mismatched_keys`,
            `error_msgs`, as transformers does.
        **kwargs: config overrides (any attribute of the model's config, e.g. `num_labels`, `id2label`,
            `hidden_dropout_prob`), and what transformers' Auto classes pass along (`subfolder`, `use_safetensors`,
            `low_cpu_mem_usage`, `attn_implementation`, `trust_remote_code` (ignored: no code is ever run from the
            checkpoint), ...). Anything else is a `TypeError` naming it.

    Returns:
        The model in eval mode, patched as recorded, with the `posenc` attention backend set where it is needed (and
        the loading info with `output_loading_info=True`).

    Raises:
        FileNotFoundError: `name_or_path` is neither a folder nor a Hub repo id.
        ValueError: a folder that is not a safetensors checkpoint, or an incomplete or corrupt file in it (named); a
            missing, corrupted or newer-major `posenc` block; weights whose keys or shapes do not match the block; a
            head whose shape differs without `ignore_mismatched_sizes=True`; a model class outside transformers.
        TypeError: an argument that is neither a loading option nor an attribute of the model's config.
    """
    dtype, device, subfolder, attn = _loader_options(dtype, device, kwargs)
    folder = _local_folder(name_or_path, revision, token, cache_dir, local_files_only, subfolder)
    config_dict = config.to_dict() if config is not None else read_config(folder)
    plan = load_plan(config_dict)
    base_type = plan.base_type if plan is not None else base_model_type(config_dict["model_type"])
    overrides = _config_overrides(base_type, kwargs)
    if plan is None:  # an ordinary transformers checkpoint
        weight_files(folder)  # a truncated file is named here, not deep inside transformers
        cls = resolve_model_class(model_class or saved_architecture(config_dict), config_dict.get("model_type"))
        options = {"config": config, "dtype": dtype, "attn_implementation": attn}
        loaded = cls.from_pretrained(
            folder,
            use_safetensors=True,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            output_loading_info=output_loading_info,
            **{k: v for k, v in options.items() if v is not None},
            **overrides,
        )
        model = loaded[0] if output_loading_info else loaded
        model = model.to(device) if device is not None else model
        return (model, loaded[1]) if output_loading_info else model
    cls = resolve_model_class(model_class or plan.architecture, plan.base_type)
    state = _read_weights(folder, plan.rename)
    model = _build(cls, plan, dtype, overrides)
    exact = cls.__name__ == plan.architecture
    _restore_patch(model, plan.record, exact=exact)
    info = load_weights(model, state, exact=exact, plan=plan, ignore_mismatched_sizes=ignore_mismatched_sizes)
    _report(model, name_or_path, info, ignore_mismatched_sizes)
    model = _finish(model, folder, name_or_path, device)
    return (model, info) if output_loading_info else model


def _loader_options(dtype, device, kwargs: dict[str, Any]) -> tuple[Any, Any, str | None, str | None]:
    """Take the loading options out of `kwargs` (what stays are config overrides); refuse what would be ignored."""
    torch_dtype = kwargs.pop("torch_dtype", None)
    dtype = torch_dtype if dtype is None else dtype
    device = _device_of(kwargs.pop("device_map", None), device)
    subfolder = kwargs.pop("subfolder", None) or None
    if kwargs.pop("use_safetensors", None) is False:
        raise ValueError(
            "use_safetensors=False: hf_posenc loads safetensors only (pickled weights can run code when loaded)."
        )
    low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", None)
    if low_cpu_mem_usage not in (None, True, False):
        raise TypeError(f"low_cpu_mem_usage must be a bool, got {low_cpu_mem_usage!r}.")
    attn = kwargs.pop("attn_implementation", None)
    if attn not in (None, "sdpa", "posenc"):
        raise ValueError(f"Patched models run in the 'posenc' attention backend (over SDPA); got {attn!r}.")
    for key in LOADER_ARGUMENTS | {k for k in kwargs if k.startswith("_")}:
        kwargs.pop(key, None)
    return (None if dtype == "auto" else dtype), device, subfolder, attn


def _device_of(device_map: Any, device: Any) -> Any:
    """The one device a `device_map` names: a device, `{"": device}`, or "auto" (first accelerator, else CPU)."""
    if device_map is None:
        return device
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if device_map == "auto":
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        device_map = accelerator if accelerator is not None else "cpu"
    if not isinstance(device_map, str | torch.device | int):
        raise ValueError(
            f"hf_posenc loads onto one device; got device_map={device_map!r}. Pass device_map='auto', a device such "
            "as 'cuda:0' or 'cpu', or {'': device}."
        )
    return device if device is not None else device_map


def _config_overrides(base_type: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The remaining `kwargs` as config overrides (attributes of the model type's config, as transformers takes them);
    a `TypeError` names the others."""
    config_class = CONFIG_MAPPING[base_type] if base_type in CONFIG_MAPPING else PreTrainedConfig  # noqa: SIM401
    defaults = config_class()
    unknown = sorted(k for k in kwargs if not hasattr(defaults, k))
    if unknown:
        raise TypeError(
            f"hf_posenc.from_pretrained got unexpected argument(s) {unknown}: neither a loading option of "
            f"transformers' from_pretrained nor an attribute of {config_class.__name__}."
        )
    return dict(kwargs)


def _local_folder(name_or_path, revision, token, cache_dir, local_files_only, subfolder) -> Path:
    """The checkpoint folder: a local one, or a snapshot of a Hub repo without any code files."""
    path = check_local_source(name_or_path)
    if path is not None:
        return path / subfolder if subfolder else path
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "README.md"]
    if subfolder:
        patterns = [f"{subfolder}/{p}" for p in patterns]
    folder = huggingface_hub.snapshot_download(
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


def _build(
    cls: type[PreTrainedModel], plan: LoadPlan, dtype, overrides: dict[str, Any] | None = None
) -> PreTrainedModel:
    """The model built from the plan's config (with `overrides` set on it, as transformers sets them): freshly
    initialized as transformers initializes it; every tensor the checkpoint has then comes from the checkpoint."""
    config = CONFIG_MAPPING[plan.base_type].from_dict(copy.deepcopy(plan.config))
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
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
    for path in weight_files(folder):  # each checked complete first
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} is incomplete or corrupt ({error}). Download or save it again.") from None
        for key, tensor in tensors.items():
            new_key = rename(key)
            if new_key is not None:
                state[new_key] = tensor
    return state


def load_weights(
    model: PreTrainedModel,
    state: dict[str, torch.Tensor],
    exact: bool,
    plan: LoadPlan,
    ignore_mismatched_sizes: bool = False,
) -> dict[str, list]:
    """Load `state` into `model`: the position-encoding and base-model tensors strictly (every one from the
    checkpoint, tied ones aside, shapes equal); head tensors as transformers loads them (missing or, with
    `ignore_mismatched_sizes`, differently shaped ones keep their fresh initialization).

    Returns:
        transformers' loading info: `missing_keys` (newly initialized), `unexpected_keys` (unused),
        `mismatched_keys` (`(key, checkpoint shape, model shape)`, newly initialized), `error_msgs`.
    """
    state = _align_prefix(model, state)
    expected = model.state_dict()
    mismatched = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    missing = [k for k in expected if k not in state and not _is_tied(model, k, state)]
    unexpected = [k for k in state if k not in expected]
    head = set(_head_keys(model, [k for k, _, _ in mismatched] + missing + unexpected))
    position = [k for k, _, _ in mismatched if _is_position_key(model, k) or k not in head]
    if position:
        shapes = "; ".join(f"{k}: checkpoint {c}, model {m}" for k, c, m in mismatched if k in position)
        raise ValueError(
            f"The weights do not match the model rebuilt from config.json ({plan.source}): {shapes}. "
            f"Was config.json (its '{CONFIG_KEY}' block or the model sizes) edited after saving?"
        )
    if mismatched and not ignore_mismatched_sizes:
        shapes = "; ".join(f"{k}: checkpoint {c}, model {m}" for k, c, m in mismatched)
        raise ValueError(
            f"The {type(model).__name__} head does not fit the checkpoint's weights: {shapes}. Pass "
            "ignore_mismatched_sizes=True to initialize those weights afresh (e.g. a classifier with another "
            "num_labels), as in transformers."
        )
    strict_missing = [k for k in missing if k not in head or (exact and _is_position_key(model, k))]
    strict_unexpected = [k for k in unexpected if _is_position_key(model, k) or (exact and k not in head)]
    if strict_missing or strict_unexpected:
        raise ValueError(
            f"The weights do not match the model rebuilt from config.json ({plan.source}): missing "
            f"{strict_missing[:6]}{'...' if len(strict_missing) > 6 else ''}, unexpected {strict_unexpected[:6]}"
            f"{'...' if len(strict_unexpected) > 6 else ''}. Was config.json (its '{CONFIG_KEY}' block) edited after "
            "saving?"
        )
    skip = {k for k, _, _ in mismatched}
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state.items() if k in expected and k not in skip}, strict=False)
    return {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": mismatched, "error_msgs": []}


def _is_position_key(model: PreTrainedModel, key: str) -> bool:
    """Whether `key` is a position-encoding tensor: an encoding's parameters or a stack's learned table."""
    tables = [stack.table for stack in present_stacks(model)]
    return ".posenc." in f".{key}" or any(f"{table}." in key for table in tables)


def _report(model: PreTrainedModel, name_or_path: Any, info: dict[str, list], ignore_mismatched_sizes: bool) -> None:
    """transformers' load report (newly initialized, unused and re-initialized tensors), logged as it logs it."""
    if not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]):
        return
    report = LoadStateDictInfo(
        missing_keys=set(info["missing_keys"]),
        unexpected_keys=set(info["unexpected_keys"]),
        mismatched_keys=set(info["mismatched_keys"]),
        error_msgs=[],
        conversion_errors={},
        skipped_pp_keys=set(),
    )
    log_state_dict_report(model, str(name_or_path), ignore_mismatched_sizes, report, logger)


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
    mark_loaded(model)
    if model.can_generate() and (folder / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    model.config._name_or_path = str(name_or_path)
    model.eval()
    return model.to(device) if device is not None else model


register_model_types()
