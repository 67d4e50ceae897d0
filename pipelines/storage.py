"""fsspec URL helpers: open, atomic writes, checksums.

Every path in mixpipe is an fsspec URL; a plain local path is the default protocol. Writes go to a
temporary name beside the target and are renamed into place, so a reader never sees a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

_CHUNK = 1 << 20


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path within it."""
    return url_to_fs(str(url))


def join(base: str, *parts: str) -> str:
    """Join URL parts with '/', keeping the protocol of ``base``."""
    base = str(base).rstrip("/")
    return "/".join([base, *(str(p).strip("/") for p in parts)])


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``url`` for writing through a temp file that is renamed into place on success.

    On error the temp file is removed and the target is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only, got mode {mode!r}")
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, mode) as handle:
            yield handle
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(tmp)
        raise


def write_bytes(url: str, data: bytes) -> None:
    with atomic_open(url, "wb") as handle:
        handle.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode())


def write_json(url: str, obj: Any) -> None:
    """Write ``obj`` as stable, human-diffable JSON (sorted keys, trailing newline)."""
    write_text(url, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        return handle.read()


def list_names(url: str) -> list[str]:
    """Names of the entries directly under the folder ``url`` (empty if it does not exist)."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(url: str) -> str:
    """Hex sha256 of the file at ``url``, streamed in 1 MiB chunks."""
    fs, path = filesystem(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
