"""fusedaot.bias_gelu: reference path, argument errors, kernels over shapes, dtypes and
layouts (misaligned pointers included), backward, opcheck, torch.compile, CUDA graphs.

Every result is compared with a float64 evaluation on the same inputs:
    y = gelu(x + bias),  approximate "none" (erf) or "tanh"
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusedaot
import fusedaot.reference
from conftest import (DTYPES, assert_close, assert_written, compile_backends, make_tensor, nbytes_of,
                      on_foreign_device, poison, ref64)

# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close)
# out:   computed in fp32, rounded once into the storage dtype: 2^-8 (bf16), 2^-11
#        (fp16), 2^-24 (fp32).
# comp:  fp32 arithmetic before that rounding, relative to `mag`.  Forward: mag = |u|
#        (u = x + bias): for u < 0, 1 + erf(u/sqrt2) cancels, leaving an absolute error
#        of a few fp32 ulps of 1 (erff, tanhf: <= 2 ulp) times |u|/2.  Backward:
#        mag = |dy| (1 + |u|) bounds the terms of dy * (Phi(u) + u phi(u)) (and of the
#        tanh form's derivative); dbias adds those over the rows, in fp32 partial sums
#        per row group then over the groups: its mag is the sum of the terms' absolute
#        values and 1e-5 covers ~170 dependent additions at the worst case (the
#        statistical error of 4096 rows, sqrt(4096) * 2^-24 = 4e-7, is far below).
#        1e-5 is still 20x below |gelu_erf - gelu_tanh| / |u| at u = -2.7, so a kernel
#        that applies the wrong formula fails.
# floor: fp16 results below 2^-14 are subnormal; rounding there errs by at most 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=1e-5, floor=0.0),
    torch.float16: dict(out=2**-11, comp=1e-5, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=1e-5, floor=0.0),
}
APPROX = ("none", "tanh")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]


def oracle(x, bias, approximate):
    return F.gelu(x + bias, approximate=approximate)


def mags(x, bias, dy=None):
    """Magnitude scales: forward |u|; with dy, dx's |dy|(1+|u|) and dbias's row sums of it."""
    u = (x.double() + bias.double()).abs()
    if dy is None:
        return u
    mag_dx = dy.double().abs() * (1 + u)
    return mag_dx, mag_dx.reshape(-1, x.shape[-1]).sum(0)


def inputs(shape, dtype, device):
    return make_tensor(shape, dtype, device, scale=2.0), make_tensor(shape[-1:], dtype, device)


def check_forward(x, bias, approximate, poisoned=True):
    if poisoned and x.is_cuda:
        poison(nbytes_of(x))
    y = fusedaot.bias_gelu(x, bias, approximate)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous()
    assert_written(y)
    assert_close(y, ref64(oracle, x, bias, approximate=approximate), TOLERANCES[x.dtype], mags(x, bias))
    return y


def check_backward(x, bias, dy, approximate):
    x = x.detach().requires_grad_()
    bias = bias.detach().requires_grad_()
    y = fusedaot.bias_gelu(x, bias, approximate)
    if x.is_cuda:
        poison(nbytes_of(x))
    y.backward(dy)
    _, (dx_ref, db_ref) = ref64(oracle, x, bias, dy=dy, approximate=approximate)
    mag_dx, mag_db = mags(x.detach(), bias.detach(), dy)
    for got, ref, mag, name, like in ((x.grad, dx_ref, mag_dx, "dx", x), (bias.grad, db_ref, mag_db, "dbias", bias)):
        assert got.shape == like.shape and got.dtype == like.dtype, name
        assert_written(got)
        assert_close(got, ref, TOLERANCES[x.dtype], mag, name)
    return x.grad, bias.grad


# --- CPU: the reference path ------------------------------------------------------------

@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (3, 7), (5, 1000), (2, 3, 4097)], ids=str)
def test_cpu_matches_float64(shape, dtype, approximate):
    x, b = inputs(shape, dtype, "cpu")
    check_forward(x, b, approximate)
    assert_close(fusedaot.reference.bias_gelu(x, b, approximate), ref64(oracle, x, b, approximate=approximate),
                 TOLERANCES[dtype], mags(x, b))
    check_backward(x, b, make_tensor(shape, dtype, "cpu"), approximate)


@pytest.mark.parametrize("approximate", APPROX)
def test_reference_is_float64_exact(approximate):
    x, b = inputs((5, 300), torch.float64, "cpu")
    torch.testing.assert_close(fusedaot.reference.bias_gelu(x, b, approximate), oracle(x, b, approximate),
                               rtol=1e-14, atol=1e-300)


# --- argument errors --------------------------------------------------------------------

def _bad_calls(dev):
    bf = torch.bfloat16
    x = torch.randn(2, 4096, device=dev, dtype=bf)
    return [
        ((torch.ones(2, 8, dtype=torch.int32, device=dev), torch.ones(8, dtype=torch.int32, device=dev)), TypeError,
         r"bias_gelu: x must be float16, bfloat16 or float32, got torch\.int32"),
        ((x, torch.ones(4096, dtype=torch.float32, device=dev)), TypeError,
         r"bias_gelu: bias dtype torch\.float32 does not match x dtype torch\.bfloat16"),
        ((x, torch.ones(4095, dtype=bf, device=dev)), ValueError,
         r"bias_gelu: bias has 4095 elements but x's last dimension is 4096"),
        ((x, torch.ones(4096, dtype=bf, device=dev), "foo"), ValueError,
         r"bias_gelu: approximate must be 'none' or 'tanh', got 'foo'"),
        ((x, torch.ones(4096, dtype=bf, device=dev), "erf"), ValueError,
         r"bias_gelu: approximate must be 'none' or 'tanh', got 'erf'"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(5))
def test_bad_arguments(device, case):
    args, exc, msg = _bad_calls(device)[case]
    with pytest.raises(exc, match=msg):
        fusedaot.bias_gelu(*args)


@pytest.mark.requires_cuda
def test_bias_on_other_device():
    x = torch.randn(2, 64, device="cuda")
    with pytest.raises(ValueError, match=rf"bias_gelu: bias is on cpu but x is on {x.device}"):
        fusedaot.bias_gelu(x, torch.ones(64))


def test_unsupported_device_type():
    x = on_foreign_device(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"bias_gelu: tensors on 'xla' are not supported; use CUDA or CPU tensors"):
        fusedaot.bias_gelu(x, torch.randn(8))


# --- GPU forward --------------------------------------------------------------------------

MS = (0, 1, 3, 16, 1024, 4096)
NS = (1, 3, 7, 8, 127, 1000, 1024, 3072, 4097, 8192, 65536, 131072)
GRID = [(m, n) for m in MS for n in NS if m * n <= 1 << 24]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", GRID, ids=[f"{m}x{n}" for m, n in GRID])
def test_forward_grid(m, n, dtype, approximate):
    check_forward(*inputs((m, n), dtype, "cuda"), approximate)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", [(1, 8), (7, 1000), (33, 4096), (5, 4097)], ids=str)
def test_forward_misaligned(m, n, dtype, approximate):
    # pointers one element past a 16-byte boundary: the vectorised variants must not run
    xbuf = make_tensor((1 + m * n,), dtype, "cuda", scale=2.0)
    bbuf = make_tensor((1 + n,), dtype, "cuda")
    x, b = xbuf[1:].view(m, n), bbuf[1:]
    assert x.data_ptr() % 16 and b.data_ptr() % 16
    check_forward(x, b, approximate)
    check_forward(x, inputs((n,), dtype, "cuda")[1], approximate)   # x misaligned only
    check_forward(inputs((m, n), dtype, "cuda")[0], b, approximate)  # bias misaligned only


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (3, 8, 1000, 4096, 4097))
def test_forward_layouts(n, dtype):
    b = inputs((n,), dtype, "cuda")[1]
    before = make_tensor((37, n + 5), dtype, "cuda", scale=2.0)
    big = before.clone()
    check_forward(big[:, :n], b, "none")                                       # odd row stride
    check_forward(make_tensor((37, n + 64), dtype, "cuda")[:, 8:8 + n], b, "tanh")  # offset rows
    assert torch.equal(big, before), "the input was written to"
    check_forward(make_tensor((2, 9, n), dtype, "cuda", scale=2.0), b, "none")           # 3-D
    check_forward(make_tensor((5, 7, n), dtype, "cuda").transpose(0, 1), b, "tanh")       # leading dims transposed
    check_forward(make_tensor((n, 6), dtype, "cuda").t(), b, "none")                     # last dim strided: copied
    check_forward(make_tensor((1, n), dtype, "cuda", scale=2.0).expand(6, n), b, "none")  # row stride 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (3, 1000, 4097))
def test_strided_bias(n, dtype, device):
    # bias is a view of every other element: it must be read through its stride (or copied)
    x = make_tensor((6, n), dtype, device, scale=2.0)
    b = make_tensor((2 * n,), dtype, device)[::2]
    for approximate in APPROX:
        check_forward(x, b, approximate)
        check_backward(x, b, make_tensor((6, n), dtype, device), approximate)


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    x, b = inputs((64, 3072), torch.bfloat16, "cuda")
    for approximate in APPROX:
        assert torch.equal(fusedaot.bias_gelu(x, b, approximate), torch.ops.fusedaot.bias_gelu(x, b, approximate))


@pytest.mark.slow
@pytest.mark.requires_cuda
def test_forward_beyond_2_31_elements():
    n = 8192
    m = (1 << 31) // n + 16
    if torch.cuda.mem_get_info()[0] < 2 * m * n * 2 + (1 << 30):
        pytest.skip("not enough free GPU memory for a > 2^31-element tensor")
    x, b = inputs((m, n), torch.bfloat16, "cuda")
    y = fusedaot.bias_gelu(x, b, "none")
    for rows in (slice(0, 2), slice(m - 16, m)):  # the tail rows sit past 2^31 elements
        assert_close(y[rows], ref64(oracle, x[rows], b, approximate="none"), TOLERANCES[torch.bfloat16],
                     mags(x[rows], b))
    del x, y
    torch.cuda.empty_cache()


# --- GPU backward -------------------------------------------------------------------------

BWD = [(m, n) for m in (0, 1, 37, 129, 1024, 4096) for n in (1, 7, 8, 1000, 4096, 4097, 65536) if m * n <= 1 << 24]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", BWD, ids=[f"{m}x{n}" for m, n in BWD])
def test_backward(m, n, dtype, approximate):
    x, b = inputs((m, n), dtype, "cuda")
    _, db = check_backward(x, b, make_tensor((m, n), dtype, "cuda"), approximate)
    if m == 0:
        assert torch.equal(db, torch.zeros_like(db))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (7, 1000, 4096))
def test_backward_strided_and_misaligned(n, dtype):
    x = make_tensor((19, n + 8), dtype, "cuda", scale=2.0)[:, 3:3 + n]
    dy = make_tensor((1 + 19 * n,), dtype, "cuda")[1:].view(19, n)
    b = make_tensor((n + 1,), dtype, "cuda")[1:]
    for approximate in APPROX:
        check_backward(x, b, dy, approximate)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_of_a_sum(dtype):
    # y.sum().backward() hands the op an expanded dy (every stride 0)
    x, b = inputs((21, 3000), dtype, "cuda")
    x.requires_grad_(), b.requires_grad_()
    fusedaot.bias_gelu(x, b, "tanh").sum().backward()
    dy = torch.ones_like(x)
    _, (dx_ref, db_ref) = ref64(oracle, x, b, dy=dy, approximate="tanh")
    mag_dx, mag_db = mags(x.detach(), b.detach(), dy)
    assert_close(x.grad, dx_ref, TOLERANCES[dtype], mag_dx, "dx")
    assert_close(b.grad, db_ref, TOLERANCES[dtype], mag_db, "dbias")


@pytest.mark.requires_cuda
def test_backward_op_equals_autograd():
    x, b = inputs((64, 4096), torch.bfloat16, "cuda")
    dy = torch.randn_like(x)
    dx, db = torch.ops.fusedaot.bias_gelu_backward(dy, x, b, "tanh")
    x.requires_grad_(), b.requires_grad_()
    fusedaot.bias_gelu(x, b, "tanh").backward(dy)
    assert torch.equal(dx, x.grad) and torch.equal(db, b.grad)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("m,n", [(4096, 4096), (3000, 1000), (64, 65536)], ids=str)
def test_backward_deterministic(m, n, dtype):
    x, b = inputs((m, n), dtype, "cuda")
    dy = make_tensor((m, n), dtype, "cuda")
    first = torch.ops.fusedaot.bias_gelu_backward(dy, x, b, "none")
    for _ in range(2):
        again = torch.ops.fusedaot.bias_gelu_backward(dy, x, b, "none")
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


# --- torch.library integration ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("approximate", APPROX)
def test_opcheck(device, dtype, approximate):
    x, b = inputs((6, 257), dtype, device)
    for grad in (False, True):
        torch.library.opcheck(torch.ops.fusedaot.bias_gelu.default,
                              (x.clone().requires_grad_(grad), b.clone().requires_grad_(grad), approximate))
    torch.library.opcheck(torch.ops.fusedaot.bias_gelu_backward.default, (torch.randn_like(x), x, b, approximate))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def f(x, b):
            return fusedaot.bias_gelu(x * 0.5, b, "tanh") * 3.0

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):
            x, b = inputs((m, 1000), torch.bfloat16, device)
            x.requires_grad_(), b.requires_grad_()
            got, want = cf(x, b), f(x, b)
            assert_close(got, want, TOLERANCES[torch.bfloat16], mags(x, b) * 3, f"{backend} forward")
            dy = torch.randn_like(got)
            for a, e, name in zip(torch.autograd.grad(got, (x, b), dy), torch.autograd.grad(want, (x, b), dy),
                                  ("dx", "dbias")):
                assert_close(a, e, TOLERANCES[torch.bfloat16], what=f"{backend} {name}")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("m,n", [(1, 4096), (37, 4097), (1024, 1000)], ids=str)
def test_cuda_graph_replay(m, n):
    fusedaot.load()
    dtype = torch.bfloat16
    x, b = inputs((m, n), dtype, "cuda")
    dy = make_tensor((m, n), dtype, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        fusedaot.bias_gelu(x, b, "none")
        torch.ops.fusedaot.bias_gelu_backward(dy, x, b, "none")
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fusedaot.bias_gelu(x, b, "none")
        dx, db = torch.ops.fusedaot.bias_gelu_backward(dy, x, b, "none")
    for _ in range(2):
        x.copy_(make_tensor((m, n), dtype, "cuda", scale=2.0))
        b.copy_(make_tensor((n,), dtype, "cuda"))
        dy.copy_(make_tensor((m, n), dtype, "cuda"))
        g.replay()
        torch.cuda.synchronize()
        assert_close(y, ref64(oracle, x, b, approximate="none"), TOLERANCES[dtype], mags(x, b))
        _, (dx_ref, db_ref) = ref64(oracle, x, b, dy=dy, approximate="none")
        mag_dx, mag_db = mags(x, b, dy)
        assert_close(dx, dx_ref, TOLERANCES[dtype], mag_dx, "dx")
        assert_close(db, db_ref, TOLERANCES[dtype], mag_db, "dbias")
