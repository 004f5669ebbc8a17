"""fusedaot.mul_tanh: reference path, argument errors, kernels over shapes, dtypes, broadcast
forms and layouts (misaligned pointers included), backward, opcheck, torch.compile, CUDA graphs.

Every result is compared with a float64 evaluation on the same inputs:
    y = tanh(a * b),  b of a's shape or (N,) broadcast over a's rows
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
import fusedaot.reference
from binary_cases import (BAD_CALLS, FORWARD_SHAPES, LAYOUT_WIDTHS, MISALIGNED_SHAPES, check_bad_call,
                          check_device_errors, check_layouts, check_misaligned)
from conftest import DTYPES, assert_close, assert_written, compile_backends, make_tensor, nbytes_of, poison, ref64

DTYPES4 = DTYPES + (torch.float64,)
# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close)
# out:   one rounding into the storage dtype: 2^-8 (bf16), 2^-11 (fp16), 2^-24 (fp32), 2^-53 (fp64).
# comp:  forward, mag = |y|: the product a*b rounds by 2^-24 relative (fp32 arithmetic), which
#        tanh passes on at most unchanged (|x tanh'(x) / tanh(x)| <= 1), and tanhf errs by at most
#        2 ulp (CUDA's documented bound): 2.5 ulp < 2^-22.  fp64: the same in units of 2^-53.
#        Backward, mag = |dy| (|a| + |b|) (each gradient is dy (1 - t^2) times the other operand):
#        1 - t^2 cancels near |t| = 1, leaving 2 t^2 * 2.5 ulp of absolute error, then two
#        products round: < 8 ulp = 2^-21 of the magnitude.
# floor: fp16 results below 2^-14 are subnormal; rounding there errs by at most 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=2**-22, floor=0.0),
    torch.float16: dict(out=2**-11, comp=2**-22, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=2**-22, floor=0.0),
    torch.float64: dict(out=2**-53, comp=2**-51, floor=0.0),
}
BWD_TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=2**-21, floor=0.0),
    torch.float16: dict(out=2**-11, comp=2**-21, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=2**-21, floor=0.0),
    torch.float64: dict(out=2**-53, comp=2**-50, floor=0.0),
}
# db of a broadcast b: dy (1 - t^2) a summed over the rows, in fp32 (fp64) partial sums per row
# group, then over the groups, then rounded: mag = sum over the rows of |dy| (|a| + |b|).  comp
# bounds a chain of ~170 dependent additions (2^-24 each; 2^-53 in fp64), more than the kernel's
# rows per group plus the groups' sum for every shape here, and the terms' own 2^-21.
DB_TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=1e-5, floor=0.0),
    torch.float16: dict(out=2**-11, comp=1e-5, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=1e-5, floor=0.0),
    torch.float64: dict(out=2**-53, comp=2e-14, floor=0.0),
}
OP = "mul_tanh"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]


def oracle(a, b):
    return torch.tanh(a * b)


def bwd_mag(a, b, dy):
    return dy.double().abs() * (a.double().abs() + b.double().abs())


def inputs(shape, dtype, device, broadcast=False):
    a = make_tensor(shape, dtype, device)
    return a, make_tensor(shape[-1:] if broadcast else shape, dtype, device)


def check_forward(a, b, poisoned=True):
    if poisoned and a.is_cuda:
        poison(nbytes_of(a))
    y = fusedaot.mul_tanh(a, b)
    assert y.shape == a.shape and y.dtype == a.dtype and y.device == a.device
    assert y.is_contiguous()
    assert_written(y)
    ref = ref64(oracle, a, b)
    assert_close(y, ref, TOLERANCES[a.dtype], ref.abs())
    return y


def check_backward(a, b, dy):
    a = a.detach().requires_grad_()
    b = b.detach().requires_grad_()
    y = fusedaot.mul_tanh(a, b)
    if a.is_cuda:
        poison(nbytes_of(a))
    y.backward(dy)
    _, (da_ref, db_ref) = ref64(oracle, a, b, dy=dy)
    assert a.grad.shape == a.shape and a.grad.dtype == a.dtype and b.grad.shape == b.shape
    assert_written(a.grad, b.grad)
    mag = bwd_mag(a.detach(), b.detach(), dy)
    assert_close(a.grad, da_ref, BWD_TOLERANCES[a.dtype], mag, "da")
    if b.shape == a.shape:
        assert_close(b.grad, db_ref, BWD_TOLERANCES[a.dtype], mag, "db")
    else:
        assert_close(b.grad, db_ref, DB_TOLERANCES[a.dtype], mag.reshape(-1, a.shape[-1]).sum(0), "db")
    return a.grad, b.grad


# --- CPU: the reference path ------------------------------------------------------------

@pytest.mark.parametrize("broadcast", (False, True), ids=("full", "bcast"))
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (7,), (3, 7), (2, 3, 4097)], ids=str)
def test_cpu_matches_float64(shape, dtype, broadcast):
    a, b = inputs(shape, dtype, "cpu", broadcast)
    check_forward(a, b)
    check_backward(a, b, make_tensor(shape, dtype, "cpu"))


def test_reference_is_float64_exact():
    a, b = inputs((5, 300), torch.float64, "cpu")
    torch.testing.assert_close(fusedaot.reference.mul_tanh(a, b), oracle(a, b), rtol=1e-15, atol=0)


# --- argument errors --------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(BAD_CALLS))
def test_bad_arguments(device, case):
    check_bad_call(OP, device, case)


def test_device_errors():
    check_device_errors(OP)


# --- GPU forward --------------------------------------------------------------------------

@pytest.mark.requires_cuda
@pytest.mark.parametrize("broadcast", (False, True), ids=("full", "bcast"))
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape", FORWARD_SHAPES, ids=str)
def test_forward(shape, dtype, broadcast):
    check_forward(*inputs(shape, dtype, "cuda", broadcast))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape", MISALIGNED_SHAPES, ids=str)
def test_forward_misaligned(shape, dtype):
    check_misaligned(check_forward, inputs, shape, dtype)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("n", LAYOUT_WIDTHS)
def test_forward_layouts(n, dtype):
    check_layouts(check_forward, n, dtype)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
def test_saturation_and_nan(dtype):
    a = torch.tensor([float("nan"), 30.0, -30.0, float("inf"), -float("inf"), 0.0, 1e-30], device="cuda").to(dtype)
    b = torch.ones_like(a)
    y = fusedaot.mul_tanh(a, b)
    want = torch.tanh(a.double() * b.double())
    assert torch.equal(y.isnan(), want.isnan())
    assert torch.equal(y[1:].double(), want[1:].to(dtype).double())


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    for broadcast in (False, True):
        a, b = inputs((64, 3072), torch.bfloat16, "cuda", broadcast)
        assert torch.equal(fusedaot.mul_tanh(a, b), torch.ops.fusedaot.mul_tanh(a, b))


@pytest.mark.slow
@pytest.mark.requires_cuda
def test_forward_beyond_2_31_elements():
    n = (1 << 31) + 96
    if torch.cuda.mem_get_info()[0] < 3 * n * 2 + (1 << 30):
        pytest.skip("not enough free GPU memory for three > 2^31-element tensors")
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    y = fusedaot.mul_tanh(a, b)
    for part in (slice(0, 4096), slice(n - 4096, n)):  # the tail sits past 2^31 elements
        ref = ref64(oracle, a[part], b[part])
        assert_close(y[part], ref, TOLERANCES[torch.bfloat16], ref.abs())
    del a, b, y
    torch.cuda.empty_cache()


# --- GPU backward -------------------------------------------------------------------------

BWD = [(0, 8), (1, 1), (7,), (37, 7), (4097,), (300, 1000), (300, 1001), (1024, 4096), (16, 65536), ((1 << 20) + 3,)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("broadcast", (False, True), ids=("full", "bcast"))
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape", BWD, ids=str)
def test_backward(shape, dtype, broadcast):
    a, b = inputs(shape, dtype, "cuda", broadcast)
    _, db = check_backward(a, b, make_tensor(shape, dtype, "cuda"))
    if a.numel() == 0:
        assert torch.equal(db, torch.zeros_like(db))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("n", (7, 1000, 4096))
def test_backward_strided_and_misaligned(n, dtype):
    a = make_tensor((19, n + 8), dtype, "cuda")[:, 3:3 + n]
    dy = make_tensor((1 + 19 * n,), dtype, "cuda")[1:].view(19, n)
    check_backward(a, make_tensor((n + 1,), dtype, "cuda")[1:], dy)
    check_backward(a, make_tensor((19, n + 1), dtype, "cuda")[:, 1:], dy)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
def test_backward_of_a_sum(dtype):
    # y.sum().backward() hands the op an expanded dy (every stride 0)
    for broadcast in (False, True):
        a, b = inputs((21, 3000), dtype, "cuda", broadcast)
        check_backward(a, b, torch.ones(()).to(dtype).cuda().expand(21, 3000))


@pytest.mark.requires_cuda
def test_backward_op_equals_autograd_and_is_deterministic():
    a, b = inputs((4096, 4096), torch.bfloat16, "cuda", True)
    dy = torch.randn_like(a)
    first = torch.ops.fusedaot.mul_tanh_backward(dy, a, b)
    for _ in range(2):
        again = torch.ops.fusedaot.mul_tanh_backward(dy, a, b)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    a.requires_grad_(), b.requires_grad_()
    fusedaot.mul_tanh(a, b).backward(dy)
    assert torch.equal(a.grad, first[0]) and torch.equal(b.grad, first[1])


# --- torch.library integration ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("broadcast", (False, True), ids=("full", "bcast"))
def test_opcheck(device, dtype, broadcast):
    a, b = inputs((6, 257), dtype, device, broadcast)
    for grad in (False, True):
        torch.library.opcheck(torch.ops.fusedaot.mul_tanh.default,
                              (a.clone().requires_grad_(grad), b.clone().requires_grad_(grad)))
    torch.library.opcheck(torch.ops.fusedaot.mul_tanh_backward.default, (torch.randn_like(a), a, b))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    for backend in compile_backends(device):
        for broadcast in (False, True):
            torch._dynamo.reset()

            def f(a, b):
                return fusedaot.mul_tanh(a * 0.5, b) * 3.0

            cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
            for m in (5, 17):
                a, b = inputs((m, 1000), torch.float32, device, broadcast)
                a.requires_grad_(), b.requires_grad_()
                got, want = cf(a, b), f(a, b)
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
                dy = torch.randn_like(got)
                for g, e in zip(torch.autograd.grad(got, (a, b), dy), torch.autograd.grad(want, (a, b), dy)):
                    torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("shape", [(1, 4096), (37, 4097), (1024, 1000)], ids=str)
def test_cuda_graph_replay(shape):
    fusedaot.load()
    dtype = torch.bfloat16
    a, b = inputs(shape, dtype, "cuda")
    v = make_tensor(shape[-1:], dtype, "cuda")
    dy = make_tensor(shape, dtype, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        fusedaot.mul_tanh(a, b)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fusedaot.mul_tanh(a, b)
        yv = fusedaot.mul_tanh(a, v)
        da, db = torch.ops.fusedaot.mul_tanh_backward(dy, a, v)
    for _ in range(2):
        for t in (a, b, v, dy):
            t.copy_(make_tensor(t.shape, dtype, "cuda"))
        g.replay()
        torch.cuda.synchronize()
        for got, want in ((y, ref64(oracle, a, b)), (yv, ref64(oracle, a, v))):
            assert_close(got, want, TOLERANCES[dtype], want.abs())
        _, (da_ref, db_ref) = ref64(oracle, a, v, dy=dy)
        mag = bwd_mag(a, v, dy)
        assert_close(da, da_ref, BWD_TOLERANCES[dtype], mag, "da")
        assert_close(db, db_ref, DB_TOLERANCES[dtype], mag.reshape(-1, shape[-1]).sum(0), "db")
