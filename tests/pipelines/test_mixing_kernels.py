"""The fast paths of the mask methods against the eager PyTorch ops they replace.

On the CPU the kernels of ``pipelines/mixing/native.c`` run by default; the box and mask pastes only
select elements and the resize and Beta arithmetic repeat the eager operations in their order, so
fast and eager agree bit for bit, draws included (the same generator calls in the same order).
"""

from __future__ import annotations

import pytest
import torch

from pipelines.errors import ConfigError
from pipelines.mixing import get_mixer, kernels, native
from pipelines.mixing.sampling import beta_sample
from pipelines.seeding import torch_generator

DTYPES = [torch.float32, torch.uint8, torch.float64, torch.bfloat16]
SHAPES = [(24, 3, 16, 12), (16, 2, 40), (8, 1, 6, 5, 4)]


def batch(shape, dtype=torch.float32, seed=0):
    generator = torch_generator(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1).to(dtype)


def fast_and_eager(name, x, **options):
    y = torch.arange(x.shape[0]) % 5
    fast = get_mixer(name, fuse=True, **options)(x, y, generator=torch_generator(3))
    eager = get_mixer(name, fuse=False, **options)(x, y, generator=torch_generator(3))
    return fast, eager


def assert_same(fast, eager):
    assert fast.x.dtype == eager.x.dtype and torch.equal(fast.x, eager.x)
    assert torch.equal(fast.lam, eager.lam) and torch.equal(fast.index, eager.index)


@pytest.mark.parametrize("name", ["cutmix", "fmix", "resizemix", "saliencymix", "mixup"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["elem", "batch"])
def test_the_native_kernels_equal_the_eager_ops_bit_for_bit(name, dtype, shape, mode):
    if name == "saliencymix" and len(shape) != 4:
        pytest.skip("saliencymix takes images")
    fast, eager = fast_and_eager(name, batch(shape, dtype), alpha=1.0, prob=0.8, mode=mode)
    assert_same(fast, eager)
    if mode == "elem":
        assert (fast.lam < 1).any() and (fast.lam == 1).any()  # some mixed, some left alone (prob 0.8)


@pytest.mark.parametrize("options", [
    {"name": "cutmix", "cutmix_minmax": (0.2, 0.6)},
    {"name": "fmix", "bank_size": 0},
    {"name": "fmix", "max_soft": 0.2},
    {"name": "resizemix", "scope": (1.0, 1.0)},  # the partner's own size: every tap on a source pixel
])
def test_the_other_options_agree_too(options):
    options = dict(options)
    fast, eager = fast_and_eager(options.pop("name"), batch((16, 3, 12, 12)), alpha=0.7, **options)
    assert_same(fast, eager)


def test_a_batch_split_over_threads_equals_one_pass():
    x = batch((200, 3, 32, 32))  # 2.4 MB: two threads of at least 1 MB each
    previous = torch.get_num_threads()
    try:
        for name in ["cutmix", "fmix", "resizemix"]:
            torch.set_num_threads(2)
            split, eager = fast_and_eager(name, x, alpha=1.0)
            assert native._pool is not None and native._pool[1] == 2  # it was split
            torch.set_num_threads(1)
            whole, _ = fast_and_eager(name, x, alpha=1.0)
            assert_same(split, eager)
            assert_same(whole, eager)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize(("a", "b"), [(0.1, 0.1), (0.4, 0.4), (1.0, 1.0), (2.0, 2.0), (0.3, 5.0)])
@pytest.mark.parametrize("n", [1, 9, 3000])
def test_beta_draws_in_c_equal_the_eager_ones(a, b, n):
    for seed in range(3):
        fast = beta_sample(a, b, n, torch_generator(seed), dtype=torch.float64, fuse=True)
        eager = beta_sample(a, b, n, torch_generator(seed), dtype=torch.float64, fuse=False)
        assert torch.equal(fast, eager)


@pytest.fixture
def fresh_build(monkeypatch):
    """A process state in which the kernels were never built."""
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.delenv(native.FUSE_ENV, raising=False)


def test_without_a_compiler_auto_falls_back_with_one_line_and_true_raises(fresh_build, monkeypatch, capsys):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    x, y = batch((8, 1, 6, 6)), torch.arange(8) % 2
    with pytest.raises(native.NativeBuildError, match="no C compiler found"):
        get_mixer("cutmix", alpha=1.0, fuse=True)(x, y, generator=torch_generator(1))
    for _ in range(2):
        out = get_mixer("cutmix", alpha=1.0)(x, y, generator=torch_generator(1))
    assert torch.equal(out.x, get_mixer("cutmix", alpha=1.0, fuse=False)(x, y, generator=torch_generator(1)).x)
    assert capsys.readouterr().err == (
        "mixpipe: mixing runs unfused (the C kernels could not be built: no C compiler found (set CC, or install gcc))\n"
    )


def test_a_compile_error_names_the_compiler_and_the_source(fresh_build, monkeypatch, tmp_path):
    broken = tmp_path / "native.c"
    broken.write_text("int broken( {\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(native.NativeBuildError, match=r"failed on native\.c: .*error"):
        native.library()


def test_an_unwritable_cache_falls_back_to_the_temporary_folder(fresh_build, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(native.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "temporary"))
    (tmp_path / "temporary").mkdir()
    native.library()
    built = list((tmp_path / "temporary").glob("mixpipe-*/native/mixing-*.so"))
    assert len(built) == 1 and not list(built[0].parent.glob("*.partial"))


def test_the_environment_switch_keeps_auto_off_the_kernels(fresh_build, monkeypatch):
    def refuse():
        raise AssertionError("built the kernels although MIXPIPE_FUSE=0")

    monkeypatch.setattr(native, "library", refuse)
    monkeypatch.setenv(native.FUSE_ENV, "0")
    x, y = batch((8, 1, 6, 6)), torch.arange(8) % 2
    for name in ["cutmix", "fmix", "resizemix", "mixup"]:
        get_mixer(name, alpha=1.0)(x, y, generator=torch_generator(1))
    with pytest.raises(ConfigError, match="fuse"):
        get_mixer("cutmix", alpha=1.0, fuse="yes")


def test_the_compiled_gpu_path_falls_back_once_when_compiling_fails(monkeypatch, capsys):
    """``torch.compile`` serves non-CPU devices; its fallback logic is exercised here on CPU tensors."""
    def broken(function, **options):
        def call(*args):
            raise RuntimeError("no Triton here\ndetails")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels, "_failed", set())
    monkeypatch.delenv(native.FUSE_ENV, raising=False)
    x, index = batch((4, 1, 5, 5)), torch.tensor([1, 0, 3, 2])
    low, high = torch.tensor([[1, 1]] * 4), torch.tensor([[3, 4]] * 4)
    with pytest.raises(RuntimeError, match="no Triton"):
        kernels._fused("paste_boxes", kernels._paste_boxes, True)(x, index, low, high)
    for _ in range(2):
        out = kernels._fused("paste_boxes", kernels._paste_boxes, "auto")(x, index, low, high)
    assert torch.equal(out, kernels._paste_boxes(x, index, low, high))
    assert capsys.readouterr().err == (
        "mixpipe: mixing runs unfused (paste_boxes: torch.compile failed: RuntimeError: no Triton here)\n"
    )
