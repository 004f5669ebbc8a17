"""fusedaot.layer_norm (+ ReLU): reference path, argument errors, kernels over shapes, dtypes,
parameter layouts (none, weight, weight + bias, fp32 parameters of a 16-bit x) and row layouts,
the fused and the two-kernel backward.  torch.library integration (opcheck, compile, CUDA
graphs) and nn.LayerNorm: tests/test_layer_norm_integration.py.

Every result is compared with a float64 evaluation of the formula on the same inputs:
    y = act((x - mean) * rsqrt(var + eps) * w + b),   act = identity or relu
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusedaot
import fusedaot.nn
import fusedaot.reference
from conftest import (DTYPES, assert_close, assert_written, make_tensor, nbytes_of, on_foreign_device, poison,
                      ref64, sample_rows)

# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close)
# out:   the kernel computes in fp32 and rounds once into the storage dtype: the unit
#        roundoff 2^-8 (bf16), 2^-11 (fp16), 2^-24 (fp32).  dweight/dbias use the row of
#        their own dtype (fp32 parameters of a bf16 x are fp32 sums).
# comp:  the fp32 arithmetic before that rounding, relative to `mag` (mags() below: the sum of
#        the absolute values of the terms, with x - mean counted as |x| + mean(|x|): the computed
#        mean errs relative to the sum of |x|, not to |mean|, and x - mean cancels).  The
#        longest chain of dependent fp32 additions is ~70 (a 16384-wide block reduction: 16
#        per thread + 10 tree levels; the looped forms N/C + 16 + 10; dweight's rows per
#        program + the sum over programs), so the sum
#        error is ~70 * 2^-24 = 4.2e-6, plus rsqrt.approx (~2^-22) and a few products.  The
#        looped variance subtracts mean(d)^2 from mean(d^2), d = x - K, K the mean of the first
#        chunk (C = 1024, 2048 or 8192 wide): at most a factor 1 + (mean - K)^2 / var on ~1e-7.
#        |mean - K| <= std * sqrt(N/C - 1) for any data, but these rows are i.i.d., so
#        |mean - K| ~ std / sqrt(C) and the factor is ~1.  (The worst case, N/C, reaches 64 at
#        N = 131072 in the backward's 2048-wide chunks and 128 in the 1024-wide chunks of
#        unaligned 16-bit rows.)  1e-5 (~170 fp32 ulps) leaves a ~2x margin.
# floor: fp16 results below 2^-14 are subnormal; rounding there errs by at most 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=1e-5, floor=0.0),
    torch.float16: dict(out=2**-11, comp=1e-5, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=1e-5, floor=0.0),
}
EPS = 1e-5
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]
# parameter cases: weight and bias of x's dtype; none; weight only; fp32 weight and bias (for a
# 16-bit x: the mixed-precision form; for fp32 x the same as "wb")
PARAMS = ("wb", "none", "w", "wb32")


def oracle(x, w, b, eps, relu=False):
    y = F.layer_norm(x, x.shape[-1:], w, b, eps)
    return torch.relu(y) if relu else y


def _stats(x, eps):
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    rstd = torch.rsqrt((x - mean).square().mean(-1, keepdim=True) + eps)
    return x, mean, rstd


def mags(x, w, b, eps, dy=None, relu=False):
    """Magnitude scales: forward |x_hat w| + |b| with |x - mean| counted as |x| + mean(|x|); with
    dy, those of dx = rstd (g - mean(g) - x_hat mean(g x_hat)), dw = sum dyp x_hat, db = sum dyp."""
    x, mean, rstd = _stats(x, eps)
    xh = (x.abs() + x.abs().mean(-1, keepdim=True)) * rstd
    wd = 1.0 if w is None else w.double().abs()
    mag_y = xh * wd + (0.0 if b is None else b.double().abs())
    if dy is None:
        return mag_y
    dyp = dy.double().abs()
    if relu:
        pre = (x - mean) * rstd * (1.0 if w is None else w.double()) + (0.0 if b is None else b.double())
        dyp = dyp * (pre > 0)
    g = dyp * wd
    mag_dx = rstd * (g + g.mean(-1, keepdim=True) + xh * (g * xh).mean(-1, keepdim=True))
    n = x.shape[-1]
    return mag_dx, (dyp * xh).reshape(-1, n).sum(0), dyp.reshape(-1, n).sum(0)


def inputs(shape, dtype, device, params="wb", scale=1.0, offset=0.0):
    x = make_tensor(shape, dtype, device, scale=scale, offset=offset)
    n = shape[-1:]
    pdt = torch.float32 if params == "wb32" else dtype
    w = make_tensor(n, pdt, device, scale=0.5, offset=1.0) if params in ("wb", "w", "wb32") else None
    b = make_tensor(n, pdt, device, scale=0.5) if params in ("wb", "wb32") else None
    return x, w, b


def relu_safe(dy, x, w, b, eps):
    """dy with zeros where the pre-activation is within 1e-3 of 0: there fp32 and float64 may
    disagree on the ReLU's side, and a zero dy makes either side give the same gradient."""
    x, mean, rstd = _stats(x, eps)
    pre = (x - mean) * rstd * (1.0 if w is None else w.double()) + (0.0 if b is None else b.double())
    return torch.where(pre.abs() < 1e-3, torch.zeros_like(dy), dy)


