"""The fast paths of the mask methods against the eager PyTorch ops they replace.

On the CPU the kernels of ``pipelines/mixing/native.c`` run by default; the box and mask pastes only
select elements and the resize and Beta arithmetic repeat the eager operations in their order, so
fast and eager agree bit for bit, draws included (one stream, computed in C or in Python).
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from pipelines.errors import ConfigError
from pipelines.mixing import get_mixer, kernels, native
from pipelines.mixing.sampling import ChengBeta, SplitMix64, mixing_draws, stream_seed
from pipelines.seeding import torch_generator

DTYPES = [torch.float32, torch.uint8, torch.float64, torch.bfloat16]
SHAPES = [(24, 3, 16, 12), (16, 2, 40), (16, 1, 6, 5, 4)]


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


@pytest.mark.parametrize(("a", "b"), [(0.05, 0.05), (0.4, 0.4), (1.0, 1.0), (2.0, 2.0), (40.0, 40.0), (0.3, 5.0), (5.0, 0.3)])
@pytest.mark.parametrize(("batch", "count"), [(1, 1), (9, 9), (3000, 3000), (64, 1)])
def test_the_draws_in_c_equal_the_python_ones(a, b, batch, count):
    """mp_mixing_draws and sampling.mixing_draws' Python: the same stream, the same λ to the bit."""
    for seed in range(3):
        for given in (None, torch.arange(batch).flip(0)):
            fast = mixing_draws(batch, count, a, b, 0.7, torch_generator(seed), index=given, extra=7, fuse=True)
            eager = mixing_draws(batch, count, a, b, 0.7, torch_generator(seed), index=given, extra=7, fuse=False)
            for one, other in zip(fast, eager, strict=True):
                assert one.dtype == other.dtype and torch.equal(one, other)
            if given is not None:
                assert torch.equal(fast[0], given)


def test_the_stream_is_splitmix64_from_one_generator_draw():
    """Golden values: SplitMix64's published first outputs for seed 0 (Vigna's reference code), and
    the layout of a call's stream: the method's uniforms first, then the partners."""
    stream = SplitMix64(0)
    outputs = [int(stream.uniform() * 2**53) for _ in range(3)]
    assert outputs == [0xE220A8397B1DCDAF >> 11, 0x6E789E6AA1B965F4 >> 11, 0x06C45D188009454F >> 11]
    generator = torch_generator(5)
    seed = stream_seed(torch_generator(5))
    index, lam, mixed, uniforms = mixing_draws(4, 4, 1.0, 1.0, 1.0, generator, extra=2, fuse=False)
    replay = SplitMix64(seed)
    assert uniforms.tolist() == [replay.uniform(), replay.uniform()]
    order = [0, 1, 2, 3]
    for i in (3, 2, 1):  # Fisher-Yates from the back
        j = min(int(replay.uniform() * (i + 1)), i)
        order[i], order[j] = order[j], order[i]
    assert index.tolist() == order and bool(mixed.all())


