"""fusedaot.reduce_sum_squared and fusedaot.reduce_mean_abs: reference path, argument errors,
kernels over shapes, every dim (negative included), keepdim, dtypes and layouts (strided,
transposed, misaligned), the split reductions, empty dimensions, backward, opcheck,
torch.compile, CUDA graphs.

Every result is compared with a float64 evaluation on the same inputs:
    sum(x^2, dim)            d/dx = 2 x dy
    mean(|x|, dim)           d/dx = sign(x) dy / n
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
import fusedaot.reference as R
from fusedaot.ops import reduce as reduce_ops
from conftest import (DTYPES, assert_close, assert_written, compile_backends, make_tensor, nbytes_of,
                      on_foreign_device, poison, ref64)

DTYPES4 = DTYPES + (torch.float64,)
OPS = {"sum_squared": (fusedaot.reduce_sum_squared, lambda x, dim, keepdim: (x * x).sum(dim, keepdim=keepdim)),
       "mean_abs": (fusedaot.reduce_mean_abs, lambda x, dim, keepdim: x.abs().mean(dim, keepdim=keepdim))}
# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close).  Forward: every term is
# >= 0, so mag = |ref|.
# out:   the one rounding into the storage dtype: 2^-8 (bf16), 2^-11 (fp16), 2^-24 (fp32), 2^-53.
# comp:  accumulation in fp32 (fp64 for fp64): relative error <= (longest chain of dependent
#        additions) * u for nonnegative terms.  A running sum takes at most 1024 rows
#        (reduce_cols, ops/reduce._COLS_SERIAL: the dimension is split beyond) or 64 vectors of
#        <= 8 terms each (reduce_rows), then the lanes' or rows' tree (<= 7 levels) and the
#        chunks' sum (8 running sums, <= S / 8 + 3 with S <= ~1100): < 2048 additions, plus the
#        square's or |x|'s and the mean's roundings.  2048 * 2^-24 (fp32 accumulation),
#        2048 * 2^-53 (fp64).
# Backward: dx = 2 x dy or sign(x) dy / n: two roundings of one product: comp = 2 u of the
#        arithmetic, mag = |dx|.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=2048 * 2**-24, floor=0.0),
    torch.float16: dict(out=2**-11, comp=2048 * 2**-24, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=2048 * 2**-24, floor=0.0),
    torch.float64: dict(out=2**-53, comp=2048 * 2**-53, floor=0.0),
}
BWD_TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=2**-23, floor=0.0),
    torch.float16: dict(out=2**-11, comp=2**-23, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=2**-23, floor=0.0),
    torch.float64: dict(out=2**-53, comp=2**-52, floor=0.0),
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]


def inputs(op, shape, dim, dtype, device):
    """randn, scaled by 1 / sqrt(n) for sums of squares so that they stay ~1 (fp16 holds < 65504)."""
    n = max(shape[dim], 1)
    return make_tensor(shape, dtype, device, scale=n ** -0.5 if op == "sum_squared" else 1.0)


def check_forward(op, x, dim, keepdim=False):
    fn, oracle = OPS[op]
    if x.is_cuda and x.shape[dim]:
        poison(x.numel() // x.shape[dim] * x.element_size())  # the output's size
    y = fn(x, dim, keepdim)
    ref = ref64(oracle, x, dim, keepdim)
    assert y.shape == ref.shape and y.dtype == x.dtype and y.device == x.device and y.is_contiguous()
    if x.shape[dim] == 0:
        assert torch.equal(y.double().isnan(), ref.isnan()) and bool((y[~y.isnan()] == 0).all())
        return y
    assert_written(y)
    assert_close(y, ref, TOLERANCES[x.dtype], ref.abs())
    return y


def check_backward(op, x, dim, keepdim=False, dy=None):
    fn, oracle = OPS[op]
    x = x.detach().requires_grad_()
    y = fn(x, dim, keepdim)
    dy = make_tensor(y.shape, x.dtype, x.device) if dy is None else dy
    if x.is_cuda:
        poison(nbytes_of(x))
    y.backward(dy)
    _, (dx_ref, _, _) = ref64(oracle, x, dim, keepdim, dy=dy)
    assert x.grad.shape == x.shape and x.grad.dtype == x.dtype
    assert_written(x.grad)
    assert_close(x.grad, dx_ref, BWD_TOLERANCES[x.dtype], dx_ref.abs(), "dx")


# --- CPU: the reference path ------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1), ((2, 3, 4), -3)],
                         ids=str)
def test_cpu_matches_float64(shape, dim, dtype, op):
    x = inputs(op, shape, dim, dtype, "cpu")
    for keepdim in (False, True):
        check_forward(op, x, dim, keepdim)
        check_backward(op, x, dim, keepdim)


@pytest.mark.parametrize("op", OPS)
def test_empty(op):
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        check_forward(op, torch.randn(3, 0, device=device), -1)   # empty reduced dimension: 0 or NaN
        check_forward(op, torch.randn(0, 5, device=device), -1)   # no outputs
        check_forward(op, torch.randn(0, 5, device=device), 0)


# --- argument errors --------------------------------------------------------------------

def _bad_calls(dev):
    x = torch.randn(2, 64, device=dev)
    return [
        ((torch.ones(4, dtype=torch.int32, device=dev),), TypeError,
         r"{op}: x must be float16, bfloat16, float32 or float64, got torch\.int32"),
        ((x, 2), IndexError, r"{op}: dim 2 is out of range for x with 2 dimensions \(expected -2 to 1\)"),
        ((x, -3), IndexError, r"{op}: dim -3 is out of range for x with 2 dimensions \(expected -2 to 1\)"),
        ((torch.randn(5, device=dev), 1), IndexError,
         r"{op}: dim 1 is out of range for x with 1 dimension \(expected -1 to 0\)"),
        ((x, 0.5), TypeError, r"{op}: dim must be an int, got float"),
        ((x, True), TypeError, r"{op}: dim must be an int, got bool"),
        ((x, -1, 1), TypeError, r"{op}: keepdim must be True or False, got 1"),
        ((torch.tensor(1.0, device=dev),), ValueError, r"{op}: x must have at least one dimension, got a scalar"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", range(8))
def test_bad_arguments(device, op, case):
    args, exc, msg = _bad_calls(device)[case]
    with pytest.raises(exc, match=msg.format(op="reduce_" + op)):
        OPS[op][0](*args)


def test_unsupported_device_type():
    with pytest.raises(ValueError, match=r"reduce_sum_squared: tensors on 'xla' are not supported"):
        fusedaot.reduce_sum_squared(on_foreign_device(torch.randn(2, 8)))


# --- GPU forward --------------------------------------------------------------------------

CASES = [((1,), 0), ((7,), -1), ((4097,), 0), (((1 << 20) + 3,), 0), ((1, 1), -1), ((3, 4097), -1),
         ((3, 4097), 0), ((4097, 3), 0), ((4097, 3), 1), ((37, 1000), -1), ((37, 1000), -2), ((2, 3, 4097), 1),
         ((5, 6, 7), 0), ((5, 6, 7), 1), ((5, 6, 7), -1), ((1024, 4096), -1), ((1024, 4096), 0),
         ((16, 65536), -1), ((3, 100000, 2), 1), ((1, (1 << 22) + 5), -1), (((1 << 22) + 5, 1), 0)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape,dim", CASES, ids=str)
def test_forward(shape, dim, dtype, op):
    check_forward(op, inputs(op, shape, dim, dtype, "cuda"), dim, keepdim=len(shape) == 3)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
def test_forward_layouts(dtype, op):
    base = make_tensor((1 + 37 * 1003,), dtype, "cuda")
    before = base.clone()
    for dim in (-1, 0):
        check_forward(op, base[1:].view(37, 1003), dim)                           # misaligned pointer
        check_forward(op, base[:37 * 1003].view(37, 1003)[:, 5:1000], dim)       # strided rows, offset
        check_forward(op, make_tensor((1000, 37), dtype, "cuda").t(), dim)       # transposed
        check_forward(op, make_tensor((9, 40, 11), dtype, "cuda").transpose(0, 2), dim)  # copied
        check_forward(op, make_tensor((1, 1000), dtype, "cuda").expand(37, 1000), dim)   # row stride 0
    check_forward(op, make_tensor((6, 8, 4096), dtype, "cuda")[:, ::2], 1)        # strided reduced dim
    assert torch.equal(base, before), "the input was written to"


@pytest.mark.requires_cuda
def test_large_values_accumulate_in_fp32():
    # 65536 bf16 values of 256: the sum of squares (2^32) is far beyond bf16's exact integers
    x = torch.full((4, 65536), 256.0, dtype=torch.bfloat16, device="cuda")
    assert torch.equal(fusedaot.reduce_sum_squared(x), torch.full((4,), 2.0**32, dtype=torch.bfloat16, device="cuda"))
    assert torch.equal(fusedaot.reduce_sum_squared(x, 0), torch.full((65536,), 2.0**18, dtype=torch.bfloat16,
                                                                     device="cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("op", OPS)
def test_deterministic(op):
    for shape, dim in (((4096, 4096), 0), ((16, 1 << 20), -1)):
        x = make_tensor(shape, torch.float32, "cuda")
        first = OPS[op][0](x, dim)
        for _ in range(2):
            assert torch.equal(OPS[op][0](x, dim), first)


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    x = make_tensor((64, 3072), torch.bfloat16, "cuda")
    assert torch.equal(fusedaot.reduce_sum_squared(x, 0), torch.ops.fusedaot.reduce_sum_squared(x, 0, False))
    assert torch.equal(fusedaot.reduce_mean_abs(x, -1, True), torch.ops.fusedaot.reduce_mean_abs(x, -1, True))


@pytest.mark.slow
@pytest.mark.requires_cuda
def test_forward_beyond_2_31_elements():
    n = ((1 << 31) // 96 + 1) * 96  # whole rows of 96, the last ones past 2^31 elements
    if torch.cuda.mem_get_info()[0] < n * 2 + (2 << 30):
        pytest.skip("not enough free GPU memory for a > 2^31-element tensor")
    x = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    for op in OPS:
        got = OPS[op][0](x.view(-1, 96), -1)  # rows past 2^31 elements
        for part in (slice(0, 64), slice(-64, None)):
            ref = ref64(OPS[op][1], x.view(-1, 96)[part], -1, False)
            assert_close(got[part], ref, TOLERANCES[torch.bfloat16], ref.abs())
        total = OPS[op][0](x, 0)
        starts = range(0, n, 1 << 28)  # the float64 reference a slice at a time
        ref = (sum(x[i:i + (1 << 28)].double().square().sum() for i in starts) if op == "sum_squared"
               else sum(x[i:i + (1 << 28)].double().abs().sum() for i in starts) / n)
        assert_close(total, ref, TOLERANCES[torch.bfloat16], ref.abs())
    del x
    torch.cuda.empty_cache()


# reduce_cols' tiles and splits, whatever ops/reduce._cols_launch would pick for the card: every
# width of tile (L 16-byte lanes: vectors, or elements 16 L bytes wide in the one-element
# variant), split or not, over row counts around a trip of 8 rows and its tail (a thread's rows
# are rows / (128 / L) of them), for aligned and unaligned widths
COLS_TILES = [(lanes, s) for lanes in (1, 2, 4, 8, 16) for s in (1, 2, 7)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("lanes,s", COLS_TILES, ids=str)
def test_forward_every_column_tile(monkeypatch, lanes, s, dtype):
    monkeypatch.setattr(reduce_ops, "_cols_launch", lambda m, r, n, vec, sms: (lanes, s))
    for shape, dim in (((1000, 264), 0), ((8 * 128 // lanes + 3, 96), 0), ((16 * 128 // lanes, 40), 0),
                       ((3, 9, 1003), 1), ((2, 129, 7), -2)):
        for op in OPS:
            check_forward(op, inputs(op, shape, dim, dtype, "cuda"), dim)


def test_cols_launch_bounds_tiles_and_running_sums():
    """_cols_launch's (L, S): L a power of two no wider than the row's 16-byte pieces, at most 16
    (the one-element variants' 16 L / sizeof(T) lanes fit a 128-thread block); S within CUDA's
    grid, at least 1, never more chunks than rows, and a thread's running sum within
    _COLS_SERIAL rows; no split where a tile already leaves two blocks an SM and few rows a
    thread."""
    for sms in (1, 108, 132):
        for m in (1, 3, 64):
            for r in (2, 9, 1000, 4096, 65536, 1 << 22):
                for n in (2, 7, 64, 1000, 4096, 16384):
                    for vec in (2, 4, 8):
                        lanes, s = reduce_ops._cols_launch(m, r, n, vec, sms)
                        pieces = -(-n // vec)
                        assert lanes in (1, 2, 4, 8, 16) and lanes <= max(1, 1 << (pieces - 1).bit_length())
                        assert 1 <= s <= r
                        chunk = -(-r // min(s, 65535))
                        assert -(-chunk // (128 // lanes)) <= reduce_ops._COLS_SERIAL, (m, r, n, vec, sms)
    assert reduce_ops._cols_launch(1, 1024, 16384, 8, 132) == (8, 1)    # 256 blocks, 64 rows a thread
    assert reduce_ops._cols_launch(1, 4096, 4096, 8, 132) == (2, 1)     # 256 blocks, 64 rows a thread
    assert reduce_ops._cols_launch(1, 16384, 1024, 8, 132) == (16, 33)  # 8 tiles: R in 33 chunks


# --- GPU backward -------------------------------------------------------------------------

BWD = [((7,), 0), ((4097,), -1), ((37, 1000), -1), ((37, 1000), 0), ((5, 6, 7), 1), ((1024, 4096), 0),
       (((1 << 20) + 3,), 0), ((3, 100000, 2), 1), ((2, 300, 264), 1), ((3, 9, 1001), 1), ((4, 5, 31), 1)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES4, ids=str)
@pytest.mark.parametrize("shape,dim", BWD, ids=str)
def test_backward(shape, dim, dtype, op):
    check_backward(op, inputs(op, shape, dim, dtype, "cuda"), dim, keepdim=len(shape) == 3)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape,dim", [((8 * 65535 + 21, 256), 0), ((65537, 2, 256), 1)], ids=str)
def test_backward_past_the_grid_limits(shape, dim, op):
    """reduce_bwd_cols' grid holds at most 65535 row tiles of 8 rows and 65535 outer indices
    (aot/specs/reduce.py, GRID_LIMIT): its loops take the rest."""
    check_backward(op, inputs(op, shape, dim, torch.bfloat16, "cuda"), dim)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("op", OPS)
def test_backward_layouts(op):
    x = make_tensor((1 + 37 * 1003,), torch.float32, "cuda")[1:].view(37, 1003)  # misaligned
    check_backward(op, x, -1)
    check_backward(op, x[:, 3:1000], 0)
    check_backward(op, make_tensor((1000, 37), torch.float32, "cuda").t(), 1)
    check_backward(op, x, -1, dy=torch.ones(()).cuda().expand(37))                # from y.sum().backward()


# --- torch.library integration ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_opcheck(device, op):
    name = "reduce_" + op
    for dtype in (torch.bfloat16, torch.float64):
        for shape, dim, keepdim in (((6, 257), -1, False), ((6, 257), 0, True), ((3, 4, 5), 1, False)):
            x = make_tensor(shape, dtype, device)
            for grad in (False, True):
                torch.library.opcheck(getattr(torch.ops.fusedaot, name).default,
                                      (x.clone().requires_grad_(grad), dim, keepdim))
            dy = torch.randn_like(getattr(R, name)(x, dim, keepdim))
            torch.library.opcheck(getattr(torch.ops.fusedaot, name + "_backward").default, (dy, x, dim, keepdim))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_compile_fullgraph(device, op):
    fn, oracle = OPS[op]
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def f(x):
            return fn(x * 0.5, 0) * 3.0 + fn(x, -1, True).sum()

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):
            x = make_tensor((m, 1000), torch.float32, device).requires_grad_()
            got, want = cf(x), f(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            dy = torch.randn_like(got)
            torch.testing.assert_close(torch.autograd.grad(got, x, dy)[0], torch.autograd.grad(want, x, dy)[0],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("op", OPS)
def test_cuda_graph_replay(op):
    fusedaot.load()
    fn, oracle = OPS[op]
    dtype = torch.bfloat16
    xs = [make_tensor(s, dtype, "cuda") for s in ((37, 4097), (1, 1 << 20), (4096, 1024))]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        for x in xs:
            fn(x, -1), fn(x, 0)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = [(fn(x, -1), fn(x, 0)) for x in xs]
        dx = getattr(torch.ops.fusedaot, f"reduce_{op}_backward")(outs[0][1], xs[0], 0, False)
    for _ in range(2):
        for x in xs:
            x.copy_(make_tensor(x.shape, dtype, "cuda"))
        g.replay()
        torch.cuda.synchronize()
        for x, (rows, cols) in zip(xs, outs):
            for got, dim in ((rows, -1), (cols, 0)):
                ref = ref64(oracle, x, dim, False)
                assert_close(got, ref, TOLERANCES[dtype], ref.abs())
        _, (dx_ref, _, _) = ref64(oracle, xs[0], 0, False, dy=outs[0][1])
        assert_close(dx, dx_ref, BWD_TOLERANCES[dtype], dx_ref.abs(), "dx")
