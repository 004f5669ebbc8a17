"""fusedaot.swiglu / geglu / silu_and_mul / gelu_and_mul: reference path, argument errors,
kernels over shapes, dtypes and layouts (strided rows, misaligned pointers, odd sizes),
backward.  opcheck, torch.compile, CUDA graphs and nn.SwiGLU / nn.GeGLU:
tests/test_swiglu_integration.py.

Every result is compared with a float64 evaluation on the same inputs:
    out = act(gate) * up,  act = silu | gelu (erf) | gelu (tanh)
    packed x (..., 2F) = [gate | up]
"""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

import fusedaot
import fusedaot.nn
import fusedaot.reference
from conftest import DTYPES, assert_close, assert_written, make_tensor, nbytes_of, on_foreign_device, poison, ref64

# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close)
# out:   computed in fp32, rounded once into the storage dtype: 2^-8 (bf16), 2^-11 (fp16),
#        2^-24 (fp32).
# comp:  the fp32 arithmetic before that rounding, relative to `mag`.  Forward: mag =
#        |gate| |up|, which bounds |act(gate) up| for silu and gelu.  The exp argument is
#        rounded (a relative error of ~|g| 2^-24 in exp), ex2.approx adds 2 ulps, the
#        division 1 ulp, the kernel's erfc fit < 2.5e-7 absolute on Phi (times |g|): for
#        |g| <= 16 all of it is < 2e-6 of mag.  Backward: dgate = dy up act'(g) with mag
#        |dy| |up| (1 + |g|), which bounds the terms of act' (s + g s (1-s), Phi + g phi, and
#        the tanh form's); act' crosses zero (g ~ -1.28 for silu), so its error is bounded
#        by the terms, not by the result; dup = dy act(g) with mag |dy| |g|.  1e-5 leaves a
#        5x margin over those estimates and is still 18x below |gelu_erf - gelu_tanh| / |g| at
#        |g| ~ 2.6 (its maximum), so a kernel that applies the wrong activation fails (in fp32,
#        where `out` does not hide it).
# floor: fp16 results below 2^-14 are subnormal; rounding there errs by at most 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=1e-5, floor=0.0),
    torch.float16: dict(out=2**-11, comp=1e-5, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=1e-5, floor=0.0),
}
ACTS = (None, "none", "tanh")   # silu; gelu with approximate "none" | "tanh"
ACT_IDS = ("silu", "gelu", "gelu_tanh")
FORMS = (False, True)           # separate (gate, up); packed x = [gate | up]
FORM_IDS = ("pair", "packed")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]
OPS = sys.modules["fusedaot.ops.swiglu"]   # the module (fusedaot.ops.swiglu is the function)


def call(packed, approx, *args):
    if packed:
        return fusedaot.silu_and_mul(*args) if approx is None else fusedaot.gelu_and_mul(*args, approximate=approx)
    return fusedaot.swiglu(*args) if approx is None else fusedaot.geglu(*args, approximate=approx)


def halves(packed, args):
    if not packed:
        return args
    x = args[0]
    f = x.shape[-1] // 2
    return x[..., :f], x[..., f:]


def oracle(packed, approx, *args):
    gate, up = halves(packed, args)
    return (F.silu(gate) if approx is None else F.gelu(gate, approximate=approx)) * up


def mags(packed, args, dy=None):
    """Magnitude scales: forward |g||u|; with dy, the gradients' (see TOLERANCES)."""
    g, u = (t.detach().double().abs() for t in halves(packed, args))
    if dy is None:
        return g * u
    dy = dy.double().abs()
    dgate, dup = dy * u * (1 + g), dy * g
    return (torch.cat([dgate, dup], -1),) if packed else (dgate, dup)


def inputs(packed, shape, dtype, device):
    """(x,) of shape (..., 2F) or (gate, up) of shape (..., F); gate is drawn wider than up
    so that both tails of the activations are exercised."""
    if packed:
        x = make_tensor(shape[:-1] + (2 * shape[-1],), dtype, device)
        x[..., :shape[-1]] *= 2
        return (x,)
    return make_tensor(shape, dtype, device, scale=2.0), make_tensor(shape, dtype, device)


