"""Files between a workspace and the shared store, addressed by content.

A job's inputs and outputs cross the object store as blobs named by their sha256
(``<store>/cas/sha256/ab/abcdef...``), so a file already there is never uploaded again, whoever
uploaded it, and a tree is a small JSON :class:`Manifest` (each path's digest and size). The
digest of a manifest names the whole tree: the same inputs give the same name, the basis of a
job's submission id.

Bringing a tree back is atomic per out: a file is written beside its target and renamed over it;
a folder is assembled beside its target and swapped in. Every blob is checked against its digest
on the way in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from pipelines.errors import MixpipeError

CAS = "cas/sha256"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Manifest:
    """A set of files relative to a root: ``roots`` are the paths asked for (``file`` or ``dir``),
    ``files`` every file under them with its ``{"sha256", "size"}``."""

    roots: Mapping[str, str]
    files: Mapping[str, Mapping[str, object]]

    def to_json(self) -> str:
        return json.dumps({"roots": dict(self.roots), "files": dict(self.files)}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        raw = json.loads(text)
        return cls(raw["roots"], raw["files"])

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(int(entry["size"]) for entry in self.files.values())


@dataclass
class Transfer:
    """What an upload or download moved."""

    files: int = 0
    bytes: int = 0
    skipped: int = 0


def blob_url(store: str, digest: str) -> str:
    return storage.join(store, CAS, digest[:2], digest)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scan(root: Path, paths: Iterable[str]) -> Manifest:
    """The manifest of ``paths`` (files or folders, relative to ``root``).

    Raises:
        MixpipeError: a path does not exist.
    """
    roots: dict[str, str] = {}
    files: dict[str, dict[str, object]] = {}
    for relative in paths:
        path = root / relative
        if path.is_file():
            roots[relative] = "file"
            found = [path]
        elif path.is_dir():
            roots[relative] = "dir"
            found = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            raise MixpipeError(f"{relative}: no such file or folder (has the stage that writes it run?)")
        for file in found:
            files[file.relative_to(root).as_posix()] = {"sha256": file_digest(file), "size": file.stat().st_size}
    return Manifest(roots, files)


def upload(root: Path, manifest: Manifest, store: str) -> Transfer:
    """Put every file of ``manifest`` (read under ``root``) into the store's blobs, skipping those
    already there."""
    fs, _ = storage.filesystem(store)
    done = Transfer()
    seen: set[str] = set()
    for relative, entry in sorted(manifest.files.items()):
        digest = str(entry["sha256"])
        if digest in seen:
            continue
        seen.add(digest)
        _, remote = storage.filesystem(blob_url(store, digest))
        if fs.exists(remote):
            done.skipped += 1
            continue
        if storage.is_local(store):
            storage.write_bytes(blob_url(store, digest), (root / relative).read_bytes())
        else:
            fs.put_file(str(root / relative), remote)  # one PUT (or multipart): the object appears whole
        done.files += 1
        done.bytes += int(entry["size"])
    return done


def publish(root: Path, paths: Iterable[str], store: str, manifest_url: str) -> tuple[Manifest, Transfer]:
    """Upload ``paths`` under ``root`` and then write their manifest to ``manifest_url``; the
    manifest is written last, so its presence means every blob it names is in the store."""
    manifest = scan(root, paths)
    transfer = upload(root, manifest, store)
    storage.write_text(manifest_url, manifest.to_json())
    return manifest, transfer


def _fetch_blob(store: str, digest: str, target: Path) -> int:
    data = storage.read_bytes(blob_url(store, digest))
    if hashlib.sha256(data).hexdigest() != digest:
        raise MixpipeError(f"{blob_url(store, digest)}: content does not match its digest")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return len(data)


def materialize(manifest: Manifest, store: str, root: Path) -> Transfer:
    """Write every root of ``manifest`` under ``root``, each replacing what was there atomically
    (a folder root becomes exactly the manifest's files: nothing stale is left in it)."""
    done = Transfer()
    for relative, kind in sorted(manifest.roots.items()):
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.mixpipe-{uuid.uuid4().hex[:8]}")
        try:
            if kind == "file":
                done.bytes += _fetch_blob(store, str(manifest.files[relative]["sha256"]), scratch)
                done.files += 1
                os.replace(scratch, target)
                continue
            scratch.mkdir()
            prefix = f"{relative}/"
            for name, entry in sorted(manifest.files.items()):
                if name.startswith(prefix):
                    done.bytes += _fetch_blob(store, str(entry["sha256"]), scratch / name[len(prefix):])
                    done.files += 1
            _swap_in(scratch, target)
        finally:
            if scratch.is_dir():
                shutil.rmtree(scratch)
            elif scratch.exists():
                scratch.unlink()
    return done


def _swap_in(new: Path, target: Path) -> None:
    """Put the folder ``new`` in place of ``target`` (a file, a folder or nothing)."""
    if not target.exists() and not target.is_symlink():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.mixpipe-old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


def read_manifest(url: str) -> Manifest | None:
    """The manifest at ``url``, or None when there is none."""
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        return None
    return Manifest.from_json(storage.read_bytes(url))
