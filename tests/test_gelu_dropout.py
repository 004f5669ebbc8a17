"""fusedaot.gelu_dropout: the Philox reference (known answers), the mask's statistics and
reproducibility, the kernels against the reference's exact mask over shapes, dtypes and layouts,
the generator's offset, backward with the forward's mask, errors, opcheck, torch.compile, CUDA
graphs (a fresh mask on every replay).

    y = gelu(x) * keep / (1 - p),  gelu(u) = u Phi(u) (erf form),
    keep[e] = 16-bit half e % 2 of Philox4x32-10(counter, e // 8; seed)[(e % 8) // 2] >= round(p * 2^16)
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fusedaot
import fusedaot.reference as R
from conftest import (DTYPES, assert_close, assert_written, compile_backends, make_tensor, nbytes_of,
                      on_foreign_device, poison, ref64)

DTYPES4 = DTYPES + (torch.float64,)
# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close); the mask is exact, so
# dropped elements must be exactly 0 (ref is 0 there and so is mag) and kept ones nonzero.
# out:   one rounding into the storage dtype: 2^-8 (bf16), 2^-11 (fp16), 2^-24 (fp32), 2^-53 (fp64).
# comp:  fp16, bf16, fp32 are computed in fp32 with Phi(-|u|) = t 2^(P(s) - w^2): for fp32 (P of
#        degree 9) its error is <= 2.1e-7 |u| (fit and fp32 evaluation), plus ex2.approx's and
#        rcp.approx's 2 and 1 ulp, plus two products' roundings: < 6e-7 of mag = |u| * scale.
#        fp16 and bf16 take P of degree 5 (kernels/cuda/gelu_dropout.cu): 9.1e-6 |u|, the same
#        terms on top: < 1.2e-5, 1/40 of fp16's rounding.  In the tail (u < 0) the error is
#        relative, <= 2.4e-5 of Phi down to u = -13 (w^2 rounds by 2^-24 w^2 in the exponent), so
#        mag = |u| * scale * min(1, 50 Phi(u)) checks small outputs to 6e-4 (16-bit) and 3e-5
#        (fp32) of themselves rather than of |u|.  fp64: 0.5 u erfc(-u / sqrt 2) in double, as the oracle
#        (fusedaot.reference evaluates gelu with erfc too: 1 + erf(u / sqrt 2) cancels to 0
#        below u = -8.3 even in float64): a few ulp, 2^-50 of the same mag.
#        Backward: mag = |dy| (1 + |u|) * scale bounds the terms of dy (Phi(u) + u phi(u)).
# floor: fp16 results below 2^-14 are subnormal; rounding there errs by at most 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=1.2e-5, floor=0.0),
    torch.float16: dict(out=2**-11, comp=1.2e-5, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=6e-7, floor=0.0),
    torch.float64: dict(out=2**-53, comp=2**-50, floor=0.0),
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]
P_VALUES = (0.0, 0.1, 0.5, 0.9)


def _scale(p):
    return 1.0 / (1.0 - p) if p > 0 else 1.0


def fwd_mag(x, p):
    u = x.double()
    phi = 0.5 * torch.erfc(-u / math.sqrt(2.0))
    return u.abs() * _scale(p) * torch.clamp(50 * phi, max=1.0)


def bwd_mag(x, dy, p):
    return dy.double().abs() * (1 + x.double().abs()) * _scale(p)


def generator_state(device):
    """(seed, counter) the next eager CUDA call will use: the generator's seed and offset / 4."""
    gen = torch.cuda.default_generators[torch.device(device).index or 0]
    seed = gen.initial_seed()
    return (seed - (1 << 64) if seed >= 1 << 63 else seed), gen.get_offset() // 4


def check_forward(x, p, seed, counter, y):
    """y (the kernel's output for x, p) against the float64 reference with the same mask."""
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    assert_written(y)
    ref = ref64(R.gelu_dropout, x, p, seed, counter)
    if p > 0:
        keep = R.dropout_keep(x.numel(), p, seed, counter, device=x.device).view(x.shape)
        # dropped elements are exactly 0; kept ones are checked below against nonzero values
        assert not bool((y[~keep] != 0).any()), "an element the reference drops was kept"
    assert_close(y, ref, TOLERANCES[x.dtype], fwd_mag(x, p))


# --- the reference's Philox, and the mask's statistics ------------------------------------------

# Random123's known-answer vectors for philox4x32 10: counter, key, result.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("case", range(3))
def test_reference_philox_known_answers(case):
    counter, key, want = KAT[case]
    assert [int(w) for w in R.philox4x32_10(*counter, *key)] == list(want)


