"""The mask methods' CPU kernels (``native.c``): built once per machine with the system C compiler,
called through ``ctypes``.

Why C and not ``torch.compile``: Inductor writes CutMix's paste as a masked blend that loads both the
sample and its partner for every element (1.7x ``x.clone()`` of a 256 x 3 x 32 x 32 float32 batch on
one thread) and adds about 80 µs of guards and wrappers per call; the C kernel copies whole rows
outside the box (1.3x), and a ``ctypes`` call costs a few µs. The kernels also take over the small
arithmetic around the paste (box corners, λ, the call's random draws): each Python or PyTorch call
costs 1-20 µs once the batch has streamed through the caches, which on a 3 MB batch added up to
more than the paste itself. :func:`mix` therefore runs a whole call, draws and mix, in one C call.

Building takes a second or two (no PyTorch headers). The shared object is cached by the hash of
the source, the flags and the machine type under ``$MIXPIPE_CACHE`` (default ``~/.cache/mixpipe``,
else the temporary folder when that is read-only), written to a temporary name and renamed, so
concurrent Ray workers can race to build it safely.

``ctypes`` releases the GIL during a call, so a batch is split over ``torch.get_num_threads()``
threads when it is large enough to pay for them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
CACHE_ENV = "MIXPIPE_CACHE"
# MIXPIPE_FUSE=0 turns fuse "auto" off for a process and the Ray workers it starts (the test suite's
# default: test_mixing_kernels.py checks the fast paths against the eager ones)
FUSE_ENV = "MIXPIPE_FUSE"
# -ffp-contract=off: no fused multiply-adds, so the resize rounds as the eager ops do
FLAGS = ("-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-Werror=implicit-function-declaration")
# below this many bytes per thread, splitting a batch costs more than it saves
_BYTES_PER_THREAD = 1 << 20

_SELECTION_TYPES = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t", 8: "uint64_t"}
_library: ctypes.CDLL | None = None
_failure: str | None = None
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool)
_warned = False


class NativeBuildError(RuntimeError):
    """The kernels could not be compiled or loaded here (no C compiler, a read-only cache, ...)."""


def cache_folders() -> list[Path]:
    """Where a build is looked for and written: ``$MIXPIPE_CACHE`` or ``~/.cache/mixpipe``, then a
    per-user folder under the temporary folder (a cluster's home may be read-only)."""
    configured = os.environ.get(CACHE_ENV)
    first = Path(configured) if configured else Path.home() / ".cache" / "mixpipe"
    return [first / "native", Path(tempfile.gettempdir()) / f"mixpipe-{os.getuid()}" / "native"]


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise NativeBuildError("no C compiler found (set CC, or install gcc)")


def _compile(compiler: str, folder: Path, target: Path) -> None:
    """Build ``target`` in ``folder`` (temporary name, then an atomic rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=target.stem, suffix=".so.partial")
    os.close(handle)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE), "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["(no output)"]
            first = next((line for line in lines if "error" in line), lines[0])
            raise NativeBuildError(f"{compiler} failed on {SOURCE.name}: {first}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(),
                                     platform.machine().encode(), sys.platform.encode()])).hexdigest()[:20]
    library, problems = None, []
    for folder in cache_folders():  # the first that can be written and loaded from (not noexec)
        target = folder / f"mixing-{key}.so"
        try:
            if not target.exists():
                _compile(compiler, folder, target)
            library = ctypes.CDLL(str(target))
            break
        except OSError as error:
            problems.append(f"{folder}: {error}")
    if library is None:
        raise NativeBuildError(f"no usable kernel cache ({'; '.join(problems)})")
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    kernels = {}
    for width in _SELECTION_TYPES.values():
        kernels[f"mp_paste_boxes_{width}"] = [pointer] * 7 + [size] + [pointer] * 2 + [size] * 7
        kernels[f"mp_keep_below_{width}"] = [pointer] * 4 + [size, pointer, size, size, pointer, size] + [pointer] * 4 + [size] * 6
    for name in ("mp_resize_paste_float32", "mp_resize_paste_uint8"):
        kernels[name] = [pointer] * 4 + [ctypes.c_double] * 2 + [pointer] + [size] + [pointer] * 2 + [size] * 6
    for name, arguments in kernels.items():  # each returns 0, or -1 when its scratch memory ran out
        function = getattr(library, name)
        function.argtypes, function.restype = arguments, size
    real = ctypes.c_double
    library.mp_mix.argtypes = ([size, size, ctypes.c_uint64, real, real, size] + [pointer] * 5 + [size, size, real, real]
                               + [size] * 8)
    library.mp_mix.restype = size
    library.mp_mixing_draws.argtypes = [ctypes.c_uint64, pointer, size, size, pointer, size, real, pointer, real, real,
                                        pointer]
    library.mp_mixing_draws.restype = None
    return library


def library() -> ctypes.CDLL:
    """The loaded kernels, built on first use; raises :class:`NativeBuildError` (every time, after
    the first failure) when they cannot be built here."""
    global _library, _failure
    if _library is None:
        if _failure is not None:
            raise NativeBuildError(_failure)
        try:
            _library = _build()
        except NativeBuildError as error:
            _failure = str(error)
            raise
    return _library


def enabled(fuse: bool | str) -> bool:
    """Whether ``fuse`` asks for the fast paths (``"auto"`` unless ``MIXPIPE_FUSE=0``)."""
    return fuse is True or (fuse == "auto" and os.environ.get(FUSE_ENV) != "0")


def ready(fuse: bool | str = "auto") -> bool:
    """Whether the kernels run: ``fuse`` on and the kernels built. A failed build raises when
    ``fuse`` is True, and otherwise says so on stderr once per process."""
    global _warned
    if not enabled(fuse):
        return False
    if _library is not None:  # the common case, first: this runs on every mixing call
        return True
    try:
        library()
    except NativeBuildError as error:
        if fuse is True:
            raise
        if not _warned:
            _warned = True
            print(f"mixpipe: mixing runs unfused (the C kernels could not be built: {str(error)[:200]})",
                  file=sys.stderr, flush=True)
        return False
    return True


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _over_batch(kernel, batch: int, nbytes: int, *arguments) -> None:
    """``kernel(*arguments, b0, b1)`` over the batch, split into one range per thread when the
    batch is large enough (the kernels write disjoint samples)."""
    threads = min(torch.get_num_threads(), batch, max(1, nbytes // _BYTES_PER_THREAD))
    if threads <= 1:
        codes = [kernel(*arguments, 0, batch)]
    else:
        global _pool
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < threads:  # a forked child makes its own
            _pool = (os.getpid(), threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mixpipe-mix"))
        bounds = [batch * part // threads for part in range(threads + 1)]
        codes = list(_pool[2].map(lambda part: kernel(*arguments, bounds[part], bounds[part + 1]), range(threads)))
    if any(codes):  # the kernels' only failure: their few KiB of scratch memory
        raise MemoryError(f"mixpipe: {kernel.__name__} could not allocate its working memory")


def _flags(flags: torch.Tensor) -> torch.Tensor:
    """Booleans as one byte each (a bool tensor already is: no conversion)."""
    return _as(flags, flags.dtype if flags.dtype in (torch.bool, torch.uint8) else torch.uint8)


def _as(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a contiguous CPU tensor of ``dtype``, without a call when it already is one (each
    call into PyTorch costs microseconds, comparable to the kernels on small batches)."""
    if not values.is_cpu:  # draws from a generator on another device
        values = values.cpu()
    if values.dtype != dtype:
        values = values.to(dtype)
    return values if values.is_contiguous() else values.contiguous()


def _bank(bank: torch.Tensor) -> torch.Tensor:
    """A rank bank as the kernels read it: contiguous uint16 (kept) or int32 ranks on the CPU."""
    return bank if bank.dtype == torch.uint16 and bank.is_contiguous() else _as(bank, torch.int32)


def _volume(shape: torch.Size) -> tuple[int, int, int]:
    """(D, H, W) of a ``[B, C, *spatial]`` batch with 1-3 spatial axes."""
    spatial = (1,) * (5 - len(shape)) + tuple(shape[2:])
    return spatial[0], spatial[1], spatial[2]


def _per_sample(values: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """``[count, n]`` rows as a contiguous tensor of ``dtype`` and the row stride per sample
    (0 when one row serves the whole batch)."""
    return _as(values, dtype), int(values.shape[0] > 1)


def paste_boxes(x: torch.Tensor, index: torch.Tensor, mixed: torch.Tensor, *, sides: torch.Tensor | None = None,
                centres: torch.Tensor | None = None, lam: torch.Tensor | None = None,
                spots: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix's paste (:func:`pipelines.mixing.boxes.paste_boxes`) for a contiguous CPU batch, with
    boxes of ``sides`` around ``centres``, or (1-2 spatial axes) CutMix's boxes for ``lam`` placed by
    the uniform draws ``spots`` (see ``box_corners`` in native.c); returns the mixed batch and each
    sample's own fraction λ (float32 ``[B]``)."""
    kernel = getattr(library(), f"mp_paste_boxes_{_SELECTION_TYPES[x.element_size()]}")
    out, own = torch.empty_like(x), torch.empty(x.shape[0], dtype=torch.float32)
    index, mixed = _as(index, torch.int64), _flags(mixed)
    if lam is not None:
        (spots, stride), lam = _per_sample(spots, torch.float64), _as(lam, torch.float32)
        axes = spots.shape[1]
    else:
        (sides, stride), (centres, _) = _per_sample(sides, torch.int64), _per_sample(centres, torch.int64)
        axes = sides.shape[1]
    _over_batch(kernel, x.shape[0], x.nbytes, x.data_ptr(), out.data_ptr(), index.data_ptr(), _address(lam),
                _address(spots), _address(sides), _address(centres), stride, mixed.data_ptr(), own.data_ptr(),
                x.shape[1], axes, *_volume(x.shape))
    return out, own


def keep_below(x: torch.Tensor, index: torch.Tensor, *, own: torch.Tensor | None = None,
               rank: torch.Tensor | None = None, lam: torch.Tensor | None = None, mixed: torch.Tensor | None = None,
               bank: torch.Tensor | None = None, picks: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FMix's hard-mask selection for a contiguous CPU batch: ``x[b]`` where the rank of a position
    is below ``own[b]``, the partner elsewhere.

    The ranks are ``rank`` (``[B or 1, N]``), or fields of ``bank`` (int32, or uint16 as
    :func:`pipelines.mixing.fourier.kernel_bank` narrows it) read shifted and mirrored as
    the uniforms ``picks`` (``[B, 1 + 2n]``) choose them (:func:`pipelines.mixing.fourier.draw_shifts`).
    Without ``own`` the kernel derives it from ``lam`` and ``mixed`` and also returns each sample's
    own fraction (else None).
    """
    kernel = getattr(library(), f"mp_keep_below_{_SELECTION_TYPES[x.element_size()]}")
    out = torch.empty_like(x)
    index = _as(index, torch.int64)
    stride, lam_out, fields, axes, width = 0, None, 0, 0, 0
    if own is not None:
        own = _as(own, torch.int64)
    else:
        lam, mixed = _as(lam, torch.float32), _flags(mixed)
        lam_out = torch.empty(x.shape[0], dtype=torch.float32)
    if bank is None:
        rank = _as(rank.reshape(rank.shape[0], -1), torch.int32)
        stride = rank.shape[1] if rank.shape[0] > 1 else 0
    else:
        bank, picks = _bank(bank), _as(picks, torch.float64)
        fields, axes, width = bank.shape[0], (picks.shape[1] - 1) // 2, bank.element_size()
    _over_batch(kernel, x.shape[0], x.nbytes, x.data_ptr(), out.data_ptr(), index.data_ptr(), _address(rank), stride,
                _address(bank), width, fields, _address(picks), axes, _address(own), _address(lam), _address(mixed),
                _address(lam_out), x.shape[1], *_volume(x.shape))
    return out, lam_out


def resize_paste(x: torch.Tensor, index: torch.Tensor, lam: torch.Tensor, scope: tuple[float, float],
                 room: torch.Tensor, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ResizeMix's paste for a contiguous float32 or uint8 CPU batch with one or two spatial axes:
    the partner shrunk by ``tau = scope[0] + (scope[1] - scope[0]) * lam``, placed at
    ``floor(room * (size - side + 1))`` (``lam`` ``[count]``, ``room`` ``[count, n]``; count 1: one box
    for the batch); returns the mixed batch and each sample's own fraction λ (float32 ``[B]``)."""
    kernel = getattr(library(), f"mp_resize_paste_{str(x.dtype).removeprefix('torch.')}")
    out, own = torch.empty_like(x), torch.empty(x.shape[0], dtype=torch.float32)
    index, mixed = _as(index, torch.int64), _flags(mixed)
    (room, stride), lam = _per_sample(room, torch.float64), _as(lam, torch.float32)
    height, width = (x.shape[2], x.shape[3]) if x.ndim == 4 else (1, x.shape[2])
    low, high = scope
    _over_batch(kernel, x.shape[0], x.nbytes, x.data_ptr(), out.data_ptr(), index.data_ptr(), lam.data_ptr(),
                float(low), float(high - low), room.data_ptr(), stride, mixed.data_ptr(), own.data_ptr(),
                x.shape[1], room.shape[1], height, width)
    return out, own


# methods of mp_mix
CUTMIX, FMIX, RESIZEMIX = 0, 1, 2


def mix(method: int, x: torch.Tensor, seed: int, alpha: float, prob: float, count: int, *,
        bank: torch.Tensor | None = None, low: float = 0.0, span: float = 0.0,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A whole mixing call in one kernel: the draws of :func:`pipelines.mixing.sampling.mixing_draws`
    from the stream of ``seed`` (``count`` λ of Beta(``alpha``, ``alpha``), ``prob``), then ``method``'s
    kernel: :data:`CUTMIX` (1-2 spatial axes), :data:`FMIX` (elem mode, fields of ``bank``: uint16 or
    int32 ranks) or
    :data:`RESIZEMIX` (float32 or uint8, 1-2 spatial axes; scale ``low + span * λ``). Returns the
    mixed batch, the partners and each sample's own fraction, as the method's draw-then-combine
    computes them."""
    batch = x.shape[0]
    out, index = torch.empty_like(x), torch.empty(batch, dtype=torch.int64)
    own = torch.empty(batch, dtype=torch.float32)
    width, fields = (0, 0) if bank is None else (bank.element_size(), bank.shape[0])
    _over_batch(library().mp_mix, batch, x.nbytes, method, x.element_size(), seed, alpha, prob, count, x.data_ptr(),
                out.data_ptr(), index.data_ptr(), own.data_ptr(), _address(bank), width, fields, low, span, x.shape[1],
                x.ndim - 2, *_volume(x.shape), batch)
    return out, index, own


def mixing_draws(seed: int, uniforms: torch.Tensor, index: torch.Tensor | None, prob: float, mixed: torch.Tensor,
                 a: float, b: float, lam: torch.Tensor) -> None:
    """:func:`pipelines.mixing.sampling.mixing_draws` from the stream of ``seed``, written into
    ``uniforms`` (float64), ``index`` (int64 ``[batch]``; None: given, not drawn), ``mixed`` (bool)
    and ``lam`` (float32 ``[count]``)."""
    library().mp_mixing_draws(seed, uniforms.data_ptr(), uniforms.numel(), len(index) if index is not None else 0,
                              _address(index), mixed.numel(), prob, mixed.data_ptr(), a, b, lam.data_ptr())
