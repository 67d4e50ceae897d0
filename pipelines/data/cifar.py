"""CIFAR-10/100 from the python-pickle archive, unpickled with a restricted unpickler.

The archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, or the directory it
unpacks to) holds pickled dicts of numpy arrays and lists. Pickle can run arbitrary code, so the
unpickler here resolves only the few globals those files use (numpy's array reconstruction,
``ndarray``, ``dtype`` and ``_codecs.encode`` for byte strings) and refuses everything else.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.errors import DataError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}

# member names inside the archive: (training files, test files, label key)
LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED_GLOBALS`; any other class or function is an error."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a numpy array or builtin container")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` (bytes keys, as the Python 2 archives need) with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _members(source: str, folder: str, names: list[str]) -> dict[str, bytes]:
    """The named files, from a ``.tar.gz`` at ``source`` or from ``source/<folder>/``."""
    if source.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(source))) as archive:
            found = {}
            for name in names:
                try:
                    member = archive.extractfile(f"{folder}/{name}")
                except KeyError:
                    member = None
                if member is None:
                    raise DataError(f"{source}: archive has no {folder}/{name}; is it the python version of the dataset?")
                found[name] = member.read()
            return found
    try:
        return {name: storage.read_bytes(storage.join(source, folder, name)) for name in names}
    except FileNotFoundError as error:
        raise DataError(f"{source}: no {folder}/ batch file ({error.filename or error}); give the .tar.gz or its unpacked folder") from None


def load_cifar(name: str, source: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Images ``[N, 3, 32, 32]`` as stored (uint8), labels (int64), classes; train files then test.

    Raises:
        DataError: missing files, a refused pickle global, or arrays of the wrong shape.
    """
    folder, train, test, label_key, classes = LAYOUTS[name]
    xs, ys = [], []
    for member, data in _members(source, folder, train + test).items():
        try:
            batch = restricted_loads(data)
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise DataError(f"{source}: {folder}/{member}: {error}") from None
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise DataError(f"{source}: {folder}/{member} is not a CIFAR batch (needs {b'data'!r} and {label_key!r})")
        pixels = np.asarray(batch[b"data"])
        if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
            raise DataError(f"{source}: {folder}/{member}: data must be uint8 [N, 3072], got {pixels.dtype} {pixels.shape}")
        try:
            labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as error:
            raise DataError(f"{source}: {folder}/{member}: {label_key.decode()} are not integers ({error})") from None
        if len(labels) != len(pixels):
            raise DataError(f"{source}: {folder}/{member}: {len(labels)} labels for {len(pixels)} images")
        outside = np.flatnonzero((labels < 0) | (labels >= classes))
        if outside.size:
            raise DataError(f"{source}: {folder}/{member}: label {labels[outside[0]]} at row {outside[0]} is outside "
                            f"[0, {classes}) ({outside.size} such rows); is it {name}?")
        xs.append(pixels.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys), classes