def check_forward(x, w, b, eps=EPS, relu=False, poisoned=True):
    if poisoned and x.is_cuda:
        poison(nbytes_of(x))
    y = fusedaot.layer_norm(x, w, b, eps, "relu" if relu else None)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous()
    assert_written(y)
    assert_close(y, ref64(oracle, x, w, b, eps=eps, relu=relu), TOLERANCES[x.dtype], mags(x, w, b, eps))
    return y


def check_backward(x, w, b, dy, eps=EPS, relu=False):
    if relu:
        dy = relu_safe(dy, x, w, b, eps)
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = fusedaot.layer_norm(x, w, b, eps, "relu" if relu else None)
    if x.is_cuda:
        poison(nbytes_of(x))
    y.backward(dy)
    assert x.grad.shape == x.shape and x.grad.dtype == x.dtype
    _, (dx_ref, dw_ref, db_ref) = ref64(oracle, x, w, b, dy=dy, eps=eps, relu=relu)
    mag_dx, mag_dw, mag_db = mags(x.detach(), w, b, eps, dy, relu)
    assert_written(x.grad)
    assert_close(x.grad, dx_ref, TOLERANCES[x.dtype], mag_dx, "dx")
    for p, ref, mag, name in ((w, dw_ref, mag_dw, "dweight"), (b, db_ref, mag_db, "dbias")):
        if p is not None:
            assert p.grad.shape == p.shape and p.grad.dtype == p.dtype, name
            assert_written(p.grad)
            assert_close(p.grad, ref, TOLERANCES[p.dtype], mag, name)
    return x.grad, None if w is None else w.grad, None if b is None else b.grad


# --- CPU: the reference path ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (3, 127), (4, 1000), (2, 3, 4097)], ids=str)
@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_cpu_matches_float64(shape, dtype, params, relu):
    x, w, b = inputs(shape, dtype, "cpu", params)
    check_forward(x, w, b, relu=relu)
    assert_close(fusedaot.reference.layer_norm(x, w, b, EPS, "relu" if relu else None),
                 ref64(oracle, x, w, b, eps=EPS, relu=relu), TOLERANCES[dtype], mags(x, w, b, EPS))
    check_backward(x, w, b, make_tensor(shape, dtype, "cpu"), relu=relu)


