"""Cheap adaptation to long inputs: cached masked-LM adaptation for the recipes, and the one-call `adapt`.

Masked-LM training on running text with position augmentation (PoSE, Zhu et al. 2023, arXiv:2309.10400) teaches an
encoder positions up to a target length while reading only short windows, before any task. It is the same for every
task seed, so the recipes cache the adapted encoder under the package cache (`$HF_POSENC_CACHE/adapted/<hash>`), keyed
by a hash of every setting that affects it (`adaptation_key`), and later runs reuse it. An entry is written into a
temporary folder and renamed into place only when complete, with a manifest of its files' sizes and hashes that a
reader checks; an incomplete or corrupted entry is recomputed. The key holds settings, not code: an entry also records
a digest of the code the adaptation runs (`code_digest`), and reusing one made by other code says so (the MLM
results' `cache.code`; delete the entry, or run with `mlm_cache=False`, to adapt anew).

`adapt` is the same adaptation for any model and list of texts, outside the recipes' settings; `hf-posenc adapt`
is its command line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..hub.assets import cache_dir
from ..version import __version__
from .settings import RunConfig

__all__ = [
    "ADAPTATION_FIELDS",
    "HEAD_WARMUP_FIELDS",
    "adaptation_key",
    "cached_adaptation",
    "code_digest",
    "file_digest",
]

ADAPTATION_FIELDS = (
    "model",
    "encoding",
    "encoding_options",
    "keep_absolute",
    "max_length",
    "mlm_steps",
    "mlm_dataset",
    "mlm_length",
    "mlm_batch_size",
    "mlm_learning_rate",
    "mlm_probability",
    "position_augmentation",
    "train_only",
    "lora_r",
    "lora_alpha",
    "data_seed",
    "weight_decay",
    "warmup_ratio",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "mixed_precision",
)
"""The run settings that change the adapted encoder (besides the seed, the augmentation target and the files'
contents, which `adaptation_key` adds). Evaluation lengths and task settings are not among them."""

HEAD_WARMUP_FIELDS = ("mlm_head_warmup_steps", "mlm_head_learning_rate")
"""Settings of the MLM head's warm-up: in the key only when the warm-up runs, so that adaptations cached before it
existed (no warm-up) keep their entries."""

MANIFEST = "manifest.json"
ENCODER_FILE = "encoder.safetensors"
RESULTS_FILE = "mlm_results.json"
CODE_FILE = "code.json"

ADAPTATION_SOURCES = ("*.py", "encodings/*.py", "recipes/mlm.py", "recipes/methods.py", "recipes/training.py")
"""The package sources an adaptation runs (globs under the package folder): the core (encodings, patching, the
attention backend, augmentation) and the recipes' masked-LM training."""

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A sha256 over the `ADAPTATION_SOURCES` files' names and bytes: changes when the code an adaptation runs does."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in ADAPTATION_SOURCES for p in PACKAGE_ROOT.glob(pattern)}):
        digest.update(f"{path.relative_to(PACKAGE_ROOT).as_posix()}:{file_digest(path)};".encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_digest(folder: Path) -> str:
    """A digest of a checkpoint folder's config and weights (what the adaptation starts from)."""
    names = sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin") and p.is_file())
    return hashlib.sha256("".join(f"{n}:{file_digest(folder / n)};" for n in names).encode()).hexdigest()


def adaptation_key(run: RunConfig, checkpoint: str, seed: int, target_length: int | None) -> dict[str, Any]:
    """Everything that determines the adapted encoder, as a JSON-able dict (its hash names the cache entry).

    Args:
        run: the run's settings (the `ADAPTATION_FIELDS`).
        checkpoint: the resolved checkpoint (a local folder's config and weights are hashed; a Hub id is taken
            by name).
        seed: the adaptation's seed.
        target_length: the augmentation target (None without augmentation).
    """
    settings = {name: getattr(run, name) for name in ADAPTATION_FIELDS}
    if run.mlm_head_warmup_steps:
        settings.update({name: getattr(run, name) for name in HEAD_WARMUP_FIELDS})
    folder = Path(checkpoint)
    settings["checkpoint_digest"] = _folder_digest(folder) if folder.is_dir() else checkpoint
    data = Path(run.mlm_dataset)
    settings["data_digest"] = file_digest(data) if data.is_file() else run.mlm_dataset
    return {**settings, "seed": seed, "augmentation_target": target_length, "hf_posenc": __version__}


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_entry(folder: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The entry's encoder state and MLM results, or None when it is missing or incomplete."""
    from safetensors.torch import load_file

    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        for name, (size, digest) in manifest["files"].items():
            path = folder / name
            if path.stat().st_size != size or file_digest(path) != digest:
                return None
        return load_file(folder / ENCODER_FILE), json.loads((folder / RESULTS_FILE).read_text())
    except (OSError, ValueError, KeyError):
        return None


def _write_entry(folder: Path, key: dict, state: dict[str, torch.Tensor], results: dict) -> None:
    """Write the entry into a temporary sibling folder, then rename it into place (another writer may win)."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, staging / ENCODER_FILE)
        (staging / RESULTS_FILE).write_text(json.dumps(results, default=str))
        (staging / "settings.json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str))
        (staging / CODE_FILE).write_text(json.dumps({"digest": code_digest(), "sources": list(ADAPTATION_SOURCES)}))
        files = {p.name: (p.stat().st_size, file_digest(p)) for p in sorted(staging.iterdir())}
        (staging / MANIFEST).write_text(json.dumps({"files": files}))  # written last: marks the entry complete
        if folder.exists():  # an incomplete entry left by a killed writer
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except OSError:
        if folder.exists() and _read_entry(folder) is not None:
            return  # another process wrote the same entry first
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def cached_adaptation(
    key: dict[str, Any],
    compute: Callable[[], tuple[dict[str, torch.Tensor], dict]],
    log: Callable[[str], None] = print,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The adapted encoder's state and MLM results for `key`: read from the cache when a complete entry exists
    (printing "reusing adapted checkpoint <hash>"), else computed with `compute` and stored.

    The MLM results get `cache` = {"hash", "reused", "folder"}.
    """
    digest = _key_hash(key)
    folder = cache_dir() / "adapted" / digest
    found = _read_entry(folder)
    if found is not None:
        log(f"reusing adapted checkpoint {digest} ({folder})")
        state, results = found
        code = {"entry": _entry_code(folder), "current": code_digest()}
        code["same"] = code["entry"] == code["current"]
        if not code["same"]:
            made_by = f"code {code['entry'][:12]}" if code["entry"] else "a version that did not record its code"
            log(
                f"warning: adapted checkpoint {digest} was made by {made_by}, not the current adaptation code "
                f"({code['current'][:12]}); its settings match. Delete {folder} (or set mlm_cache=False) to adapt "
                "anew."
            )
        return state, {**results, "cache": {"hash": digest, "reused": True, "folder": str(folder), "code": code}}
    state, results = compute()
    _write_entry(folder, key, state, results)
    code = {"entry": code_digest(), "current": code_digest(), "same": True}
    return state, {**results, "cache": {"hash": digest, "reused": False, "folder": str(folder), "code": code}}


def _entry_code(folder: Path) -> str | None:
    """The code digest an entry recorded (None for entries written before entries recorded it)."""
    try:
        return json.loads((folder / CODE_FILE).read_text())["digest"]
    except (OSError, ValueError, KeyError):
        return None


def untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of a state dict's tensors with no shared storage (safetensors refuses shared tensors)."""
    return {k: v.detach().clone().cpu() for k, v in state.items()}


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