def out_shape(packed, args):
    return args[0].shape[:-1] + (args[0].shape[-1] // 2,) if packed else args[0].shape


def check_forward(packed, approx, *args, poisoned=True):
    if poisoned and args[0].is_cuda:
        poison(args[0].numel() * args[0].element_size())
    y = call(packed, approx, *args)
    assert y.shape == out_shape(packed, args) and y.dtype == args[0].dtype and y.device == args[0].device
    assert y.is_contiguous()
    assert_written(y)
    want = ref64(lambda *t: oracle(packed, approx, *t), *args)
    assert_close(y, want, TOLERANCES[y.dtype], mags(packed, args))
    return y


def check_backward(packed, approx, *args, dy):
    leaves = [a.detach().requires_grad_() for a in args]
    y = call(packed, approx, *leaves)
    if y.is_cuda:
        poison(nbytes_of(*leaves))
    y.backward(dy)
    _, grads = ref64(lambda *t: oracle(packed, approx, *t), *leaves, dy=dy)
    for name, leaf, ref, mag in zip(("dx",) if packed else ("dgate", "dup"), leaves, grads, mags(packed, args, dy)):
        assert leaf.grad.shape == leaf.shape and leaf.grad.dtype == leaf.dtype, name
        assert_written(leaf.grad)
        assert_close(leaf.grad, ref, TOLERANCES[leaf.dtype], mag, name)
    return [leaf.grad for leaf in leaves]


# --- CPU: the reference path ------------------------------------------------------------

@pytest.mark.parametrize("packed", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("approx", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (3, 7), (5, 1000), (2, 3, 4097)], ids=str)
def test_cpu_matches_float64(shape, dtype, approx, packed):
    args = inputs(packed, shape, dtype, "cpu")
    check_forward(packed, approx, *args)
    check_backward(packed, approx, *args, dy=make_tensor(shape, dtype, "cpu"))


@pytest.mark.parametrize("approx", ACTS, ids=ACT_IDS)
def test_reference_is_float64_exact(approx):
    g, u = inputs(False, (5, 300), torch.float64, "cpu")
    x = torch.cat([g, u], -1)
    ref = fusedaot.reference
    got = ref.swiglu(g, u) if approx is None else ref.geglu(g, u, approx)
    got_packed = ref.silu_and_mul(x) if approx is None else ref.gelu_and_mul(x, approx)
    for t in (got, got_packed):
        torch.testing.assert_close(t, oracle(False, approx, g, u), rtol=1e-14, atol=1e-300)
    # the reference backward against float64 autograd
    dy = torch.randn_like(g)
    _, (dg, du) = ref64(lambda a, b: oracle(False, approx, a, b), g, u, dy=dy)
    got = ref.swiglu_backward(dy, g, u) if approx is None else ref.geglu_backward(dy, g, u, approx)
    torch.testing.assert_close(got, (dg, du), rtol=1e-12, atol=1e-14)
    dx = ref.silu_and_mul_backward(dy, x) if approx is None else ref.gelu_and_mul_backward(dy, x, approx)
    torch.testing.assert_close(dx, torch.cat([dg, du], -1), rtol=1e-12, atol=1e-14)


# --- argument errors --------------------------------------------------------------------

def _bad_calls(dev):
    bf, f32 = torch.bfloat16, torch.float32
    g = torch.randn(2, 4096, device=dev, dtype=bf)
    i32 = torch.ones(2, 8, dtype=torch.int32, device=dev)
    return [
        (lambda: fusedaot.swiglu(i32, i32), TypeError,
         r"swiglu: gate must be float16, bfloat16 or float32, got torch\.int32"),
        (lambda: fusedaot.geglu(g.double(), g.double()), TypeError,
         r"geglu: gate must be float16, bfloat16 or float32, got torch\.float64"),
        (lambda: fusedaot.swiglu(g, [1.0]), TypeError, r"swiglu: up must be a torch\.Tensor, got list"),
        (lambda: fusedaot.swiglu(3.0, g), TypeError, r"swiglu: gate must be a torch\.Tensor, got float"),
        (lambda: fusedaot.swiglu(g, g.to(f32)), TypeError,
         r"swiglu: up dtype torch\.float32 does not match gate dtype torch\.bfloat16"),
        (lambda: fusedaot.geglu(g, g[:, :4095]), ValueError,
         r"geglu: gate has shape \(2, 4096\) but up has shape \(2, 4095\); they must be the same \(no broadcasting\)"),
        (lambda: fusedaot.swiglu(g, g[:1]), ValueError,
         r"swiglu: gate has shape \(2, 4096\) but up has shape \(1, 4096\)"),
        (lambda: fusedaot.swiglu(g[0, 0], g[0, 1]), ValueError,
         r"swiglu: gate must have at least one dimension, got a scalar"),
        (lambda: fusedaot.silu_and_mul(g[:, :4095]), ValueError,
         r"silu_and_mul: x's last dimension must be even \(\[gate \| up\], two halves of F\), got 4095"),
        (lambda: fusedaot.gelu_and_mul(g[:, :7], "tanh"), ValueError,
         r"gelu_and_mul: x's last dimension must be even .*, got 7"),
        (lambda: fusedaot.silu_and_mul(i32), TypeError,
         r"silu_and_mul: x must be float16, bfloat16 or float32, got torch\.int32"),
        (lambda: fusedaot.gelu_and_mul(g[0, 0]), ValueError,
         r"gelu_and_mul: x must have at least one dimension, got a scalar"),
        (lambda: fusedaot.geglu(g, g, "erf"), ValueError, r"geglu: approximate must be 'none' or 'tanh', got 'erf'"),
        (lambda: fusedaot.geglu(g, g, None), ValueError, r"geglu: approximate must be 'none' or 'tanh', got None"),
        (lambda: fusedaot.gelu_and_mul(g, "fast"), ValueError,
         r"gelu_and_mul: approximate must be 'none' or 'tanh', got 'fast'"),
        (lambda: fusedaot.nn.GeGLU("exact"), ValueError, r"GeGLU: approximate must be 'none' or 'tanh', got 'exact'"),
        (lambda: torch.ops.fusedaot.swiglu_backward(g[:, :8], g, g), ValueError,
         r"swiglu backward: dy must be \(2, 4096\) torch\.bfloat16 \(the output's\), got \(2, 8\) torch\.bfloat16"),
        (lambda: torch.ops.fusedaot.silu_and_mul_backward(g.float(), g), ValueError,
         r"silu_and_mul backward: dy must be \(2, 2048\) torch\.bfloat16 \(the output's\), got \(2, 4096\) torch\.float32"),
    ]


N_BAD = len(_bad_calls("cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(N_BAD))
def test_bad_arguments(device, case):
    fn, exc, msg = _bad_calls(device)[case]
    with pytest.raises(exc, match=msg):
        fn()


@pytest.mark.requires_cuda
def test_up_on_other_device():
    g = torch.randn(2, 64, device="cuda")
    with pytest.raises(ValueError, match=rf"swiglu: up is on cpu but gate is on {g.device}"):
        fusedaot.swiglu(g, torch.ones(2, 64))
    with pytest.raises(ValueError, match=rf"geglu: up is on {g.device} but gate is on cpu"):
        fusedaot.geglu(torch.ones(2, 64), g)


def test_unsupported_device_type():
    x = on_foreign_device(torch.randn(2, 8))
    msg = r"tensors on 'xla' are not supported; use CUDA or CPU tensors"
    with pytest.raises(ValueError, match="swiglu: " + msg):
        fusedaot.swiglu(x, x)
    with pytest.raises(ValueError, match="silu_and_mul: " + msg):
        fusedaot.silu_and_mul(x)


# --- launch arguments (no GPU): what Python hands the C functions ------------------------

class _RecordingLib:
    """Stands in for a native Library: records each call's arguments."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args)) or 0


def _same_launch(got, want, m, strides):
    """got == want, except that a single row's strides (the argument positions in `strides`)
    are free: the kernels multiply them by row 0."""
    keep = [i for i in range(len(want[1])) if m > 1 or i not in strides]
    return got[0] == want[0] and [got[1][i] for i in keep] == [want[1][i] for i in keep]


@pytest.mark.parametrize("approx", ACTS, ids=ACT_IDS)
def test_launch_arguments(approx, monkeypatch):
    """Pointers, strides and sizes handed to the C functions, for strided pairs and packed rows
    (up = x + F elements), forward and backward, checked on CPU tensors with a recording library."""
    monkeypatch.setattr(fusedaot._lib, "current_stream", lambda dev: 0x5000)
    act = {None: OPS.SILU, "none": OPS.GELU, "tanh": OPS.GELU_TANH}[approx]
    fn, tail = ("swiglu", ()) if approx is None else ("geglu", (act - 1,))
    dtype, es = torch.bfloat16, 2
    for m, n in [(5, 1000), (1, 7), (3, 4097)]:
        base = torch.zeros((m, 2 * n + 3), dtype=dtype)
        x = base[:, 1:1 + 2 * n]                     # strided, misaligned rows
        ptr, stride = x.data_ptr(), base.stride(0)
        dy = torch.zeros((m, n), dtype=dtype)
        for packed in (False, True):
            args = (x,) if packed else (x[:, :n], x[:, n:])
            lib = _RecordingLib()
            y = OPS._launch_packed(lib, 0, act, x) if packed else OPS._launch_pair(lib, 0, act, *args)
            want = (0x5000, 0, 2, ptr, ptr + n * es, y.data_ptr(), stride, stride, m, n, *tail)
            assert len(lib.calls) == 1 and _same_launch(lib.calls[0], (fn + "_fwd", want), m, (6, 7)), lib.calls
            lib = _RecordingLib()
            monkeypatch.setattr(OPS, "native", lambda t: (lib, 0))
            if packed:   # dx (m, 2n): dgate and dup are its halves, rows 2n apart
                dx = OPS._backward_packed(act, dy, x)
                outs = (dx.data_ptr(), dx.data_ptr() + n * es, 2 * n)
            else:        # dgate, dup contiguous (m, n)
                dgate, dup = OPS._backward_pair(act, dy, *args)
                outs = (dgate.data_ptr(), dup.data_ptr(), n)
            want = (0x5000, 0, 2, dy.data_ptr(), ptr, ptr + n * es, outs[0], outs[1], n, stride, stride, outs[2],
                    m, n, *tail)
            assert len(lib.calls) == 1 and _same_launch(lib.calls[0], (fn + "_bwd", want), m, (8, 9, 10, 11)), \
                lib.calls


# --- GPU forward --------------------------------------------------------------------------

MS = (0, 1, 3, 37, 1024)
NS = (1, 7, 8, 16, 17, 100, 128, 129, 1000, 1024, 4097, 11008, 65539)
GRID = [(m, n) for m in MS for n in NS if m * n <= 1 << 22]
# odd total sizes: 1, 7, 4097, 2^20 + 3 elements, as one row and as rows of one
ODD = [(1, 1), (7, 1), (1, 4097), (4097, 1), (1, (1 << 20) + 3), ((1 << 20) + 3, 1), (3, 349525)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("packed", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("approx", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", GRID + ODD, ids=[f"{m}x{n}" for m, n in GRID + ODD])
def test_forward_grid(m, n, dtype, approx, packed):
    check_forward(packed, approx, *inputs(packed, (m, n), dtype, "cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("packed", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("approx", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_extreme_values(dtype, approx, packed):
    # both saturated tails of the activations: exp overflows to inf, sigmoid to 0 or 1
    gate = torch.linspace(-60, 60, 4001, device="cuda").to(dtype).view(1, -1)
    up = make_tensor(gate.shape, dtype, "cuda")
    check_forward(packed, approx, *((torch.cat([gate, up], -1),) if packed else (gate, up)))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("approx", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", [(1, 8), (7, 1000), (33, 4096), (5, 4097), (3, 16)], ids=str)
def test_forward_misaligned(m, n, dtype, approx):
    # pointers one element past a 16-byte boundary: the aligned variants must not run
    gbuf = make_tensor((1 + m * n,), dtype, "cuda", scale=2.0)
    ubuf = make_tensor((1 + m * n,), dtype, "cuda")
    g, u = gbuf[1:].view(m, n), ubuf[1:].view(m, n)
    assert g.data_ptr() % 16 and u.data_ptr() % 16
    check_forward(False, approx, g, u)
    check_forward(False, approx, g, inputs(False, (m, n), dtype, "cuda")[1])   # gate misaligned only
    check_forward(False, approx, inputs(False, (m, n), dtype, "cuda")[0], u)   # up misaligned only
    # packed: x misaligned, and x aligned with an odd F (then up = x + F is misaligned)
    xbuf = make_tensor((1 + m * 2 * n,), dtype, "cuda")
    check_forward(True, approx, xbuf[1:].view(m, 2 * n))
    check_forward(True, approx, make_tensor((m, 2 * (n | 1)), dtype, "cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (3, 8, 100, 1000, 4096, 4097))
def test_forward_layouts(n, dtype):
    a = make_tensor((37, 2 * n + 5), dtype, "cuda", scale=2.0)
    before = a.clone()
    check_forward(False, None, a[:, :n], a[:, n:2 * n])                 # halves of one tensor, odd stride
    check_forward(True, "tanh", a[:, :2 * n])                             # packed rows strided
    check_forward(True, "none", a[:, 5:5 + 2 * n])                        # packed, offset rows
    assert torch.equal(a, before), "the input was written to"
    g3, u3 = inputs(False, (2, 9, n), dtype, "cuda")
    check_forward(False, "none", g3, u3)                                  # 3-D
    check_forward(False, "tanh", g3.transpose(0, 1), u3.transpose(0, 1))  # leading dims transposed
    check_forward(False, None, make_tensor((9, 2, n), dtype, "cuda", scale=2.0).transpose(0, 1), u3)  # gate only
    check_forward(False, None, make_tensor((n, 6), dtype, "cuda").t(), make_tensor((6, n), dtype, "cuda"))
    check_forward(True, None, make_tensor((2 * n, 6), dtype, "cuda").t())  # last dim strided: copied
    row = make_tensor((1, n), dtype, "cuda", scale=2.0)
    check_forward(False, "none", row.expand(6, n), make_tensor((6, n), dtype, "cuda"))  # row stride 0
    check_forward(True, None, make_tensor((5, 7, 2 * n), dtype, "cuda").transpose(0, 1))  # packed 3-D


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    g, u = inputs(False, (64, 3072), torch.bfloat16, "cuda")
    x = torch.cat([g, u], -1)
    assert torch.equal(fusedaot.swiglu(g, u), torch.ops.fusedaot.swiglu(g, u))
    assert torch.equal(fusedaot.silu_and_mul(x), torch.ops.fusedaot.silu_and_mul(x))
    assert torch.equal(fusedaot.silu_and_mul(x), fusedaot.swiglu(g, u))
    for approx in ("none", "tanh"):
        assert torch.equal(fusedaot.geglu(g, u, approx), torch.ops.fusedaot.geglu(g, u, approx))
        assert torch.equal(fusedaot.gelu_and_mul(x, approx), torch.ops.fusedaot.gelu_and_mul(x, approx))
        assert torch.equal(fusedaot.gelu_and_mul(x, approx), fusedaot.geglu(g, u, approx))


@pytest.mark.slow
@pytest.mark.requires_cuda
def test_forward_beyond_2_31_elements():
    f = 16384
    m = (1 << 31) // f + 16
    if torch.cuda.mem_get_info()[0] < 3 * m * f * 2 + (1 << 30):
        pytest.skip("not enough free GPU memory for a > 2^31-element packed tensor")
    x = torch.randn((m, 2 * f), dtype=torch.bfloat16, device="cuda")  # drawn in bf16: no fp32 copy
    y = fusedaot.silu_and_mul(x)
    for rows in (slice(0, 2), slice(m - 16, m)):  # the tail rows sit past 2^32 elements of x
        assert_close(y[rows], ref64(lambda t: oracle(True, None, t), x[rows]), TOLERANCES[torch.bfloat16],
                     mags(True, (x[rows],)))
    del x, y
    torch.cuda.empty_cache()


# --- GPU backward -------------------------------------------------------------------------

BWD = [(m, n) for m in (0, 1, 37, 1024) for n in (1, 7, 16, 100, 1000, 4096, 4097, 11008) if m * n <= 1 << 22]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("packed", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("approx", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n", BWD + [(1, (1 << 20) + 3)], ids=[f"{m}x{n}" for m, n in BWD] + ["odd2^20+3"])
def test_backward(m, n, dtype, approx, packed):
    check_backward(packed, approx, *inputs(packed, (m, n), dtype, "cuda"), dy=make_tensor((m, n), dtype, "cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("approx", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (7, 1000, 4096))
def test_backward_strided_and_misaligned(n, dtype, approx):
    a = make_tensor((19, 2 * n + 8), dtype, "cuda", scale=2.0)
    dy = make_tensor((1 + 19 * n,), dtype, "cuda")[1:].view(19, n)
    check_backward(False, approx, a[:, 3:3 + n], a[:, 3 + n:3 + 2 * n], dy=dy)
    check_backward(True, approx, a[:, 1:1 + 2 * n], dy=dy)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("packed", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_of_a_sum(dtype, packed):
    # y.sum().backward() hands the op an expanded dy (every stride 0)
    args = [t.requires_grad_() for t in inputs(packed, (21, 3000), dtype, "cuda")]
    call(packed, "tanh", *args).sum().backward()
    dy = torch.ones(21, 3000, dtype=dtype, device="cuda")
    _, grads = ref64(lambda *t: oracle(packed, "tanh", *t), *args, dy=dy)
    for leaf, ref, mag in zip(args, grads, mags(packed, args, dy)):
        assert_close(leaf.grad, ref, TOLERANCES[dtype], mag, "grad")


@pytest.mark.requires_cuda
def test_backward_op_equals_autograd():
    g, u = inputs(False, (64, 4096), torch.bfloat16, "cuda")
    x = torch.cat([g, u], -1)
    dy = torch.randn_like(g)
    dg, du = torch.ops.fusedaot.geglu_backward(dy, g, u, "tanh")
    g.requires_grad_(), u.requires_grad_()
    fusedaot.geglu(g, u, "tanh").backward(dy)
    assert torch.equal(dg, g.grad) and torch.equal(du, u.grad)
    dx = torch.ops.fusedaot.silu_and_mul_backward(dy, x)
    x.requires_grad_()
    fusedaot.silu_and_mul(x).backward(dy)
    assert torch.equal(dx, x.grad)
    assert torch.equal(dx, torch.cat(torch.ops.fusedaot.swiglu_backward(dy, g.detach(), u.detach()), -1))


@pytest.mark.requires_cuda
def test_grad_of_one_input_only():
    g, u = inputs(False, (8, 1000), torch.float32, "cuda")
    u.requires_grad_()
    dy = torch.randn_like(g)
    fusedaot.swiglu(g, u).backward(dy)
    assert g.grad is None
    assert_close(u.grad, ref64(lambda a, b: F.silu(a) * b, g, dy), TOLERANCES[torch.float32],
                 mags(False, (g, u), dy)[1])