def test_partners_are_uniform_permutations():
    """All 24 permutations of 4 samples, each about 1/24 of 24,000 draws (chi-square)."""
    counts = {}
    generator = torch_generator(9)
    for _ in range(24_000):
        index = mixing_draws(4, 4, 1.0, 1.0, 1.0, generator)[0]
        key = tuple(index.tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 24
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3


@pytest.mark.parametrize(("a", "b"), [(0.2, 0.2), (1.0, 1.0), (2.0, 2.0), (0.5, 3.0), (4.0, 1.5), (0.01, 100.0)])
def test_cheng_draws_follow_beta(a, b):
    """Both of Cheng's algorithms (BC below shape 1, BB above) against scipy's Beta CDF, in float64
    (in float32 the draws within 6e-8 of 1 become an atom at 1, which a KS test would flag); the
    mixers' float32 λ are those draws rounded (Beta(1, 1)'s are uniforms, rounded). The symmetric
    shapes accept at least half the candidates."""
    cheng = ChengBeta.of(a, b)
    stream, draws, candidates = SplitMix64(17), [], 0
    while len(draws) < 20_000:
        candidates += 1
        draw = cheng.candidate(stream.uniform(), stream.uniform())
        if draw is not None:
            draws.append(draw)
    assert stats.kstest(draws, stats.beta(a, b).cdf).pvalue > 0.01
    if a == b:
        assert len(draws) / candidates > 0.5
    extreme = cheng.candidate(1 - 2**-53, 1e-9)  # the largest uniform: w saturates, no NaN
    assert extreme is None or 0 <= extreme <= 1
    lam = mixing_draws(500, 500, a, b, 1.0, torch_generator(4), index=torch.arange(500))[1]
    replay, expected = SplitMix64(stream_seed(torch_generator(4))), []
    flags = [replay.uniform() for _ in range(500)]  # the mix flags: all below prob 1
    assert max(flags) < 1
    while len(expected) < 500:
        if a == b == 1.0:  # the uniform distribution: drawn directly, one uniform each
            expected.append(replay.uniform())
            continue
        draw = cheng.candidate(replay.uniform(), replay.uniform())
        if draw is not None:
            expected.append(draw)
    assert torch.equal(lam, torch.tensor(expected, dtype=torch.float64).float())


@pytest.mark.parametrize("name", ["cutmix", "fmix", "resizemix"])
@pytest.mark.parametrize("shape", [(12, 3, 6, 32), (12, 2, 5, 64), (12, 2, 2, 3, 32)])
def test_rows_of_32_and_64_take_their_own_loops_and_agree(name, shape):
    """FMix's kernel has loops of fixed length for rows of 32 and 64 values (and ResizeMix's
    AVX-512 permutes rows up to 32): the same values as the eager ops."""
    for dtype in (torch.float32, torch.uint8):
        fast, eager = fast_and_eager(name, batch(shape, dtype), alpha=0.7, prob=0.8)
        assert_same(fast, eager)


@pytest.mark.parametrize("name", ["cutmix", "fmix", "resizemix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("mode", ["elem", "batch"])
def test_the_one_call_kernel_equals_draw_then_combine(name, dtype, mode):
    """``mp_mix`` (draws and mix in one C call, what a plain call runs) against :meth:`Mixer.draw`
    then :meth:`Mixer.combine` with the kernels (what a mixture runs), for one generator state."""
    x = batch((24, 3, 16, 12), dtype)
    mixer = get_mixer(name, alpha=0.6, prob=0.7, mode=mode, fuse=True)
    fused = mixer.fused_call(x, torch_generator(5))
    if name == "fmix" and mode == "batch":
        assert fused is None  # one mask for the batch: the eager selection
        return
    draws = mixer.draw(24, torch_generator(5), x.device, extra=mixer.extra_draws(x.shape))
    assert_same(fused, mixer.combine(x, draws, torch_generator(6)))


def test_the_fmix_kernel_reads_uint16_and_int32_banks_alike():
    """The kernel's bank is uint16 up to 256 x 256 and int32 beyond; both widths give one mask."""
    from pipelines.mixing.fourier import kernel_bank, rank_bank

    x, spatial = batch((16, 2, 12, 10)), (12, 10)
    draws = get_mixer("fmix", alpha=1.0, prob=0.8).draw(16, torch_generator(2), x.device, extra=16 * 5)
    narrow, wide = kernel_bank(spatial, 3.0, 64), rank_bank(spatial, 3.0, 64)
    assert narrow.dtype == torch.uint16 and wide.dtype == torch.int32
    outputs = [native.keep_below(x, draws.index, lam=draws.lam, mixed=draws.mixed, bank=bank,
                                 picks=draws.uniforms.view(16, 5)) for bank in (narrow, wide)]
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert kernel_bank((260, 260), 3.0, 1) is rank_bank((260, 260), 3.0, 1)  # 67,600 ranks: int32


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
