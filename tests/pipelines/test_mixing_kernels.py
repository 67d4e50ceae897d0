"""The fused (torch.compile) paste kernels against the eager ones the rest of the suite runs.

The box and mask pastes only select elements, so fused and eager agree bit for bit. Compiling
takes seconds per kernel and shape, so each is compiled here for few shapes.
"""

from __future__ import annotations

import pytest
import torch

from pipelines.errors import ConfigError
from pipelines.mixing import get_mixer, kernels
from pipelines.seeding import torch_generator


def batch(shape, dtype=torch.float32, seed=0):
    generator = torch_generator(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1


@pytest.mark.parametrize(("name", "dtype"), [
    ("cutmix", torch.float32), ("fmix", torch.float32), ("saliencymix", torch.float32),
    ("cutmix", torch.uint8), ("fmix", torch.uint8),
])
def test_fused_box_and_mask_pastes_equal_the_eager_ones_bit_for_bit(name, dtype):
    x = batch((24, 3, 16, 12), dtype)
    y = torch.arange(24) % 5
    fused = get_mixer(name, alpha=1.0, prob=0.8, fuse=True)(x, y, generator=torch_generator(3))
    eager = get_mixer(name, alpha=1.0, prob=0.8, fuse=False)(x, y, generator=torch_generator(3))
    assert fused.x.dtype == dtype and torch.equal(fused.x, eager.x)  # uint8: both eager (see kernels)
    assert torch.equal(fused.lam, eager.lam) and torch.equal(fused.index, eager.index)
    assert (fused.lam < 1).any() and (fused.lam == 1).any()  # some mixed, some left alone (prob 0.8)


def test_fused_cutmix_handles_signals_and_volumes():
    for shape in [(16, 2, 40), (8, 1, 6, 5, 4)]:
        x, y = batch(shape), torch.arange(shape[0]) % 3
        fused = get_mixer("cutmix", alpha=1.0, fuse=True)(x, y, generator=torch_generator(5))
        eager = get_mixer("cutmix", alpha=1.0, fuse=False)(x, y, generator=torch_generator(5))
        assert torch.equal(fused.x, eager.x) and torch.equal(fused.lam, eager.lam)


def test_a_failed_compile_falls_back_once_with_one_line_unless_fusion_is_required(monkeypatch, capsys):
    def broken(function, **options):
        def call(*args):
            raise RuntimeError("no C++ compiler here\ndetails")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels, "_failed", set())
    monkeypatch.delenv(kernels.FUSE_ENV, raising=False)
    x, y = batch((8, 1, 6, 6)), torch.arange(8) % 2
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        get_mixer("cutmix", alpha=1.0, fuse=True)(x, y, generator=torch_generator(1))
    for _ in range(2):
        out = get_mixer("cutmix", alpha=1.0)(x, y, generator=torch_generator(1))
    assert torch.equal(out.x, get_mixer("cutmix", alpha=1.0, fuse=False)(x, y, generator=torch_generator(1)).x)
    assert capsys.readouterr().err == (
        "mixpipe: mixing runs unfused (paste_boxes: torch.compile failed: RuntimeError: no C++ compiler here)\n"
    )


def test_the_environment_switch_keeps_auto_from_compiling(monkeypatch):
    def refuse(function, **options):
        raise AssertionError("compiled although MIXPIPE_FUSE=0")

    monkeypatch.setattr(torch, "compile", refuse)
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setenv(kernels.FUSE_ENV, "0")
    x, y = batch((8, 1, 6, 6)), torch.arange(8) % 2
    get_mixer("cutmix", alpha=1.0)(x, y, generator=torch_generator(1))
    with pytest.raises(ConfigError, match="fuse"):
        get_mixer("cutmix", alpha=1.0, fuse="yes")
