"""Checkpoint folders, safely: complete weight files, local paths versus Hub ids, output paths, sentence-transformers
files.

Every file the hub tools write goes through `hf_posenc.hub.files` (a temporary file in the target folder, then
`os.replace`), so an interrupted write leaves the old file or none, never half of one. Every reader says which file
is broken: a JSON file that does not parse, a safetensors file shorter than its header says (an interrupted download
or copy).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..extension import check_max_length
from .files import atomic_path, atomic_write, read_json

SENTENCE_TRANSFORMERS_CONFIG = "sentence_bert_config.json"
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json", SENTENCE_TRANSFORMERS_CONFIG)

# ---------------------------------------------------------------------------------------------------------------------
# Atomic writes (hf_posenc.hub.files), complete reads
# ---------------------------------------------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON (with a final newline) to `path`, atomically."""
    return atomic_write(path, json.dumps(data, indent=2) + "\n")


def copy_file_atomic(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy `source` to `target` through a temporary file beside `target` and `os.replace`."""
    with atomic_path(target) as temporary:
        shutil.copy2(source, temporary)
    return Path(target)


def check_safetensors(path: str | os.PathLike) -> Path:
    """Check that a safetensors file is complete: its header parses and the file is as long as the header says.

    The format is an 8-byte little-endian header length, a JSON header whose `data_offsets` locate every tensor,
    then the data; a truncated file (an interrupted download or copy) ends before the last offset.
    """
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with path.open("rb") as stream:
        prefix = stream.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if length is None or 8 + length > size:
            problem = "its header is cut off"
        else:
            try:
                header = json.loads(stream.read(length))
                end = max((e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError):
                problem = "its header is not valid"
            else:
                if 8 + length + end > size:
                    problem = f"it holds {size:,} bytes of the {8 + length + end:,} its header announces"
    if problem:
        raise ValueError(f"{path} is incomplete or corrupt ({problem}). Download or save the checkpoint again.")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Paths: local folders, Hub ids, outputs
# ---------------------------------------------------------------------------------------------------------------------


def is_hub_id(name: Any) -> bool:
    """Whether `name` is a valid Hub repo id ("name" or "namespace/name")."""
    if not isinstance(name, str) or not name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def looks_like_path(name: str | os.PathLike) -> bool:
    """Whether `name` can only mean a local path: absolute, `./` or `../`, `~`, or a separator in a non-Hub id."""
    text = os.fspath(name)
    separators = tuple({os.sep, "/", *((os.altsep,) if os.altsep else ())})
    if os.path.isabs(text) or text.startswith(("~", ".")) or not isinstance(name, str):
        return True
    return any(s in text for s in separators) and not is_hub_id(text)


def check_local_source(name: str | os.PathLike) -> Path | None:
    """The local folder `name` names, None for a Hub id; a `FileNotFoundError` for a missing or non-folder path."""
    path = Path(os.path.expanduser(os.fspath(name)))
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is a file; pass the checkpoint folder that holds config.json.")
        return path
    if looks_like_path(name) or not is_hub_id(os.fspath(name)):
        raise FileNotFoundError(f"The local folder {path} does not exist: check the path.")
    return None


def check_output_folder(output: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Refuse an output that is a file, the input folder itself or a folder inside it (before any work is done)."""
    output = Path(os.path.expanduser(os.fspath(output)))
    if output.exists() and not output.is_dir():
        raise ValueError(f"The output {output} is a file; name a folder to write the checkpoint to.")
    if source is not None and Path(source).is_dir():
        source, resolved = Path(source).resolve(), output.resolve()
        if resolved == source:
            raise ValueError(f"The output {output} is the input folder; name a new folder (the input stays as is).")
        if source in resolved.parents:
            raise ValueError(f"The output {output} is inside the input folder {source}; name a folder outside it.")
    return output


# ---------------------------------------------------------------------------------------------------------------------
# sentence-transformers folders
# ---------------------------------------------------------------------------------------------------------------------


def is_sentence_transformers(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a sentence-transformers checkpoint (it lists its modules in `modules.json`)."""
    folder = Path(folder)
    return (folder / "modules.json").is_file() or (folder / SENTENCE_TRANSFORMERS_CONFIG).is_file()


def update_max_seq_length(folder: str | os.PathLike, max_length: int) -> bool:
    """Set `max_seq_length` in a sentence-transformers folder's `sentence_bert_config.json` to `max_length`.

    sentence-transformers before 6 truncates to this value (all-MiniLM-L6-v2 ships 256), whatever the tokenizer
    allows; from version 6 on the file has no such key and the tokenizer's `model_max_length` is the limit. Returns
    False, and writes nothing, when the folder has no such file or key. The file is rewritten atomically.
    """
    max_length = check_max_length(max_length)
    path = Path(folder) / SENTENCE_TRANSFORMERS_CONFIG
    if not path.is_file():
        return False
    settings = read_json(path)
    if not isinstance(settings, dict):
        raise ValueError(f"{path} is not a JSON object: the file is corrupt.")
    if "max_seq_length" not in settings:
        return False
    settings["max_seq_length"] = max_length
    write_json_atomic(path, settings)
    return True


def copy_sentence_transformers_files(source: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Copy a sentence-transformers checkpoint's own files (module list, Pooling, Normalize and other module folders)
    from `source` to `target`, where `save_pretrained` wrote the transformer. Returns False when `source` has none.

    Without them sentence-transformers loads the transformer alone with mean pooling and no normalization: other
    embeddings than the checkpoint's. Every file is copied atomically.
    """
    source, target = Path(source), Path(target)
    if not is_sentence_transformers(source):
        return False
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (source / name).is_file():
            copy_file_atomic(source / name, target / name)
    modules = read_json(source / "modules.json") if (source / "modules.json").is_file() else []
    for module in modules if isinstance(modules, list) else []:
        path = module.get("path") if isinstance(module, dict) else None
        if not path or not (source / path).is_dir():
            continue  # the Transformer module lives at the root, written by save_pretrained
        (target / path).mkdir(parents=True, exist_ok=True)
        for file in sorted((source / path).rglob("*")):
            if file.is_file():
                copy_file_atomic(file, target / path / file.relative_to(source / path))
            elif file.is_dir():
                (target / path / file.relative_to(source / path)).mkdir(parents=True, exist_ok=True)
    return True


__all__ = [
    "SENTENCE_TRANSFORMERS_CONFIG",
    "SENTENCE_TRANSFORMERS_FILES",
    "check_local_source",
    "check_output_folder",
    "check_safetensors",
    "copy_file_atomic",
    "copy_sentence_transformers_files",
    "is_hub_id",
    "is_sentence_transformers",
    "looks_like_path",
    "update_max_seq_length",
    "write_json_atomic",
]