def test_reference_mask_layout():
    # element e takes the 16-bit half e % 2 (low first) of word (e % 8) // 2 of the Philox block
    # (counter, e // 8), key = seed's halves
    seed, counter, n = -0x123456789ABCDEF, 0x1_0000_0003, 8 * 9 + 3
    keep = R.dropout_keep(n, 0.5, seed, counter)
    s, c = seed & 0xFFFFFFFF, counter & 0xFFFFFFFF
    for e in range(n):
        words = R.philox4x32_10(c, counter >> 32, e // 8, 0, s, (seed >> 32) & 0xFFFFFFFF)
        half = (int(words[(e % 8) // 2]) >> (16 * (e % 2))) & 0xFFFF
        assert bool(keep[e]) == (half >= R.dropout_threshold(0.5)), e
    for start in (1, 8, 13):  # a window of the mask is the same window of the whole mask
        assert torch.equal(R.dropout_keep(n - start, 0.5, seed, counter, start=start), keep[start:])


@pytest.mark.parametrize("p", (0.1, 0.5, 0.9))
def test_reference_keep_fraction(p):
    n = 1 << 22
    kept = int(R.dropout_keep(n, p, 1234, 5).sum())
    assert abs(kept / n - (1 - p)) <= 4 * math.sqrt(p * (1 - p) / n)


def test_threshold():
    assert R.dropout_threshold(0.0) == 0
    assert R.dropout_threshold(0.5) == 1 << 15
    assert R.dropout_threshold(0.1) == 6554  # keep probability 1 - 6554 / 2^16, within 2^-17 of 0.9
    assert R.dropout_threshold(1 - 2**-20) == (1 << 16) - 1  # never 2^16: p < 1 keeps a chance


# --- CPU: the reference path through the public function ----------------------------------------

@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape", [(0, 8), (1,), (7,), (3, 4097)], ids=str)
def test_cpu_path(shape, dtype):
    x = make_tensor(shape, dtype, "cpu", scale=2.0)
    for p in P_VALUES:
        torch.manual_seed(7)
        y = fusedaot.gelu_dropout(x, p)
        torch.manual_seed(7)
        rng = torch.randint(0, (1 << 63) - 1, (2,), dtype=torch.int64)  # what the CPU path draws
        check_forward(x, p, int(rng[0]), int(rng[1]), y)
    assert torch.equal(fusedaot.gelu_dropout(x, 0.5, training=False), R.gelu_dropout(x, 0.0))


def test_cpu_reproducible_and_fresh():
    x = torch.randn(1000)
    torch.manual_seed(3)
    y1, y2 = fusedaot.gelu_dropout(x, 0.5), fusedaot.gelu_dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(fusedaot.gelu_dropout(x, 0.5), y1)
    assert not torch.equal(y1 == 0, y2 == 0), "consecutive calls drew the same mask"


def test_cpu_backward_uses_the_forward_mask():
    x = torch.randn(4, 300, dtype=torch.float64, requires_grad=True)
    y = fusedaot.gelu_dropout(x, 0.3)
    dy = torch.randn_like(y)
    y.backward(dy)
    kept = y.detach() != 0
    assert torch.equal(x.grad != 0, kept)
    u = x.detach()
    want = dy * (0.5 * torch.erfc(-u / math.sqrt(2)) + u * torch.exp(-u * u / 2) / math.sqrt(2 * math.pi)) / 0.7
    torch.testing.assert_close(x.grad, torch.where(kept, want, 0.0), rtol=1e-12, atol=1e-14)


# --- argument errors --------------------------------------------------------------------

def _bad_calls(dev):
    x = torch.randn(2, 64, device=dev)
    return [
        ((x, 1.0), ValueError, r"gelu_dropout: p must be a number in \[0, 1\), got 1\.0"),
        ((x, -0.1), ValueError, r"gelu_dropout: p must be a number in \[0, 1\), got -0\.1"),
        ((x, float("nan")), ValueError, r"gelu_dropout: p must be a number in \[0, 1\), got nan"),
        ((x, True), ValueError, r"gelu_dropout: p must be a number in \[0, 1\), got True"),
        ((x, "0.5"), ValueError, r"gelu_dropout: p must be a number in \[0, 1\), got '0\.5'"),
        ((torch.ones(4, dtype=torch.int32, device=dev), 0.1), TypeError,
         r"gelu_dropout: x must be float16, bfloat16, float32 or float64, got torch\.int32"),
        ((torch.tensor(1.0, device=dev), 0.1), ValueError,
         r"gelu_dropout: x must have at least one dimension, got a scalar"),
        ((x, 0.1, True, 5), TypeError, r"gelu_dropout: generator must be a torch\.Generator or None, got int"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(8))
def test_bad_arguments(device, case):
    args, exc, msg = _bad_calls(device)[case]
    with pytest.raises(exc, match=msg):
        fusedaot.gelu_dropout(*args)


@pytest.mark.requires_cuda
def test_generator_on_other_device():
    x = torch.randn(2, 64, device="cuda")
    with pytest.raises(ValueError, match=rf"gelu_dropout: generator is on cpu but x is on {x.device}"):
        fusedaot.gelu_dropout(x, 0.1, generator=torch.Generator())


def test_unsupported_device_type():
    with pytest.raises(ValueError, match=r"gelu_dropout: tensors on 'xla' are not supported"):
        fusedaot.gelu_dropout(on_foreign_device(torch.randn(2, 8)), 0.1)


def test_module():
    m = fusedaot.nn.GELUDropout(0.25)
    x = torch.randn(8, 16)
    assert (m(x) == 0).any()
    assert torch.equal(m.eval()(x), R.gelu_dropout(x, 0.0))
    torch.testing.assert_close(m(x), F.gelu(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"GELUDropout: p must be a number in \[0, 1\), got 1"):
        fusedaot.nn.GELUDropout(1)


# --- GPU: kernels against the reference's mask ----------------------------------------------

SHAPES = [(0, 8), (1,), (7,), (3, 5), (4097,), (64, 1000), (2, 3, 4097), ((1 << 20) + 3,), (1024, 4096)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward(shape, dtype, p):
    x = make_tensor(shape, dtype, "cuda", scale=2.0)
    seed, counter = generator_state("cuda")
    poison(nbytes_of(x))
    y = fusedaot.gelu_dropout(x, p)
    check_forward(x, p, seed, counter, y)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
def test_forward_layouts_and_misaligned(dtype):
    base = make_tensor((1 + 37 * 1003,), dtype, "cuda", scale=2.0)
    cases = [base[1:].view(37, 1003),                                   # misaligned pointer
             base[:37 * 1001].view(37, 1001)[:, :999],                  # strided rows: copied
             make_tensor((1000, 6), dtype, "cuda", scale=2.0).t(),      # transposed: copied
             base[3:3 + 4097]]                                           # misaligned, odd length
    for x in cases:
        before = x.clone()
        seed, counter = generator_state("cuda")
        poison(nbytes_of(x))
        check_forward(x, 0.3, seed, counter, fusedaot.gelu_dropout(x, 0.3))
        assert torch.equal(x, before), "the input was written to"


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_forward_past_one_trip(dtype):
    """The grid is capped at 32 blocks of 256 threads an SM and a 16-bit forward thread takes 4
    chunks of 8 elements a trip (aot/specs/gelu_dropout.py): 2 2/3 trips and a tail of 13."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    n = 8 * 8 * sms * 32 * 256 * 4 // 3 + 13
    x = make_tensor((n,), dtype, "cuda", scale=2.0)
    seed, counter = generator_state("cuda")
    poison(nbytes_of(x))
    check_forward(x, 0.5, seed, counter, fusedaot.gelu_dropout(x, 0.5))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("p", (0.1, 0.5, 0.9))
def test_keep_fraction_and_expectation(p):
    # 2^24 elements of x = 1: y is gelu(1) / (1 - p) where kept, else 0
    n = 1 << 24
    x = torch.ones(n, device="cuda")
    y = fusedaot.gelu_dropout(x, p)
    kept = int((y != 0).sum())
    assert abs(kept / n - (1 - p)) <= 4 * math.sqrt(p * (1 - p) / n), kept / n
    g = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # gelu(1)
    assert torch.allclose(y[y != 0], torch.tensor(g / (1 - p), device="cuda"), rtol=1e-6, atol=0)
    # the expectation is preserved: E[y] = gelu(1), within 4 standard errors of the mean
    assert abs(float(y.double().mean()) - g) <= 4 * g * math.sqrt(p / (1 - p) / n)


@pytest.mark.requires_cuda
def test_seeds_generator_offset_and_reproducibility():
    x = torch.randn(1 << 16, device="cuda")
    gen = torch.cuda.default_generators[x.get_device()]
    torch.manual_seed(11)
    offset = gen.get_offset()
    y1 = fusedaot.gelu_dropout(x, 0.5)
    assert gen.get_offset() == offset + 4, "the generator's offset must advance by 4"
    y2 = fusedaot.gelu_dropout(x, 0.5)
    torch.rand(100, device="cuda")  # torch's own RNG ops share the generator
    y3 = fusedaot.gelu_dropout(x, 0.5)
    torch.manual_seed(11)
    assert torch.equal(fusedaot.gelu_dropout(x, 0.5), y1), "same seed, different mask"
    assert torch.equal(fusedaot.gelu_dropout(x, 0.5), y2)
    torch.rand(100, device="cuda")
    assert torch.equal(fusedaot.gelu_dropout(x, 0.5), y3)
    masks = [y1 == 0, y2 == 0, y3 == 0]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    torch.manual_seed(12)
    assert not torch.equal(fusedaot.gelu_dropout(x, 0.5) == 0, masks[0]), "different seeds, same mask"
    # a generator of one's own: its state, not the default one's
    g = torch.Generator(device="cuda").manual_seed(11)
    before = gen.get_offset()
    assert torch.equal(fusedaot.gelu_dropout(x, 0.5, generator=g), y1)
    assert gen.get_offset() == before and g.get_offset() == 4


@pytest.mark.requires_cuda
def test_plain_gelu():
    x = make_tensor((3, 4097), torch.float32, "cuda", scale=3.0)
    gen = torch.cuda.default_generators[x.get_device()]
    offset = gen.get_offset()
    for y in (fusedaot.gelu_dropout(x, 0.0), fusedaot.gelu_dropout(x, 0.7, training=False)):
        check_forward(x, 0.0, 0, 0, y)
    assert gen.get_offset() == offset, "plain GELU drew random numbers"


@pytest.mark.slow
@pytest.mark.requires_cuda
def test_forward_beyond_2_31_elements():
    n = (1 << 31) + 96
    if torch.cuda.mem_get_info()[0] < 2 * n * 2 + (2 << 30):
        pytest.skip("not enough free GPU memory for two > 2^31-element tensors")
    x = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    seed, counter = generator_state("cuda")
    y = fusedaot.gelu_dropout(x, 0.5)
    for e0 in (0, n - 4096):  # the tail sits past 2^31 elements
        xs = x[e0:e0 + 4096]
        keep = R.dropout_keep(4096, 0.5, seed, counter, device="cuda", start=e0)  # Philox blocks past 2^28
        ref = torch.where(keep, F.gelu(xs.double()) * 2.0, 0.0)
        assert not bool((y[e0:e0 + 4096][~keep] != 0).any())
        assert_close(y[e0:e0 + 4096], ref, TOLERANCES[torch.bfloat16], fwd_mag(xs, 0.5))
    del x, y
    torch.cuda.empty_cache()


# --- GPU backward -------------------------------------------------------------------------

@pytest.mark.requires_cuda
@pytest.mark.parametrize("p", (0.0, 0.1, 0.5))
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape", [(0, 8), (7,), (37, 1000), (4097,), ((1 << 20) + 3,)], ids=str)
def test_backward_uses_the_forward_mask(shape, dtype, p):
    x = make_tensor(shape, dtype, "cuda", scale=2.0).requires_grad_()
    seed, counter = generator_state("cuda")
    y = fusedaot.gelu_dropout(x, p)
    dy = make_tensor(shape, dtype, "cuda")
    poison(nbytes_of(x))
    y.backward(dy)
    assert x.grad.shape == x.shape and x.grad.dtype == dtype
    assert_written(x.grad)
    if p > 0:  # exactly the forward's dropped elements have no gradient
        keep = R.dropout_keep(x.numel(), p, seed, counter, device="cuda").view(shape)
        assert not bool((x.grad[~keep] != 0).any()), "a dropped element has a gradient"
    ref = ref64(R.gelu_dropout_backward, dy, x.detach(), p, seed, counter)
    assert_close(x.grad, ref, TOLERANCES[dtype], bwd_mag(x.detach(), dy, p))


@pytest.mark.requires_cuda
def test_backward_of_strided_inputs():
    x = make_tensor((40, 1003), torch.bfloat16, "cuda", scale=2.0)[:, 1:1000].requires_grad_()
    x.retain_grad()
    seed, counter = generator_state("cuda")
    y = fusedaot.gelu_dropout(x, 0.2)
    dy = make_tensor((1000, 40), torch.bfloat16, "cuda").t()[:, :999]  # a transposed dy
    y.backward(dy)
    ref = ref64(R.gelu_dropout_backward, dy, x.detach(), 0.2, seed, counter)
    assert_close(x.grad, ref, TOLERANCES[torch.bfloat16], bwd_mag(x.detach(), dy, 0.2))


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    x = make_tensor((64, 3072), torch.bfloat16, "cuda", scale=2.0)
    seed, counter = generator_state("cuda")
    assert torch.equal(fusedaot.gelu_dropout(x, 0.25), torch.ops.fusedaot.gelu_dropout(x, 0.25, seed, counter, None))
    rng = torch.tensor([seed, counter], device="cuda")
    assert torch.equal(torch.ops.fusedaot.gelu_dropout(x, 0.25, 0, 0, rng),
                       torch.ops.fusedaot.gelu_dropout(x, 0.25, seed, counter, None))


# --- torch.library integration ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float64), ids=str)
def test_opcheck(device, dtype):
    x = make_tensor((6, 257), dtype, device)
    rng = torch.tensor([123, 456], device=device)
    for args in ((0.3, 5, 9, None), (0.3, 0, 0, rng), (0.0, 0, 0, None)):
        for grad in (False, True):
            torch.library.opcheck(torch.ops.fusedaot.gelu_dropout.default, (x.clone().requires_grad_(grad), *args))
        torch.library.opcheck(torch.ops.fusedaot.gelu_dropout_backward.default, (torch.randn_like(x), x, *args))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    # the compiled graph draws (seed, counter) with torch.randint: check the structure of the
    # result (each element gelu(u) / (1 - p) or 0, about 1 - p of them kept) and that the
    # backward drops exactly the forward's elements
    p = 0.4
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def f(x):
            return fusedaot.gelu_dropout(x * 0.5, p) * 3.0

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):
            x = make_tensor((m, 1000), torch.float32, device, scale=4.0).requires_grad_()
            y = cf(x)
            u = (x * 0.5).detach().double()
            kept = y.detach() != 0
            assert abs(float(kept.double().mean()) - (1 - p)) < 0.05
            full = F.gelu(u) * 3.0 / (1 - p)
            # fp32 gelu on the CPU path cancels in 1 + erf: 2^-24 |u| * 3 / (1 - p) < 2e-5 absolute
            torch.testing.assert_close(y.double()[kept], full[kept], rtol=1e-5, atol=2e-5)
            (dx,) = torch.autograd.grad(y, (x,), torch.ones_like(y))
            grad = 0.5 * torch.erfc(-u / math.sqrt(2)) + u * torch.exp(-u * u / 2) / math.sqrt(2 * math.pi)
            want = torch.where(kept, grad * 1.5 / (1 - p), 0.0)
            torch.testing.assert_close(dx.double(), want, rtol=1e-5, atol=2e-5)
        torch.manual_seed(5)
        first = cf(make_tensor((5, 1000), torch.float32, device))
        torch.manual_seed(5)
        assert torch.equal(cf(make_tensor((5, 1000), torch.float32, device)), first), "compiled: not reproducible"


@pytest.mark.requires_cuda
def test_cuda_graph_replays_draw_fresh_masks():
    """Under capture the public function draws (seed, counter) on the device with torch.randint,
    which a CUDA graph replays with fresh values: every replay has a new mask, and a backward
    captured with the same draw uses exactly that replay's mask."""
    fusedaot.load()
    p, shape = 0.5, (64, 4097)
    x = make_tensor(shape, torch.bfloat16, "cuda", scale=2.0)
    dy = make_tensor(shape, torch.bfloat16, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        fusedaot.gelu_dropout(x, p)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y_public = fusedaot.gelu_dropout(x, p)
        plain = fusedaot.gelu_dropout(x, p, training=False)
        rng = torch.randint(0, (1 << 63) - 1, (2,), dtype=torch.int64, device="cuda")
        y = torch.ops.fusedaot.gelu_dropout(x, p, 0, 0, rng)
        dx = torch.ops.fusedaot.gelu_dropout_backward(dy, x, p, 0, 0, rng)
    masks = []
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        seed, counter = int(rng[0]), int(rng[1])
        check_forward(x, p, seed, counter, y)
        assert_close(dx, ref64(R.gelu_dropout_backward, dy, x, p, seed, counter), TOLERANCES[torch.bfloat16],
                     bwd_mag(x, dy, p))
        check_forward(x, 0.0, 0, 0, plain)
        kept = float((y_public != 0).double().mean())
        assert abs(kept - (1 - p)) < 0.02
        masks.append(y_public == 0)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2]), "a replay reused the mask"
