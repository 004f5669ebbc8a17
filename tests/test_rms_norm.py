"""fusedaot.rms_norm: reference path, argument errors, kernels over shapes, dtypes and
layouts, backward, torch.library integration (opcheck, compile, CUDA graphs), nn.RMSNorm.

Every result is compared with a float64 evaluation of the formula on the same inputs:
    y = x * rsqrt(mean(x^2) + eps) * w
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusedaot
import fusedaot.nn
import fusedaot.reference
from conftest import (DTYPES, assert_close, assert_written, compile_backends, make_tensor, nbytes_of,
                      on_foreign_device, poison, ref64, sample_rows)

# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close)
# out:   the kernel computes in fp32 and rounds once into the storage dtype: the unit
#        roundoff 2^-8 (bf16), 2^-11 (fp16), 2^-24 (fp32).
# comp:  the fp32 arithmetic before that rounding, relative to `mag` (the sum of the
#        absolute values of the terms).  The longest chain of dependent fp32 additions
#        is ~70 (a 32768-wide block reduction: 64 per thread + 9 tree levels; the looped
#        form N/8192 + 16 + 9; dweight's rows per program + the sum over programs), so
#        the worst-case sum error is ~70 * 2^-24 = 4.2e-6, plus rsqrt.approx (~2^-22)
#        and two products.  1e-5 (~170 fp32 ulps) leaves a ~2x margin over that.
# floor: fp16 results below 2^-14 are subnormal; rounding there errs by at most 2^-25
#        (half the subnormal spacing), whatever the result's size.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=1e-5, floor=0.0),
    torch.float16: dict(out=2**-11, comp=1e-5, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=1e-5, floor=0.0),
}
EPS = 1e-6
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]


def oracle(x, w, eps):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w


def grad_mags(x, w, dy, eps):
    """Magnitude scales of dx = rstd*(w*dy - x_hat*mean(x_hat*w*dy)) and dw = sum dy*x_hat."""
    x, dy = x.double(), dy.double()
    wd = dy if w is None else dy * w.double()
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    xh = x * rstd
    mag_dx = rstd * (wd.abs() + xh.abs() * (xh * wd).abs().mean(-1, keepdim=True))
    mag_dw = (dy * xh).abs().reshape(-1, x.shape[-1]).sum(0)
    return mag_dx, mag_dw


def inputs(shape, dtype, device, weight=True):
    x = make_tensor(shape, dtype, device)
    w = make_tensor(shape[-1:], dtype, device, scale=0.5, offset=1.0) if weight else None
    return x, w


def check_forward(x, w, eps=EPS, poisoned=True):
    if poisoned and x.is_cuda:
        poison(nbytes_of(x))
    y = fusedaot.rms_norm(x, w, eps)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous()
    assert_written(y)
    assert_close(y, ref64(oracle, x, w, eps=eps), TOLERANCES[x.dtype])
    return y


def check_backward(x, w, dy, eps=EPS):
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    y = fusedaot.rms_norm(x, w, eps)
    if x.is_cuda:
        poison(nbytes_of(x))
    y.backward(dy)
    assert x.grad.shape == x.shape and x.grad.dtype == x.dtype
    _, (dx_ref, dw_ref) = ref64(oracle, x, w, dy=dy, eps=eps)
    mag_dx, mag_dw = grad_mags(x.detach(), w, dy, eps)
    assert_written(x.grad)
    assert_close(x.grad, dx_ref, TOLERANCES[x.dtype], mag_dx, "dx")
    if w is not None:
        assert w.grad.shape == w.shape and w.grad.dtype == w.dtype
        assert_written(w.grad)
        assert_close(w.grad, dw_ref, TOLERANCES[x.dtype], mag_dw, "dweight")
    return x.grad, None if w is None else w.grad


# --- CPU: the reference path ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (3, 127), (4, 1000), (2, 3, 4097)], ids=str)
@pytest.mark.parametrize("weight", [True, False], ids=["w", "nw"])
def test_cpu_matches_float64(shape, dtype, weight):
    x, w = inputs(shape, dtype, "cpu", weight)
    check_forward(x, w)
    assert_close(fusedaot.reference.rms_norm(x, w, EPS), ref64(oracle, x, w, eps=EPS), TOLERANCES[dtype])
    check_backward(x, w, make_tensor(shape, dtype, "cpu"))


def test_reference_is_float64_exact():
    x, w = inputs((5, 300), torch.float64, "cpu")
    torch.testing.assert_close(fusedaot.reference.rms_norm(x, w, EPS), oracle(x, w, EPS), rtol=1e-14, atol=0)


# --- argument errors --------------------------------------------------------------------

def _bad_calls(dev):
    f32, bf = torch.float32, torch.bfloat16
    x = torch.randn(2, 4096, device=dev, dtype=bf)
    return [
        ((torch.ones(2, 8, dtype=torch.int32, device=dev), None, EPS), TypeError,
         r"rms_norm: x must be float16, bfloat16 or float32, got torch\.int32"),
        ((torch.ones(2, 8, dtype=torch.float64, device=dev), None, EPS), TypeError,
         r"rms_norm: x must be float16, bfloat16 or float32, got torch\.float64"),
        ((x, torch.ones(4096, dtype=f32, device=dev), EPS), TypeError,
         r"rms_norm: weight dtype torch\.float32 does not match x dtype torch\.bfloat16"),
        ((x, torch.ones(4095, dtype=bf, device=dev), EPS), ValueError,
         r"rms_norm: weight has 4095 elements but x's last dimension is 4096"),
        ((x, None, float("nan")), ValueError, r"rms_norm: eps must be a positive finite number, got nan"),
        ((x, None, float("inf")), ValueError, r"rms_norm: eps must be a positive finite number, got inf"),
        ((x, None, 0.0), ValueError, r"rms_norm: eps must be a positive finite number, got 0\.0"),
        ((x, None, -1e-6), ValueError, r"rms_norm: eps must be a positive finite number, got -1e-06"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(8))
def test_bad_arguments(device, case):
    args, exc, msg = _bad_calls(device)[case]
    with pytest.raises(exc, match=msg):
        fusedaot.rms_norm(*args)


@pytest.mark.requires_cuda
def test_weight_on_other_device():
    x = torch.randn(2, 64, device="cuda")
    with pytest.raises(ValueError, match=rf"rms_norm: weight is on cpu but x is on {x.device}"):
        fusedaot.rms_norm(x, torch.ones(64))


def test_unsupported_device_type():
    x = on_foreign_device(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"rms_norm: tensors on 'xla' are not supported; use CUDA or CPU tensors"):
        fusedaot.rms_norm(x)


# --- GPU forward --------------------------------------------------------------------------

MS = (0, 1, 16, 128, 1024, 4096)
NS = (1, 3, 127, 1000, 1024, 3072, 4096, 4097, 8192, 65536, 131072)
# Every N for small M; large M only while M * N <= 2^24 (the float64 reference stays small).
GRID = [(m, n) for m in MS for n in NS if m * n <= 1 << 24]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("weight", [True, False], ids=["w", "nw"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", GRID, ids=[f"{m}x{n}" for m, n in GRID])
def test_forward_grid(m, n, dtype, weight):
    check_forward(*inputs((m, n), dtype, "cuda", weight))


# The CUDA C++ forms of wide 16-bit rows (with a weight and without) take calls of at least 1024 rows
# (aot/specs/rms_norm.py, RMS_NORM_CUDA_ROWS), past the grid's M * N bound: every row is checked
# for being written and a sample of rows (the first, the last and every 97th; rows are
# independent) against float64.
MANY_ROWS = [(1025, n) for n in (32776, 40000, 49152, 65536)]


def check_forward_rows(x, w, eps=EPS):
    poison(nbytes_of(x))
    y = fusedaot.rms_norm(x, w, eps)
    assert_written(y)
    rows = sample_rows(x.shape[0], x.device)
    assert_close(y[rows], ref64(oracle, x[rows], w, eps=eps), TOLERANCES[x.dtype])


@pytest.mark.requires_cuda
@pytest.mark.parametrize("weight", [True, False], ids=["w", "nw"])
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("m,n", MANY_ROWS, ids=[f"{m}x{n}" for m, n in MANY_ROWS])
def test_forward_many_wide_rows(m, n, dtype, weight):
    x, w = inputs((m, n), dtype, "cuda", weight)
    check_forward_rows(x, w)
    check_forward_rows(make_tensor((m, n + 8), dtype, "cuda")[:, 8:], w)   # strided, still aligned
    check_forward_rows(make_tensor((m, n), dtype, "cuda", scale=1e-2), w, eps=0.5)   # eps reaches it


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (127, 1000, 4096, 4097, 65536))
@pytest.mark.parametrize("pad,offset", [(3, 0), (64, 0), (64, 1), (8, 8)], ids=["odd", "wide", "misaligned", "offset8"])
def test_forward_strided_rows(n, dtype, pad, offset):
    big = make_tensor((37, n + pad), dtype, "cuda")
    x = big[:, offset:offset + n]
    assert x.stride() == (n + pad, 1)
    before = big.clone()
    check_forward(x, inputs((n,), dtype, "cuda")[1])
    assert torch.equal(big, before), "the input was written to"


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (3, 1000, 4097, 65536))
def test_forward_layouts(n, dtype):
    w = inputs((n,), dtype, "cuda")[1]
    check_forward(make_tensor((2, 33, n), dtype, "cuda"), w)                  # 3-D
    check_forward(make_tensor((5, 7, n), dtype, "cuda").transpose(0, 1), w)   # leading dims transposed
    check_forward(make_tensor((n, 9), dtype, "cuda").t(), w)                  # last dim strided: copied
    check_forward(make_tensor((4, 2 * n), dtype, "cuda")[:, ::2], w)          # last dim stride 2
    check_forward(make_tensor((1, n), dtype, "cuda").expand(6, n), w)         # row stride 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (3, 1000, 4097))
def test_strided_weight(n, dtype, device):
    # weight is a view of every other element: it must be read through its stride (or copied)
    x = make_tensor((6, n), dtype, device)
    w = make_tensor((2 * n,), dtype, device, scale=0.5, offset=1.0)[::2]
    check_forward(x, w)
    check_backward(x, w, make_tensor((6, n), dtype, device))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", (1e-6, 1e-4, 0.5))
@pytest.mark.parametrize("n", (64, 4096, 65536))
def test_forward_eps_reaches_the_kernel(n, eps, dtype):
    # mean(x^2) ~ 1e-4, so each eps changes the result far beyond the tolerance
    check_forward(make_tensor((8, n), dtype, "cuda", scale=1e-2), None, eps)


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    x, w = inputs((64, 3072), torch.bfloat16, "cuda")
    assert torch.equal(fusedaot.rms_norm(x, w, EPS), torch.ops.fusedaot.rms_norm(x, w, EPS))


@pytest.mark.slow
@pytest.mark.requires_cuda
def test_forward_beyond_2_31_elements():
    n = 4096
    m = (1 << 31) // n + 64
    if torch.cuda.mem_get_info()[0] < 2 * m * n * 2 + (1 << 30):
        pytest.skip("not enough free GPU memory for a > 2^31-element tensor")
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    y = fusedaot.rms_norm(x, None, EPS)
    for rows in (slice(0, 2), slice(m - 64, m)):  # the tail rows sit past 2^31 elements
        assert_close(y[rows], ref64(oracle, x[rows], None, eps=EPS), TOLERANCES[torch.bfloat16])
    del x, y
    torch.cuda.empty_cache()


# --- GPU backward -------------------------------------------------------------------------

BWD = [(m, n) for m in (0, 1, 37, 1024) for n in (1, 127, 1000, 4096, 4097, 65536) if m * n <= 1 << 24]
BWD += [(8, 131072)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("weight", [True, False], ids=["w", "nw"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", BWD, ids=[f"{m}x{n}" for m, n in BWD])
def test_backward(m, n, dtype, weight):
    x, w = inputs((m, n), dtype, "cuda", weight)
    dx, dw = check_backward(x, w, make_tensor((m, n), dtype, "cuda"))
    if m == 0 and weight:
        assert torch.equal(dw, torch.zeros_like(dw))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (1000, 4097, 65536))
def test_backward_strided(n, dtype):
    x = make_tensor((19, n + 8), dtype, "cuda")[:, 3:3 + n]
    dy = make_tensor((19, n + 40), dtype, "cuda")[:, :n]
    check_backward(x, inputs((n,), dtype, "cuda")[1], dy)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_of_a_sum(dtype):
    # y.sum().backward() hands the op an expanded dy (every stride 0)
    x, w = inputs((21, 3000), dtype, "cuda")
    x.requires_grad_(), w.requires_grad_()
    fusedaot.rms_norm(x, w, EPS).sum().backward()
    dy = torch.ones_like(x)
    _, (dx_ref, dw_ref) = ref64(oracle, x, w, dy=dy, eps=EPS)
    mag_dx, mag_dw = grad_mags(x.detach(), w.detach(), dy, EPS)
    assert_close(x.grad, dx_ref, TOLERANCES[dtype], mag_dx, "dx")
    assert_close(w.grad, dw_ref, TOLERANCES[dtype], mag_dw, "dweight")


@pytest.mark.requires_cuda
def test_backward_op_equals_autograd():
    x, w = inputs((64, 4096), torch.bfloat16, "cuda")
    dy = torch.randn_like(x)
    dx, dw = torch.ops.fusedaot.rms_norm_backward(dy, x, w, EPS)
    x.requires_grad_(), w.requires_grad_()
    fusedaot.rms_norm(x, w, EPS).backward(dy)
    assert torch.equal(dx, x.grad) and torch.equal(dw, w.grad)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("m,n", [(4096, 4096), (3000, 1000), (64, 65536)], ids=str)
def test_backward_deterministic(m, n, dtype):
    x, w = inputs((m, n), dtype, "cuda")
    dy = make_tensor((m, n), dtype, "cuda")
    first = torch.ops.fusedaot.rms_norm_backward(dy, x, w, EPS)
    for _ in range(2):
        again = torch.ops.fusedaot.rms_norm_backward(dy, x, w, EPS)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


# --- torch.library integration ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("weight", [True, False], ids=["w", "nw"])
def test_opcheck(device, dtype, weight):
    x, w = inputs((6, 257), dtype, device, weight)
    for grad in (False, True):
        xs = x.clone().requires_grad_(grad)
        ws = None if w is None else w.clone().requires_grad_(grad)
        torch.library.opcheck(torch.ops.fusedaot.rms_norm.default, (xs, ws, EPS))
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.fusedaot.rms_norm_backward.default, (dy, x, w, EPS))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def f(x, w):
            return fusedaot.rms_norm(x * 2.0, w, 1e-5) + 1.0

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):  # two sizes through one dynamic graph
            x, w = inputs((m, 1000), torch.bfloat16, device)
            x.requires_grad_(), w.requires_grad_()
            got = cf(x, w)
            want = f(x, w)
            assert_close(got, want, TOLERANCES[torch.bfloat16], what=f"{backend} forward")
            dy = torch.randn_like(got)
            g_got = torch.autograd.grad(got, (x, w), dy)
            g_want = torch.autograd.grad(want, (x, w), dy)
            for a, b, name in zip(g_got, g_want, ("dx", "dw")):
                assert_close(a, b, TOLERANCES[torch.bfloat16], what=f"{backend} {name}")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("m,n", [(1, 4096), (37, 4097), (4, 65536)], ids=str)
def test_cuda_graph_replay(m, n):
    fusedaot.load()
    dtype = torch.bfloat16
    x, w = inputs((m, n), dtype, "cuda")
    dy = make_tensor((m, n), dtype, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        fusedaot.rms_norm(x, w, EPS)
        torch.ops.fusedaot.rms_norm_backward(dy, x, w, EPS)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fusedaot.rms_norm(x, w, EPS)
        dx, dw = torch.ops.fusedaot.rms_norm_backward(dy, x, w, EPS)
    for _ in range(2):
        x.copy_(make_tensor((m, n), dtype, "cuda"))
        w.copy_(inputs((n,), dtype, "cuda")[1])
        dy.copy_(make_tensor((m, n), dtype, "cuda"))
        g.replay()
        torch.cuda.synchronize()
        assert_close(y, ref64(oracle, x, w, eps=EPS), TOLERANCES[dtype])
        _, (dx_ref, dw_ref) = ref64(oracle, x, w, dy=dy, eps=EPS)
        mag_dx, mag_dw = grad_mags(x, w, dy, EPS)
        assert_close(dx, dx_ref, TOLERANCES[dtype], mag_dx, "dx")
        assert_close(dw, dw_ref, TOLERANCES[dtype], mag_dw, "dweight")


# --- nn.RMSNorm and eps=None --------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("eps", [None, 1e-5])
def test_module_matches_torch(device, dtype, affine, eps):
    n = 1000
    ours = fusedaot.nn.RMSNorm(n, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)
    ref = torch.nn.RMSNorm(n, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)
    for attr in ("normalized_shape", "eps", "elementwise_affine"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert list(ours.state_dict()) == list(ref.state_dict())
    if affine:
        assert torch.equal(ours.weight, ref.weight)  # both start at ones
        with torch.no_grad():
            ref.weight.copy_(inputs((n,), dtype, device)[1])
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = make_tensor((3, 11, n), dtype, device).requires_grad_()
    y = ours(x)
    y_ref = ref(x)
    used_eps = torch.finfo(torch.float32).eps if eps is None else eps  # what F.rms_norm uses (fp32 opmath)
    assert_close(y, ref64(oracle, x, ref.weight if affine else None, eps=used_eps), TOLERANCES[dtype])
    # torch rounds twice in 16-bit dtypes (x*rstd, then *w): allow one extra rounding each way
    tol = dict(TOLERANCES[dtype], out=3 * TOLERANCES[dtype]["out"])
    assert_close(y, y_ref, tol, what="against torch.nn.RMSNorm")
    if affine:
        y.backward(torch.ones_like(y))
        assert ours.weight.grad is not None and ours.weight.grad.shape == (n,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_eps_none_follows_f_rms_norm(device, dtype):
    # small inputs (mean x^2 ~ 1e-5) make the default eps visible in the result
    x = make_tensor((4, 256), dtype, device, scale=3e-3)
    y = fusedaot.rms_norm(x, None, None)
    want = F.rms_norm(x, (256,), None, None)
    assert_close(y, want, dict(TOLERANCES[dtype], out=3 * TOLERANCES[dtype]["out"]), what="eps=None vs F.rms_norm")
