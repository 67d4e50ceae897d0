"""fsspec URL helpers: filesystems with their options, atomic writes, checksums.

Every path in mixpipe is an fsspec URL; a plain local path is the default protocol. A reader never
sees a partial file: a local write goes to a temporary name beside the target and is renamed into
place; an object store's PUT is itself atomic (the object appears whole or not at all).

Options for the shared store (``storage.options`` in params: an endpoint, a region; never a
secret) are set once per process with :func:`configure`, which also puts them in
``MIXPIPE_STORAGE_OPTIONS`` so that the Ray workers a stage starts (given that variable in their
runtime environment) open the store the same way. Credentials come from each filesystem's own
environment (``AWS_ACCESS_KEY_ID``..., ``AWS_ENDPOINT_URL`` for an S3-compatible endpoint).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
from fsspec.core import url_to_fs

from pipelines.errors import StorageError

_CHUNK = 1 << 20
OPTIONS_ENV = "MIXPIPE_STORAGE_OPTIONS"

# Object stores mixpipe can keep shared state in, and the package fsspec needs for each.
OBJECT_STORES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
_EXTRA = {"s3fs": "s3fs (a mixpipe dependency; reinstall with `make setup`)", "gcsfs": "gcsfs: pip install 'mixpipe[gcs]'"}


def protocol_of(url: str) -> str:
    """The URL's scheme, ``file`` for a plain path."""
    return urlsplit(str(url)).scheme.lower() if "://" in str(url) else "file"


def is_local(url: str) -> bool:
    return protocol_of(url) in ("file", "local")


def check_shared_uri(uri: str | None) -> str | None:
    """Return ``uri`` unchanged if it can hold state shared by every node, else raise ``ValueError``
    (a pydantic validator): an object store URL with a bucket (``s3://bucket/prefix``) or an absolute
    path on a filesystem every node mounts; no query string (``join`` appends paths to the URL, and an
    endpoint belongs in ``AWS_ENDPOINT_URL`` or ``storage.options``)."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    protocol = protocol_of(uri)
    if protocol in ("file", "local"):
        path = parts.path if "://" in uri else uri
        if not path.startswith("/"):
            raise ValueError("must be an object store URL (s3://bucket/prefix) or an absolute path every node mounts")
        return uri
    if protocol not in OBJECT_STORES:
        known = ", ".join(f"{scheme}://" for scheme in OBJECT_STORES)
        raise ValueError(f"scheme {protocol}:// is not supported for shared state (use {known} or an absolute path)")
    if not parts.netloc:
        raise ValueError(f"names no bucket (expected {protocol}://bucket/prefix)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment: give an endpoint in AWS_ENDPOINT_URL or "
                         "storage.options (e.g. {endpoint_url: ...})")
    return uri


def check_options(options: Mapping[str, Any], where: str = "") -> Mapping[str, Any]:
    """Return fsspec ``options`` unchanged, or raise ``ValueError`` if one of them (at any depth) is a
    credential: options are recorded in dvc.lock and passed to Ray workers in their environment."""
    from pipelines.urls import looks_secret

    for name, value in options.items():
        key = f"{where}.{name}" if where else str(name)
        if looks_secret(str(name)):
            raise ValueError(f"must not hold credentials ({key}): they would be recorded in dvc.lock and sent to "
                             "Ray workers; give them to the filesystem through its environment (AWS_ACCESS_KEY_ID, ...)")
        if isinstance(value, Mapping):
            check_options(value, key)
    return options


def configure(options: Mapping[str, Any] | None, protocol: str | None) -> None:
    """Use ``options`` for every URL of ``protocol`` opened in this process and its Ray workers."""
    if options and protocol:
        os.environ[OPTIONS_ENV] = json.dumps({protocol: dict(options)}, sort_keys=True)
    else:
        os.environ.pop(OPTIONS_ENV, None)


def options_for(protocol: str) -> dict[str, Any]:
    """The fsspec storage options configured for ``protocol`` (see :func:`configure`)."""
    raw = os.environ.get(OPTIONS_ENV)
    if not raw:
        return {}
    return dict(json.loads(raw).get(protocol, {}))


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` (with its configured options) and the path within it.

    Raises:
        ImportError: the package for an object store's scheme is missing, with how to install it.
    """
    protocol = protocol_of(url)
    try:
        return url_to_fs(str(url), **options_for(protocol))
    except ImportError as error:
        package = OBJECT_STORES.get(protocol)
        if package is None:
            raise
        raise ImportError(f"{url.split('://')[0]}:// URLs need {_EXTRA[package]}") from error


def arrow_filesystem(url: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path)`` for Ray Train/Tune's ``storage_filesystem`` and ``storage_path``.

    A local path gives ``(None, path)`` (Ray's default). Any other URL goes through the same fsspec
    filesystem as the rest of mixpipe (``PyFileSystem(FSSpecHandler(...))``), so an endpoint or
    other option applies to Ray's checkpoints exactly as to mixpipe's own files.
    """
    if is_local(url):
        return None, str(url).removeprefix("file://")
    import pyarrow.fs

    fs, path = filesystem(url)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def join(base: str, *parts: str) -> str:
    """Join URL parts with '/', keeping the protocol of ``base``."""
    base = str(base).rstrip("/")
    return "/".join([base, *(str(p).strip("/") for p in parts)])


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``url`` for writing so that readers see the old content or the whole new one.

    Locally through a temp file renamed into place on success; on an object store directly (the
    upload is published only when it completes; a failed one publishes nothing). On error the
    target is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only, got mode {mode!r}")
    fs, path = filesystem(url)
    if not is_local(url):
        with fs.open(path, mode) as handle:
            yield handle
        return
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(tmp, mode) as handle:
            yield handle
        fs.mv(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            fs.rm(tmp)
        if isinstance(error, OSError):
            raise write_error(url, error) from None
        raise


# what to do about a local write that failed, by errno
_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free space, or point paths.* at another disk",
    errno.EDQUOT: "the disk quota is used up: free space, or point paths.* elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check paths.* in params.yaml",
    errno.EEXIST: "a part of the path is a file, not a folder: check paths.* in params.yaml",
    errno.EISDIR: "the path is a folder: check paths.* in params.yaml",
    errno.EACCES: "no permission to write there: check paths.* in params.yaml",
    errno.EPERM: "no permission to write there: check paths.* in params.yaml",
    errno.EROFS: "the file system is read-only: point paths.* at a writable folder",
}


def write_error(url: str, error: OSError) -> StorageError:
    """A failed local write as one line naming the file, the reason and what to do."""
    reason = error.strerror or str(error)
    hint = _WRITE_HINTS.get(error.errno or 0, "check paths.* in params.yaml")
    return StorageError(f"cannot write {url}: {reason} ({hint})")


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