def test_reference_is_float64_exact():
    x, w, b = inputs((5, 300), torch.float64, "cpu")
    torch.testing.assert_close(fusedaot.reference.layer_norm(x, w, b, EPS, "relu"), oracle(x, w, b, EPS, True),
                               rtol=1e-14, atol=0)
    dy = torch.randn_like(x)
    _, grads = ref64(oracle, x, w, b, dy=dy, eps=EPS, relu=True)
    for got, want in zip(fusedaot.reference.layer_norm_backward(dy, x, w, b, EPS, "relu"), grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_layer_norm_relu_alias():
    x, w, b = inputs((4, 96), torch.float32, "cpu")
    assert torch.equal(fusedaot.layer_norm_relu(x, w, b, 1e-4), fusedaot.layer_norm(x, w, b, 1e-4, "relu"))


# --- argument errors --------------------------------------------------------------------

def _bad_calls(dev):
    f32, bf, f16 = torch.float32, torch.bfloat16, torch.float16
    x = torch.randn(2, 4096, device=dev, dtype=bf)
    w = torch.ones(4096, dtype=bf, device=dev)
    return [
        ((torch.ones(2, 8, dtype=torch.int32, device=dev),), {}, TypeError,
         r"layer_norm: x must be float16, bfloat16 or float32, got torch\.int32"),
        ((torch.ones(2, 8, dtype=torch.float64, device=dev),), {}, TypeError,
         r"layer_norm: x must be float16, bfloat16 or float32, got torch\.float64"),
        ((x, torch.ones(4096, dtype=f16, device=dev)), {}, TypeError,
         r"layer_norm: weight must be torch\.bfloat16 \(x's dtype\) or torch\.float32, got torch\.float16"),
        ((x, w, torch.ones(4096, dtype=f32, device=dev)), {}, TypeError,
         r"layer_norm: bias dtype torch\.float32 does not match weight dtype torch\.bfloat16"),
        ((x, torch.ones(4095, dtype=bf, device=dev)), {}, ValueError,
         r"layer_norm: weight has 4095 elements but x's last dimension is 4096"),
        ((x, None, torch.ones(2, 4096, dtype=bf, device=dev)), {}, ValueError,
         r"layer_norm: bias has shape \(2, 4096\) but x's last dimension is 4096"),
        ((x,), dict(eps=float("nan")), ValueError, r"layer_norm: eps must be a positive finite number, got nan"),
        ((x,), dict(eps=0.0), ValueError, r"layer_norm: eps must be a positive finite number, got 0\.0"),
        ((x,), dict(eps=-1e-5), ValueError, r"layer_norm: eps must be a positive finite number, got -1e-05"),
        ((x,), dict(eps=None), ValueError, r"layer_norm: eps must be a positive finite number, got None"),
        ((x,), dict(activation="gelu"), ValueError, r"layer_norm: activation must be None or 'relu', got 'gelu'"),
        ((x, "w"), {}, TypeError, r"layer_norm: weight must be a torch\.Tensor or None, got str"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(12))
def test_bad_arguments(device, case):
    args, kwargs, exc, msg = _bad_calls(device)[case]
    with pytest.raises(exc, match=msg):
        fusedaot.layer_norm(*args, **kwargs)


@pytest.mark.requires_cuda
def test_parameter_on_other_device():
    x = torch.randn(2, 64, device="cuda")
    with pytest.raises(ValueError, match=rf"layer_norm: bias is on cpu but x is on {x.device}"):
        fusedaot.layer_norm(x, torch.ones(64, device="cuda"), torch.zeros(64))


def test_unsupported_device_type():
    x = on_foreign_device(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"layer_norm: tensors on 'xla' are not supported; use CUDA or CPU tensors"):
        fusedaot.layer_norm(x)


# --- GPU forward --------------------------------------------------------------------------

MS = (0, 1, 16, 128, 1024, 4096)
# 3072 and 4096 at 4096 rows: the CUDA C++ row form (16-bit rows 2049-16384 wide from 2048 rows);
# 16392, 32768 and 40008: the held forms' widths (one in registers, one half in shared memory),
# at their edges and with a partly used last vector group, here through Triton (fewer than 2048
# rows) and in test_forward_many_wide_rows through the CUDA C++ forms
NS = (1, 3, 127, 1000, 1024, 3072, 4096, 4097, 8192, 16384, 16392, 32768, 40008, 65536, 131072)
# Every N for small M; large M only while M * N <= 2^24 (the float64 reference stays small).
GRID = [(m, n) for m in MS for n in NS if m * n <= 1 << 24]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("params", ("wb", "none", "wb32"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", GRID, ids=[f"{m}x{n}" for m, n in GRID])
def test_forward_grid(m, n, dtype, params):
    # relu with fp32 parameters, plain otherwise: both epilogues over every width
    check_forward(*inputs((m, n), dtype, "cuda", params), relu=params == "wb32")


# The CUDA C++ forms of 16-bit rows wider than 2048 take calls of at least 2048 rows
# (aot/specs/layer_norm.py, LAYER_NORM_CUDA_ROWS), past the grid's M * N bound: every row is
# checked for being written and a sample of rows (the first, the last and every 97th; rows are
# independent) against float64.  Widths: the row form's first (2056: 257 vectors, one thread of
# the ninth warp), 3072, 6144, 12296 and its widest (16384), then the held forms'.
MANY_ROWS = [(2051, n) for n in (2056, 3072, 6144, 12296, 16384, 16392, 32768, 40008, 65536)]


def check_forward_rows(x, w, b, eps=EPS, relu=False):
    poison(nbytes_of(x))
    y = fusedaot.layer_norm(x, w, b, eps, "relu" if relu else None)
    assert_written(y)
    rows = sample_rows(x.shape[0], x.device)
    xs = x[rows]
    assert_close(y[rows], ref64(oracle, xs, w, b, eps=eps, relu=relu), TOLERANCES[x.dtype], mags(xs, w, b, eps))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("m,n", MANY_ROWS, ids=[f"{m}x{n}" for m, n in MANY_ROWS])
def test_forward_many_wide_rows(m, n, dtype, params):
    x, w, b = inputs((m, n), dtype, "cuda", params)
    check_forward_rows(x, w, b, relu=params in ("w", "wb32"))
    if params == "wb":   # the flags the row form's fixed entry point does not take: bias only, ReLU
        check_forward_rows(x, None, b)
        check_forward_rows(x, w, b, relu=True)
        # var ~ 1e-4: eps changes the result far beyond the tolerance
        check_forward_rows(make_tensor((m, n), dtype, "cuda", scale=1e-2), w, b, eps=1e-4)
    # strided rows (16-byte aligned: the same kernels) and rows of mean 1000
    big = make_tensor((m, n + 8), dtype, "cuda")
    check_forward_rows(big[:, 8:], w, b)
    check_forward_rows(make_tensor((m, n), dtype, "cuda", offset=1000.0), w, b)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (1000, 4096, 40008, 65536))
def test_forward_large_mean(n, dtype):
    # rows of mean 1000 and std 1: the variance must not cancel (two-pass in a block, shifted
    # sums in the looped form); mags() counts mean(|x|) in the magnitude of x - mean
    check_forward(*inputs((9, n), dtype, "cuda", "wb", offset=1000.0))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("n", (1000, 4097))
def test_forward_huge_mean(n, dtype):
    # rows of mean 2e19: a squared difference of means overflows fp32 (2e19^2 > 3.4e38), which
    # must not turn into NaN where a thread or warp holds no column (0 * inf); std 1e17 keeps
    # the true sums of squares (n * 1e34) finite
    check_forward(*inputs((5, n), dtype, "cuda", "wb", scale=1e17, offset=2e19))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (127, 1000, 4096, 4097, 32768, 65536))
@pytest.mark.parametrize("pad,offset", [(3, 0), (64, 0), (64, 1), (8, 8)], ids=["odd", "wide", "misaligned", "offset8"])
def test_forward_strided_rows(n, dtype, pad, offset):
    big = make_tensor((37, n + pad), dtype, "cuda")
    x = big[:, offset:offset + n]
    assert x.stride() == (n + pad, 1)
    before = big.clone()
    _, w, b = inputs((n,), dtype, "cuda")
    check_forward(x, w, b)
    assert torch.equal(big, before), "the input was written to"


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (3, 1000, 4097, 40008, 65536))
def test_forward_layouts(n, dtype):
    _, w, b = inputs((n,), dtype, "cuda")
    check_forward(make_tensor((2, 33, n), dtype, "cuda"), w, b)                  # 3-D
    check_forward(make_tensor((5, 7, n), dtype, "cuda").transpose(0, 1), w, b)   # leading dims transposed
    check_forward(make_tensor((n, 9), dtype, "cuda").t(), w, b)                  # last dim strided: copied
    check_forward(make_tensor((4, 2 * n), dtype, "cuda")[:, ::2], w, b)          # last dim stride 2
    check_forward(make_tensor((1, n), dtype, "cuda").expand(6, n), w, b)         # row stride 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (3, 1000, 4097))
def test_strided_parameters(n, dtype, device):
    # weight and bias are views of every other element: read through their stride (or copied)
    x = make_tensor((6, n), dtype, device)
    w = make_tensor((2 * n,), dtype, device, scale=0.5, offset=1.0)[::2]
    b = make_tensor((2 * n,), dtype, device, scale=0.5)[1::2]
    check_forward(x, w, b)
    check_backward(x, w, b, make_tensor((6, n), dtype, device))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", (1e-6, 1e-4, 0.5))
@pytest.mark.parametrize("n", (64, 4096, 32768, 65536))
def test_forward_eps_reaches_the_kernel(n, eps, dtype):
    # var ~ 1e-4, so each eps changes the result far beyond the tolerance
    check_forward(make_tensor((8, n), dtype, "cuda", scale=1e-2), None, None, eps)


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    x, w, b = inputs((64, 3072), torch.bfloat16, "cuda", "wb32")
    for relu in (False, True):
        assert torch.equal(fusedaot.layer_norm(x, w, b, EPS, "relu" if relu else None),
                           torch.ops.fusedaot.layer_norm(x, w, b, EPS, relu))


@pytest.mark.slow
@pytest.mark.requires_cuda
def test_forward_beyond_2_31_elements():
    n = 4096
    m = (1 << 31) // n + 64
    if torch.cuda.mem_get_info()[0] < 2 * m * n * 2 + (1 << 30):
        pytest.skip("not enough free GPU memory for a > 2^31-element tensor")
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    y = fusedaot.layer_norm(x)
    for r in (slice(0, 2), slice(m - 64, m)):  # the tail rows sit past 2^31 elements
        assert_close(y[r], ref64(oracle, x[r], None, None, eps=EPS), TOLERANCES[torch.bfloat16],
                     mags(x[r], None, None, EPS))
    del x, y
    torch.cuda.empty_cache()


# --- GPU backward -------------------------------------------------------------------------

BWD = [(m, n) for m in (0, 1, 37, 1024) for n in (1, 127, 1000, 4096, 4097, 8192, 8193, 16384, 16385, 65536)
       if m * n <= 1 << 24]
BWD += [(8, 131072), (600, 20000)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", BWD, ids=[f"{m}x{n}" for m, n in BWD])
def test_backward(m, n, dtype, params):
    x, w, b = inputs((m, n), dtype, "cuda", params)
    dx, dw, db = check_backward(x, w, b, make_tensor((m, n), dtype, "cuda"), relu=params == "w")
    if m == 0:
        for p in (dw, db):
            assert p is None or torch.equal(p, torch.zeros_like(p))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (1000, 4097, 65536))
def test_backward_strided(n, dtype):
    x = make_tensor((19, n + 8), dtype, "cuda")[:, 3:3 + n]
    dy = make_tensor((19, n + 40), dtype, "cuda")[:, :n]
    _, w, b = inputs((n,), dtype, "cuda")
    check_backward(x, w, b, dy)
    check_backward(x, w, b, dy, relu=True)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (1000, 65536))
