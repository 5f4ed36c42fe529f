"""Files written whole or not at all, and JSON files read with an error that names the file and the fix.

A process killed while writing leaves either the previous file or the new one, never half of one: every writer
puts its bytes (or a whole folder, such as a training checkpoint) under a temporary name in the target's own folder
and renames it into place with `os.replace`, which is atomic on POSIX and Windows within one file system. Readers
then only have to tell a missing file from a complete one; `read_json` also names files that were damaged outside
hf_posenc. Standard library only, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write", "publish_folder", "read_json"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block ends without an error, rename it onto `path`.

    Write the file (or, with `folder=True`, fill the folder) at the yielded path. On an error the temporary path is
    removed and `path` is left as it was; a kill leaves only a hidden `.<name>.tmp-*` entry, which readers ignore.

    Args:
        path: The final file or folder; its parent folder is created.
        folder: Yield an (existing, empty) temporary folder instead of a file path. An existing folder at `path` is
            replaced as a whole (`os.replace` cannot rename onto a non-empty folder, so it is removed first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _new_temporary(path, folder)
    try:
        yield temporary
        if folder:
            publish_folder(temporary, path)
        else:
            os.replace(temporary, path)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


def _new_temporary(path: Path, folder: bool) -> Path:
    """Create a fresh hidden `.<name>.tmp-*` file or folder beside `path`, with the permissions a plain `open` or
    `mkdir` would give (0o666 / 0o777 less the umask): `tempfile.mkstemp`/`mkdtemp` make them owner-only, and the
    rename would carry that onto every saved checkpoint, card and results file."""
    while True:
        candidate = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
        try:
            if folder:
                os.mkdir(candidate, 0o777)
            else:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:  # another writer drew the same name: draw again
            continue


def publish_folder(temporary: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename the complete folder `temporary` onto `path` (same file system), replacing a folder already there.

    `os.replace` cannot rename onto a non-empty folder, so an old folder at `path` is first renamed aside and removed
    after the swap: a kill in between leaves the new folder in place and a hidden leftover, never a mix of the two.
    """
    path = Path(path)
    aside = None
    if path.is_dir():
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, aside / path.name)
    os.replace(temporary, path)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return path


def atomic_write(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write `data` (text in `encoding`, or bytes) to `path` atomically (see `atomic_path`); returns the path."""
    payload = data.encode(encoding) if isinstance(data, str) else data
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())  # the bytes reach the disk before the rename makes them the file
    return Path(path)


def read_json(path: str | os.PathLike, fix: str = "") -> Any:
    """Read a JSON file; a missing, empty, non-UTF-8 or malformed one is an error naming the file and `fix`.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is empty, not UTF-8 or not valid JSON (with the line and column).
    """
    path = Path(path)
    hint = f" {fix}" if fix else ""
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}.{hint}")
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path} is empty (an interrupted write or a damaged copy).{hint}")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}).{hint}") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}).{hint}"
        ) from None
