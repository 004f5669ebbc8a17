"""fusedaot.fused_add_rms_norm: reference path, errors, kernels over shapes, dtypes and layouts,
backward with and without a gradient on the new residual, torch.library integration.

    s = x + residual   (rounded to the dtype, as the unfused add)
    y = s * rsqrt(mean(s^2) + eps) * w
The float64 oracle normalizes the same rounded s; s itself is checked against the exact sum.
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
import fusedaot.nn
import fusedaot.reference
from conftest import DTYPES, assert_close, assert_written, make_tensor, nbytes_of, poison, to64
from test_rms_norm import EPS, TOLERANCES, grad_mags, oracle

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]


def inputs(shape, dtype, device):
    x = make_tensor(shape, dtype, device)
    r = make_tensor(shape, dtype, device)
    w = make_tensor(shape[-1:], dtype, device, scale=0.5, offset=1.0)
    return x, r, w


def check_forward(x, r, w, eps=EPS):
    if x.is_cuda:
        poison(nbytes_of(x))
    y, s = fusedaot.fused_add_rms_norm(x, r, w, eps)
    for out in (y, s):
        assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    assert_written(y, s)
    # s: one rounding of the exact sum
    assert_close(s, to64(x) + to64(r), TOLERANCES[x.dtype], what="new residual")
    with torch.no_grad():
        assert_close(y, oracle(to64(s), to64(w), eps), TOLERANCES[x.dtype], what="y")
    return y, s


def check_backward(x, r, w, dy, ds, eps=EPS):
    """ds None: only y feeds the loss (the new residual's gradient is zero)."""
    x, r, w = (t.detach().requires_grad_() for t in (x, r, w))
    y, s = fusedaot.fused_add_rms_norm(x, r, w, eps)
    if x.is_cuda:
        poison(nbytes_of(x))
    torch.autograd.backward((y, s) if ds is not None else (y,), (dy, ds) if ds is not None else (dy,))
    # oracle: the same rounded s as a float64 leaf
    s64 = to64(s).requires_grad_()
    w64 = to64(w).requires_grad_()
    y64 = oracle(s64, w64, eps)
    loss = (y64 * to64(dy)).sum() + ((s64 * to64(ds)).sum() if ds is not None else 0)
    loss.backward()
    mag_dx, mag_dw = grad_mags(s.detach(), w.detach(), dy, eps)
    if ds is not None:
        mag_dx = mag_dx + to64(ds).abs()
    assert_written(x.grad, r.grad, w.grad)
    assert_close(x.grad, s64.grad, TOLERANCES[x.dtype], mag_dx, "dx")
    assert torch.equal(x.grad, r.grad), "x and residual must get the same gradient"
    assert_close(w.grad, w64.grad, TOLERANCES[x.dtype], mag_dw, "dweight")


# --- CPU: the reference path ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (3, 127), (2, 3, 1000)], ids=str)
def test_cpu_matches_float64(shape, dtype):
    x, r, w = inputs(shape, dtype, "cpu")
    check_forward(x, r, w)
    check_backward(x, r, w, make_tensor(shape, dtype, "cpu"), make_tensor(shape, dtype, "cpu"))
    check_backward(x, r, w, make_tensor(shape, dtype, "cpu"), None)


# --- argument errors --------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments(device):
    bf = torch.bfloat16
    x, r, w = inputs((2, 256), bf, device)
    cases = [
        ((x, r[:, :128], w), ValueError, r"fused_add_rms_norm: residual has shape \(2, 128\) but x has shape \(2, 256\)"),
        ((x, r.float(), w), TypeError, r"fused_add_rms_norm: residual dtype torch\.float32 does not match x dtype torch\.bfloat16"),
        ((x, r, None), TypeError, r"fused_add_rms_norm: weight is required, got None"),
        ((x, r, w[:255]), ValueError, r"fused_add_rms_norm: weight has 255 elements but x's last dimension is 256"),
        ((x, r, w.float()), TypeError, r"fused_add_rms_norm: weight dtype torch\.float32 does not match x dtype"),
        ((x.double(), r.double(), w.double()), TypeError, r"fused_add_rms_norm: x must be float16, bfloat16 or float32"),
        ((x, 1.0, w), TypeError, r"fused_add_rms_norm: residual must be a torch\.Tensor, got float"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fusedaot.fused_add_rms_norm(*args)
    with pytest.raises(ValueError, match=r"fused_add_rms_norm: eps must be a positive finite number, got 0\.0"):
        fusedaot.fused_add_rms_norm(x, r, w, 0.0)


@pytest.mark.requires_cuda
def test_residual_on_other_device():
    x, r, w = inputs((2, 64), torch.float32, "cuda")
    with pytest.raises(ValueError, match=r"fused_add_rms_norm: residual is on cpu but x is on cuda"):
        fusedaot.fused_add_rms_norm(x, r.cpu(), w)


# --- GPU forward --------------------------------------------------------------------------

MS = (0, 1, 16, 128, 1024, 4096)
NS = (1, 3, 127, 1000, 3072, 4096, 4097, 8192, 65536, 131072)
GRID = [(m, n) for m in MS for n in NS if m * n <= 1 << 24]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", GRID, ids=[f"{m}x{n}" for m, n in GRID])
def test_forward_grid(m, n, dtype):
    check_forward(*inputs((m, n), dtype, "cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (127, 1000, 4096, 65536))
@pytest.mark.parametrize("layout", ["strided", "misaligned", "mixed"])
def test_forward_strided(n, dtype, layout):
    big_x = make_tensor((21, n + 64), dtype, "cuda")
    big_r = make_tensor((21, n + 24), dtype, "cuda")
    if layout == "strided":       # both aligned, different row strides
        x, r = big_x[:, :n], big_r[:, 8:8 + n]
    elif layout == "misaligned":  # both off 16-byte alignment
        x, r = big_x[:, 1:1 + n], big_r[:, 3:3 + n]
    else:                         # x contiguous, residual misaligned
        x, r = make_tensor((21, n), dtype, "cuda"), big_r[:, 1:1 + n]
    before = (big_x.clone(), big_r.clone())
    check_forward(x, r, inputs((n,), dtype, "cuda")[2])
    assert torch.equal(big_x, before[0]) and torch.equal(big_r, before[1]), "an input was written to"


@pytest.mark.requires_cuda
def test_forward_3d_and_transposed():
    x, r, w = inputs((2, 33, 3072), torch.bfloat16, "cuda")
    check_forward(x, r, w)
    check_forward(x.transpose(0, 1), r.transpose(0, 1), w)


# --- GPU backward -------------------------------------------------------------------------

BWD = [(m, n) for m in (0, 1, 37, 1024) for n in (1, 127, 1000, 4096, 4097, 65536) if m * n <= 1 << 24]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", BWD, ids=[f"{m}x{n}" for m, n in BWD])
@pytest.mark.parametrize("with_ds", [True, False], ids=["ds", "no-ds"])
def test_backward(m, n, dtype, with_ds):
    x, r, w = inputs((m, n), dtype, "cuda")
    ds = make_tensor((m, n), dtype, "cuda") if with_ds else None
    check_backward(x, r, w, make_tensor((m, n), dtype, "cuda"), ds)


@pytest.mark.requires_cuda
def test_backward_strided_grads():
    n = 4097
    x, r, w = inputs((19, n), torch.bfloat16, "cuda")
    dy = make_tensor((19, n + 8), torch.bfloat16, "cuda")[:, 1:1 + n]
    ds = make_tensor((19, n + 40), torch.bfloat16, "cuda")[:, :n]
    check_backward(x, r, w, dy, ds)


# --- torch.library integration ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
def test_opcheck(device, dtype):
    x, r, w = inputs((6, 257), dtype, device)
    for grad in (False, True):
        args = [t.clone().requires_grad_(grad) for t in (x, r, w)]
        torch.library.opcheck(torch.ops.fusedaot.fused_add_rms_norm.default, (*args, EPS))
    dy, ds = torch.randn_like(x), torch.randn_like(x)
    torch.library.opcheck(torch.ops.fusedaot.fused_add_rms_norm_backward.default, (dy, ds, x + r, w, EPS))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def f(x, r, w):
        y, s = fusedaot.fused_add_rms_norm(x * 2.0, r, w, 1e-5)
        return y + 1.0, s

    cf = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=True)
    tol = TOLERANCES[torch.bfloat16]
    for m in (5, 17):
        x, r, w = (t.requires_grad_() for t in inputs((m, 1000), torch.bfloat16, device))
        got, want = cf(x, r, w), f(x, r, w)
        for a, b in zip(got, want):
            assert_close(a, b, tol, what="forward")
        dy, ds = torch.randn_like(got[0]), torch.randn_like(got[1])
        g_got = torch.autograd.grad(got, (x, r, w), (dy, ds))
        g_want = torch.autograd.grad(want, (x, r, w), (dy, ds))
        for a, b, name in zip(g_got, g_want, ("dx", "dr", "dw")):
            assert_close(a, b, tol, what=name)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("m,n", [(1, 4096), (37, 4097), (4, 65536)], ids=str)
def test_cuda_graph_replay(m, n):
    fusedaot.load()
    dtype = torch.bfloat16
    x, r, w = inputs((m, n), dtype, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fusedaot.fused_add_rms_norm(x, r, w, EPS)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y, s = fusedaot.fused_add_rms_norm(x, r, w, EPS)
    for _ in range(2):
        x.copy_(make_tensor((m, n), dtype, "cuda"))
        r.copy_(make_tensor((m, n), dtype, "cuda"))
        g.replay()
        torch.cuda.synchronize()
        assert_close(s, to64(x) + to64(r), TOLERANCES[dtype], what="new residual")
        assert_close(y, oracle(to64(s), to64(w), EPS), TOLERANCES[dtype], what="y")


# --- nn.RMSNorm(x, residual) ----------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_module_with_residual(device, affine):
    n, dtype = 1000, torch.bfloat16
    norm = fusedaot.nn.RMSNorm(n, eps=1e-5, elementwise_affine=affine, device=device, dtype=dtype)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(inputs((n,), dtype, device)[2])
    x, r, _ = inputs((3, 5, n), dtype, device)
    y, s = norm(x, r)
    assert_close(s, to64(x) + to64(r), TOLERANCES[dtype], what="new residual")
    assert_close(y, oracle(to64(s), to64(norm.weight) if affine else None, 1e-5), TOLERANCES[dtype], what="y")
