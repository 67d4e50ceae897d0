"""A folder of images in torchvision's ``ImageFolder`` layout, read through fsspec.

``<root>/<class>/<...>/<image>.png|.jpg|.jpeg``: the first folder under the root names the class
(classes numbered in sorted order, as ``ImageFolder`` does), files are taken in sorted path order
(their position is the sample id), and any other file is ignored. Images are decoded with Pillow,
converted to one mode (``RGB`` or ``L``) and, where ``size`` is given, resized to it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from pipelines import storage
from pipelines.errors import ConfigError, DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
MODES = {"RGB": 3, "L": 1}


def list_images(root: str) -> list[tuple[str, str]]:
    """``(url, class name)`` of every image under ``root``, in sorted path order.

    Raises:
        DataError: ``root`` is missing, or holds no image inside a class folder.
    """
    fs, path = storage.filesystem(root)
    if not fs.isdir(path):
        raise DataError(f"data.source: {root} is not a folder of class folders (<root>/<class>/<image>.png)")
    base = path.rstrip("/")
    found = []
    for name in sorted(fs.find(base)):
        relative = name[len(base) + 1:] if name.startswith(base + "/") else name
        parts = relative.split("/")
        if len(parts) < 2 or not parts[-1].lower().endswith(EXTENSIONS) or any(p.startswith(".") for p in parts):
            continue  # a file beside the class folders, another kind of file, or a hidden one
        found.append((storage.join(root, relative), parts[0]))
    if not found:
        raise DataError(f"data.source: no {'/'.join(EXTENSIONS)} images in class folders under {root}")
    return found


def decode(url: str, data: bytes, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 ``(C, H, W)`` in ``mode``, resized (bilinear) to ``size`` (H, W) if given.

    Raises:
        DataError: the bytes are not a readable PNG/JPEG image (naming ``url``).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode now: a truncated file fails here, not later
            converted = image.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise DataError(f"{url}: not a readable PNG/JPEG image ({first})") from None
    if size is not None and converted.size != (size[1], size[0]):
        converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def load_images(
    root: str, mode: str = "RGB", size: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image under ``root`` as uint8 ``(N, C, H, W)``, its class index, and the class names.

    Raises:
        ConfigError: an unknown mode or a bad size.
        DataError: no images, an unreadable one, or (without ``size``) one whose size differs from
            the first image's; each names the file.
    """
    if mode not in MODES:
        raise ConfigError(f"data.options.mode must be one of {sorted(MODES)}, got {mode!r}")
    shape = None
    if size is not None:
        if len(size) != 2 or any(int(s) < 1 for s in size):
            raise ConfigError(f"data.options.size must be [height, width] of positive sides, got {list(size)!r}")
        shape = (int(size[0]), int(size[1]))
    images = list_images(root)
    classes = sorted({name for _, name in images})
    index = {name: i for i, name in enumerate(classes)}
    pixels, labels = [], []
    for url, name in images:
        image = decode(url, storage.read_bytes(url), mode, shape)
        if pixels and image.shape != pixels[0].shape:
            raise DataError(f"{url}: {image.shape[2]}x{image.shape[1]} pixels, but {images[0][0]} has "
                            f"{pixels[0].shape[2]}x{pixels[0].shape[1]}; set data.options.size: [height, width] to resize")
        pixels.append(image)
        labels.append(index[name])
    return np.stack(pixels), np.array(labels, dtype=np.int64), classes