def test_backward_large_mean(n, dtype):
    x, w, b = inputs((21, n), dtype, "cuda", "wb", offset=1000.0)
    check_backward(x, w, b, make_tensor((21, n), dtype, "cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (3000, 20000))
def test_backward_of_a_sum(n, dtype):
    # y.sum().backward() hands the op an expanded dy (every stride 0)
    x, w, b = inputs((21, n), dtype, "cuda")
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    fusedaot.layer_norm(x, w, b, EPS).sum().backward()
    dy = torch.ones_like(x)
    _, (dx_ref, dw_ref, db_ref) = ref64(oracle, x, w, b, dy=dy, eps=EPS)
    mag_dx, mag_dw, mag_db = mags(x.detach(), w.detach(), b.detach(), EPS, dy)
    assert_close(x.grad, dx_ref, TOLERANCES[dtype], mag_dx, "dx")
    assert_close(w.grad, dw_ref, TOLERANCES[dtype], mag_dw, "dweight")
    assert_close(b.grad, db_ref, TOLERANCES[dtype], mag_db, "dbias")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", [(5, 8193), (17, 12288), (37, 20000), (3, 40000)], ids=str)
def test_fused_looped_backward_through_the_c_abi(m, n, dtype):
    """The fused backward's looped variant (rows wider than its widest single block, which is
    at most LAYER_NORM_SPLIT_ABOVE = 8192 wide; Python sends such rows to the two-kernel
    backward, C callers may not) gives the same results."""
    from fusedaot import _lib

    x, w, b = inputs((m, n), dtype, "cuda", "wb32")
    dy = relu_safe(make_tensor((m, n), dtype, "cuda"), x, w, b, EPS)
    lib, dev = _lib.device_library(x.get_device()), x.get_device()
    for g in (1, 5):
        dx = torch.full_like(x, float("nan"))
        dw, db = torch.full_like(w, float("nan")), torch.full_like(b, float("nan"))
        partial = torch.full((g, 2 * n), float("nan"), dtype=torch.float32, device="cuda")
        flags = 1 | 2 | (4 if dtype != torch.float32 else 0) | 8
        stream = _lib.current_stream(dev)
        rc = lib.layer_norm_bwd(stream, dev, _lib.DTYPE_CODES[dtype], dy.data_ptr(), x.data_ptr(), w.data_ptr(),
                                b.data_ptr(), dx.data_ptr(), partial.data_ptr(), dw.data_ptr(), db.data_ptr(),
                                n, n, n, m, n, EPS, flags, g)
        assert rc == 0, lib.error(rc)
        if g > 1:
            rc = lib.layer_norm_dw(stream, dev, _lib.DTYPE_CODES[w.dtype], partial.data_ptr(), dw.data_ptr(),
                                   db.data_ptr(), g, n, 3)
            assert rc == 0, lib.error(rc)
        _, (dx_ref, dw_ref, db_ref) = ref64(oracle, x, w, b, dy=dy, eps=EPS, relu=True)
        mag_dx, mag_dw, mag_db = mags(x, w, b, EPS, dy, relu=True)
        assert_close(dx, dx_ref, TOLERANCES[dtype], mag_dx, f"dx G={g}")
        assert_close(dw, dw_ref, TOLERANCES[w.dtype], mag_dw, f"dweight G={g}")
        assert_close(db, db_ref, TOLERANCES[b.dtype], mag_db, f"dbias G={g}")


@pytest.mark.requires_cuda
def test_backward_op_equals_autograd():
    x, w, b = inputs((64, 4096), torch.bfloat16, "cuda")
    dy = torch.randn_like(x)
    dx, dw, db = torch.ops.fusedaot.layer_norm_backward(dy, x, w, b, EPS, False)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    fusedaot.layer_norm(x, w, b, EPS).backward(dy)
    assert torch.equal(dx, x.grad) and torch.equal(dw, w.grad) and torch.equal(db, b.grad)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("m,n", [(4096, 4096), (3000, 1000), (64, 65536)], ids=str)
def test_backward_deterministic(m, n, dtype):
    x, w, b = inputs((m, n), dtype, "cuda")
    dy = make_tensor((m, n), dtype, "cuda")
    first = torch.ops.fusedaot.layer_norm_backward(dy, x, w, b, EPS, False)
    for _ in range(2):
        again = torch.ops.fusedaot.layer_norm_backward(dy, x, w, b, EPS, False)
        assert all(torch.equal(a, c) for a, c in zip(first, again))
