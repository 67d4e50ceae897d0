"""Safetensors files read one tensor at a time, so merges stream instead of loading every model.

The header (8-byte little-endian length, then JSON: dtype, shape and byte range per tensor) is
read once; each tensor is read on access with one seek and one read through fsspec, into memory
the returned tensor owns. Nothing is memory-mapped, so a tensor's bytes leave the process once
the merge is done with them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping

import torch

from pipelines import storage
from pipelines.errors import DataError

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsFile(Mapping[str, torch.Tensor]):
    """A read-only mapping name -> tensor over a safetensors file at a path or fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        fs, path = storage.filesystem(url)
        try:
            with fs.open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
        except FileNotFoundError:
            raise DataError(f"no model weights at {url}") from None
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{url}: not a safetensors file") from None
        header.pop("__metadata__", None)
        self._data_start = 8 + length
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            if entry["dtype"] not in _DTYPES:
                raise DataError(f"{url}: tensor {name!r} has unsupported dtype {entry['dtype']}")
            start, end = entry["data_offsets"]
            self._entries[name] = (_DTYPES[entry["dtype"]], tuple(entry["shape"]), start, end)

    def spec(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of ``name`` without reading it."""
        dtype, shape, _, _ = self._entries[name]
        return shape, dtype

    def __getitem__(self, name: str) -> torch.Tensor:
        dtype, shape, start, end = self._entries[name]
        buffer = bytearray(end - start)
        if buffer:
            fs, path = storage.filesystem(self.url)
            with fs.open(path, "rb") as handle:
                handle.seek(self._data_start + start)
                view = memoryview(buffer)
                while view:  # a remote file may return less than asked
                    chunk = handle.read(len(view))
                    if not chunk:
                        raise DataError(f"{self.url}: file ends inside tensor {name!r}")
                    view[: len(chunk)] = chunk
                    view = view[len(chunk):]
            return torch.frombuffer(buffer, dtype=dtype).reshape(shape)
        return torch.empty(shape, dtype=dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def tensor_spec(state: Mapping[str, torch.Tensor], name: str) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of ``state[name]``, without reading it when ``state`` is a file."""
    if isinstance(state, SafetensorsFile):
        return state.spec(name)
    tensor = state[name]
    return tuple(tensor.shape), tensor.dtype
