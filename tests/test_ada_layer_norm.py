"""fusedaot.ada_layer_norm: reference path, argument errors, the CUDA C++ kernels over shapes,
dtypes, every broadcast form of scale/shift (per tensor, per sample, per token; strided chunks
of one modulation tensor; fp32 scale/shift with a 16-bit x), row layouts, resident and looped
widths, backward with its reductions over the broadcast rows, torch.library integration
(opcheck, compile, CUDA graphs) and nn.AdaLayerNorm.

Every result is compared with a float64 evaluation of the formula on the same inputs:
    y = layer_norm(x) * (1 + scale) + shift
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusedaot
import fusedaot.nn
import fusedaot.reference
from conftest import (DTYPES, assert_close, assert_written, compile_backends, make_tensor, nbytes_of,
                      on_foreign_device, poison, ref64)

# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close)
# out:   computed in fp32, rounded once into the storage dtype: 2^-8 (bf16), 2^-11 (fp16),
#        2^-24 (fp32).  dscale/dshift use the row of their own dtype (fp32 with a bf16 x).
# comp:  the fp32 arithmetic before that rounding, relative to `mag` (mags(): the sum of the
#        absolute values of the terms, |x - mean| counted as |x| + mean(|x|), since the mean errs
#        relative to the sum of |x|).  Row statistics
#        are per-thread two-pass sums of <= 32 values merged pairwise over <= 1024 threads
#        (Chan's update: ~log2(N) + 32 dependent operations, each within a couple of ulps,
#        __fdividef's 2 ulp included); dscale/dshift add up to M rows per block then over
#        <= 2 x SMs blocks: ~70 dependent additions at most, 4.2e-6.  1e-5 leaves a ~2x margin.
# floor: fp16 results below 2^-14 are subnormal; rounding there errs by at most 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=1e-5, floor=0.0),
    torch.float16: dict(out=2**-11, comp=1e-5, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=1e-5, floor=0.0),
}
EPS = 1e-6
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]
FORMS = ("tensor", "sample", "token")


def oracle(x, scale, shift, eps):
    return F.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale) + shift


def mags(x, scale, shift, eps, dy=None):
    """Magnitude scales of y, and with dy of dx, dscale and dshift (summed to scale's shape)."""
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    rstd = torch.rsqrt((x - mean).square().mean(-1, keepdim=True) + eps)
    xh = (x.abs() + x.abs().mean(-1, keepdim=True)) * rstd
    s = (1 + scale.double()).abs() + scale.double().abs()
    mag_y = xh * s + shift.double().abs()
    if dy is None:
        return mag_y
    d = dy.double().abs()
    g = d * s
    mag_dx = rstd * (g + g.mean(-1, keepdim=True) + xh * (g * xh).mean(-1, keepdim=True))
    return mag_dx, (d * xh).sum_to_size(scale.shape), d.sum_to_size(scale.shape)


def modulation(xshape, form, dtype, device, pdtype=None, chunked=True):
    """(scale, shift) of the given form; chunked: strided halves of one (..., 2N) tensor, as
    DiT's adaLN_modulation(c).chunk() hands them over."""
    pdtype = pdtype or dtype
    n = xshape[-1]
    lead = {"tensor": (), "sample": (xshape[0],) + (1,) * (len(xshape) - 2), "token": tuple(xshape[:-1])}[form]
    if chunked:
        mod = make_tensor(lead + (2 * n,), pdtype, device, scale=0.5)
        return mod[..., n:], mod[..., :n]
    return make_tensor(lead + (n,), pdtype, device, scale=0.5), make_tensor(lead + (n,), pdtype, device, scale=0.5)


def check_forward(x, scale, shift, eps=EPS, poisoned=True):
    if poisoned and x.is_cuda:
        poison(nbytes_of(x))
    y = fusedaot.ada_layer_norm(x, scale, shift, eps)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous()
    assert_written(y)
    assert_close(y, ref64(oracle, x, scale, shift, eps=eps), TOLERANCES[x.dtype], mags(x, scale, shift, eps))
    return y


def check_backward(x, scale, shift, dy, eps=EPS):
    x = x.detach().requires_grad_()
    scale = scale.detach().requires_grad_()
    shift = shift.detach().requires_grad_()
    y = fusedaot.ada_layer_norm(x, scale, shift, eps)
    if x.is_cuda:
        poison(nbytes_of(x))
    y.backward(dy)
    _, (dx_ref, ds_ref, dh_ref) = ref64(oracle, x, scale, shift, dy=dy, eps=eps)
    mag_dx, mag_ds, mag_dh = mags(x.detach(), scale.detach(), shift.detach(), eps, dy)
    for got, ref, mag, name, like in ((x.grad, dx_ref, mag_dx, "dx", x), (scale.grad, ds_ref, mag_ds, "dscale", scale),
                                      (shift.grad, dh_ref, mag_dh, "dshift", shift)):
        assert got.shape == like.shape and got.dtype == like.dtype, name
        assert_written(got)
        assert_close(got, ref, TOLERANCES[got.dtype], mag, name)
    return x.grad, scale.grad, shift.grad


# --- CPU: the reference path ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("xshape", [(2, 3, 8), (1, 1, 1), (3, 5, 127), (2, 2, 1000)], ids=str)
@pytest.mark.parametrize("form", FORMS)
def test_cpu_matches_float64(xshape, dtype, form):
    x = make_tensor(xshape, dtype, "cpu")
    scale, shift = modulation(xshape, form, dtype, "cpu")
    check_forward(x, scale, shift)
    check_backward(x, scale, shift, make_tensor(xshape, dtype, "cpu"))


def test_reference_is_float64_exact():
    x = torch.randn(2, 5, 300, dtype=torch.float64)
    scale, shift = modulation(x.shape, "sample", torch.float64, "cpu")
    torch.testing.assert_close(fusedaot.reference.ada_layer_norm(x, scale, shift, EPS), oracle(x, scale, shift, EPS),
                               rtol=1e-14, atol=0)
    dy = torch.randn_like(x)
    _, grads = ref64(oracle, x, scale, shift, dy=dy, eps=EPS)
    for got, want in zip(fusedaot.reference.ada_layer_norm_backward(dy, x, scale, EPS), grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --- argument errors --------------------------------------------------------------------

def _bad_calls(dev):
    f32, bf, f16 = torch.float32, torch.bfloat16, torch.float16
    x = torch.randn(2, 3, 64, device=dev, dtype=bf)
    s = torch.zeros(2, 1, 64, device=dev, dtype=bf)
    return [
        ((torch.ones(2, 8, dtype=torch.int32, device=dev), s, s), TypeError,
         r"ada_layer_norm: x must be float16, bfloat16 or float32, got torch\.int32"),
        ((x, torch.zeros(2, 1, 64, dtype=f16, device=dev), s), TypeError,
         r"ada_layer_norm: scale must be torch\.bfloat16 \(x's dtype\) or torch\.float32, got torch\.float16"),
        ((x, s, torch.zeros(2, 1, 64, dtype=f32, device=dev)), TypeError,
         r"ada_layer_norm: shift dtype torch\.float32 does not match scale dtype torch\.bfloat16"),
        ((x, torch.zeros(2, 5, 64, dtype=bf, device=dev), s), ValueError,
         r"ada_layer_norm: scale of shape \(2, 5, 64\) does not broadcast against x of shape \(2, 3, 64\)"),
        ((x, torch.zeros(63, dtype=bf, device=dev), s), ValueError,
         r"ada_layer_norm: scale of shape \(63,\) does not broadcast against x of shape \(2, 3, 64\)"),
        ((x, torch.zeros(1, 3, 64, dtype=bf, device=dev), s), ValueError,
         r"ada_layer_norm: scale of shape \(1, 3, 64\) does not broadcast against x of shape \(2, 3, 64\) as \(N,\)"),
        ((x, s, torch.zeros(64, dtype=bf, device=dev)), ValueError,
         r"ada_layer_norm: shift has shape \(64,\) but scale has shape \(2, 1, 64\); they must have the same shape"),
        ((x, s, s, float("nan")), ValueError, r"ada_layer_norm: eps must be a positive finite number, got nan"),
        ((x, s, s, 0.0), ValueError, r"ada_layer_norm: eps must be a positive finite number, got 0\.0"),
        ((x, s, s, -1.0), ValueError, r"ada_layer_norm: eps must be a positive finite number, got -1\.0"),
        ((x, s, s, None), ValueError, r"ada_layer_norm: eps must be a positive finite number, got None"),
        ((x, 1.0, s), TypeError, r"ada_layer_norm: scale must be a torch\.Tensor, got float"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(12))
def test_bad_arguments(device, case):
    args, exc, msg = _bad_calls(device)[case]
    with pytest.raises(exc, match=msg):
        fusedaot.ada_layer_norm(*args)


@pytest.mark.requires_cuda
def test_modulation_on_other_device():
    x = torch.randn(2, 3, 64, device="cuda")
    with pytest.raises(ValueError, match=rf"ada_layer_norm: scale is on cpu but x is on {x.device}"):
        fusedaot.ada_layer_norm(x, torch.zeros(64), torch.zeros(64))


def test_unsupported_device_type():
    x = on_foreign_device(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"ada_layer_norm: tensors on 'xla' are not supported"):
        fusedaot.ada_layer_norm(x, torch.zeros(8), torch.zeros(8))


# --- GPU forward --------------------------------------------------------------------------

# (B, S, N): resident widths (1..16384 forward, ..8192 backward), looped ones beyond (with a
# shared scale and 16-bit x, rows held on chip up to 65536: 16392, 32768, 40008, 65536), odd
# widths that take the unaligned (VEC = 1) variants; the benchmark widths 3072 and 6144.
SHAPES = [(2, 3, 1), (2, 5, 3), (3, 4, 127), (2, 7, 1000), (2, 64, 3072), (2, 33, 4097), (2, 16, 6144),
          (1, 9, 8200), (2, 4, 16384), (2, 3, 16392), (2, 5, 32768), (1, 4, 40008), (1, 3, 65536),
          (1, 2, 131072)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("pdtype", ["same", "fp32"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("xshape", SHAPES, ids=str)
def test_forward_grid(xshape, dtype, form, pdtype):
    x = make_tensor(xshape, dtype, "cuda")
    scale, shift = modulation(xshape, form, dtype, "cuda", torch.float32 if pdtype == "fp32" else dtype)
    check_forward(x, scale, shift)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
def test_forward_empty_and_2d(dtype, form):
    x = make_tensor((0, 5, 64), dtype, "cuda")
    scale, shift = modulation((0, 5, 64), form, dtype, "cuda")
    assert fusedaot.ada_layer_norm(x, scale, shift).shape == (0, 5, 64)
    if form != "sample":  # (M, N) rows: (N,) per tensor, (M, N) per token
        x = make_tensor((37, 1000), dtype, "cuda")
        check_forward(x, *modulation((37, 1000), form, dtype, "cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (1000, 3072, 65536))
def test_forward_large_mean(n, dtype):
    x = make_tensor((2, 5, n), dtype, "cuda", offset=1000.0)
    check_forward(x, *modulation((2, 5, n), "sample", dtype, "cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("n", (1000, 3072, 4097))
def test_forward_huge_mean(n, dtype):
    # as test_layer_norm's: mean 2e19 (its square overflows fp32) and std 1e17, NaN-free
    x = make_tensor((2, 5, n), dtype, "cuda", scale=1e17, offset=2e19)
    check_forward(x, *modulation((2, 5, n), "sample", dtype, "cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n", (127, 3072, 4097, 20000))
@pytest.mark.parametrize("pad,offset", [(3, 0), (64, 8), (64, 1)], ids=["odd", "offset8", "misaligned"])
def test_forward_strided(n, form, dtype, pad, offset):
    big = make_tensor((2, 9, n + pad), dtype, "cuda")
    x = big[..., offset:offset + n]
    before = big.clone()
    scale, shift = modulation((2, 9, n), form, dtype, "cuda", chunked=False)
    if form != "tensor":  # strided modulation rows too
        scale = make_tensor(scale.shape[:-1] + (n + pad,), dtype, "cuda", scale=0.5)[..., offset:offset + n]
    check_forward(x, scale, shift)
    assert torch.equal(big, before), "the input was written to"


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (3, 1000, 6144))
def test_forward_layouts(n, dtype):
    scale, shift = modulation((5, 7, n), "sample", dtype, "cuda")
    check_forward(make_tensor((5, 7, n), dtype, "cuda"), scale, shift)
    check_forward(make_tensor((7, 5, n), dtype, "cuda").transpose(0, 1), scale, shift)  # rows copied in order
    check_forward(make_tensor((5, n, 7), dtype, "cuda").transpose(1, 2), scale, shift)  # last dim strided
    check_forward(make_tensor((5, 1, n), dtype, "cuda").expand(5, 7, n), scale, shift)  # token stride 0
    check_forward(make_tensor((5, 2, 7, n), dtype, "cuda"), scale[:, None], shift[:, None])  # (B, 1, 1, N)
    tscale, tshift = modulation((5, 7, n), "token", dtype, "cuda")
    check_forward(make_tensor((5, 7, n), dtype, "cuda"), tscale.transpose(0, 1).contiguous().transpose(0, 1),
                  tshift)  # per-token rows that do not merge into one stride: copied
    check_forward(make_tensor((5, 7, n), dtype, "cuda"), make_tensor((1, 1, n), dtype, "cuda"),
                  make_tensor((1, 1, n), dtype, "cuda"))  # (1, 1, N) per tensor


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", (1e-6, 1e-4, 0.5))
def test_forward_eps_reaches_the_kernel(eps, dtype):
    x = make_tensor((2, 4, 3072), dtype, "cuda", scale=1e-2)
    check_forward(x, *modulation((2, 4, 3072), "tensor", dtype, "cuda"), eps)


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    x = make_tensor((2, 64, 3072), torch.bfloat16, "cuda")
    for form in FORMS:
        scale, shift = modulation(x.shape, form, torch.bfloat16, "cuda", torch.float32)
        assert torch.equal(fusedaot.ada_layer_norm(x, scale, shift, EPS),
                           torch.ops.fusedaot.ada_layer_norm(x, scale, shift, EPS))


# --- GPU backward -------------------------------------------------------------------------

# backward: resident up to 8192 wide; looped beyond, with the column sums of rows 12288-16384
# wide in shared memory (12288, 12289 unaligned, 16384), else in a global partial row (8200, 16392)
BWD = [(2, 3, 1), (3, 4, 127), (2, 37, 1000), (2, 256, 3072), (1, 1024, 1024), (2, 33, 4097), (2, 40, 6144),
       (2, 21, 8192), (2, 9, 8200), (2, 24, 12288), (2, 5, 12289), (1, 5, 16384), (1, 64, 16392), (2, 3, 65536)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("pdtype", ["same", "fp32"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("xshape", BWD, ids=str)
def test_backward(xshape, dtype, form, pdtype):
    x = make_tensor(xshape, dtype, "cuda")
    scale, shift = modulation(xshape, form, dtype, "cuda", torch.float32 if pdtype == "fp32" else dtype)
    check_backward(x, scale, shift, make_tensor(xshape, dtype, "cuda"))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("form", FORMS)
def test_backward_empty(form):
    x = make_tensor((0, 5, 64), torch.bfloat16, "cuda").requires_grad_()
    scale, shift = (t.detach().requires_grad_() for t in modulation((0, 5, 64), form, torch.bfloat16, "cuda"))
    fusedaot.ada_layer_norm(x, scale, shift).sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(scale.grad, torch.zeros_like(scale)) and torch.equal(shift.grad, torch.zeros_like(shift))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n", (1000, 4097, 20000))
def test_backward_strided(n, form, dtype):
    x = make_tensor((2, 19, n + 8), dtype, "cuda")[..., 3:3 + n]
    dy = make_tensor((2, 19, n + 40), dtype, "cuda")[..., :n]
    check_backward(x, *modulation((2, 19, n), form, dtype, "cuda"), dy)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("form", FORMS)
def test_backward_of_a_sum(form):
    # y.sum().backward() hands the op an expanded dy (every stride 0)
    x = make_tensor((2, 50, 3072), torch.bfloat16, "cuda")
    scale, shift = modulation(x.shape, form, torch.bfloat16, "cuda", torch.float32)
    check_backward(x, scale, shift, torch.ones(1, 1, 1, dtype=torch.bfloat16, device="cuda").expand(x.shape))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n", (3072, 20000))
def test_backward_deterministic(form, n):
    x = make_tensor((2, 2048 if n == 3072 else 64, n), torch.bfloat16, "cuda")
    scale, _ = modulation(x.shape, form, torch.bfloat16, "cuda")
    dy = make_tensor(x.shape, torch.bfloat16, "cuda")
    first = torch.ops.fusedaot.ada_layer_norm_backward(dy, x, scale, EPS)
    for _ in range(2):
        again = torch.ops.fusedaot.ada_layer_norm_backward(dy, x, scale, EPS)
        assert all(torch.equal(a, c) for a, c in zip(first, again))


# --- torch.library integration ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("pdtype", [torch.bfloat16, torch.float32], ids=str)
def test_opcheck(device, form, pdtype):
    x = make_tensor((2, 3, 264), torch.bfloat16, device)
    scale, shift = modulation(x.shape, form, torch.bfloat16, device, pdtype)
    for grad in (False, True):
        args = [t.clone().requires_grad_(grad) for t in (x, scale, shift)]
        torch.library.opcheck(torch.ops.fusedaot.ada_layer_norm.default, (*args, EPS))
    # per token with a bf16 scale, dshift is dy itself and comes back empty; else it is written
    torch.library.opcheck(torch.ops.fusedaot.ada_layer_norm_backward.default, (torch.randn_like(x), x, scale, EPS))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    for backend in compile_backends(device):
        torch._dynamo.reset()
        mod = fusedaot.nn.AdaLayerNorm(96, 32, device=device)

        def f(x, c):
            return mod(x * 2.0, c) + 1.0

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for s in (5, 17):  # two sizes through one dynamic graph
            x = make_tensor((2, s, 96), torch.bfloat16, device).requires_grad_()
            c = make_tensor((2, 32), torch.float32, device).requires_grad_()
            got, want = cf(x, c), f(x, c)
            assert_close(got, want, TOLERANCES[torch.bfloat16], what=f"{backend} forward")
            dy = torch.randn_like(got)
            for a, b, name in zip(torch.autograd.grad(got, (x, c), dy), torch.autograd.grad(want, (x, c), dy),
                                  ("dx", "dc")):
                assert_close(a, b, dict(TOLERANCES[a.dtype], comp=1e-4), what=f"{backend} {name}")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("xshape", [(1, 1, 3072), (2, 37, 4097), (1, 4, 20000)], ids=str)
def test_cuda_graph_replay(xshape, form):
    fusedaot.load()
    dtype = torch.bfloat16
    x = make_tensor(xshape, dtype, "cuda")
    scale, shift = modulation(xshape, form, dtype, "cuda", torch.float32, chunked=False)
    dy = make_tensor(xshape, dtype, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        fusedaot.ada_layer_norm(x, scale, shift, EPS)
        torch.ops.fusedaot.ada_layer_norm_backward(dy, x, scale, EPS)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fusedaot.ada_layer_norm(x, scale, shift, EPS)
        dx, dscale, dshift = torch.ops.fusedaot.ada_layer_norm_backward(dy, x, scale, EPS)
    for _ in range(2):
        x.copy_(make_tensor(xshape, dtype, "cuda"))
        new_scale, new_shift = modulation(xshape, form, dtype, "cuda", torch.float32, chunked=False)
        scale.copy_(new_scale), shift.copy_(new_shift)
        dy.copy_(make_tensor(xshape, dtype, "cuda"))
        g.replay()
        torch.cuda.synchronize()
        assert_close(y, ref64(oracle, x, scale, shift, eps=EPS), TOLERANCES[dtype], mags(x, scale, shift, EPS))
        _, (dx_ref, ds_ref, dh_ref) = ref64(oracle, x, scale, shift, dy=dy, eps=EPS)
        mag_dx, mag_ds, mag_dh = mags(x, scale, shift, EPS, dy)
        assert_close(dx, dx_ref, TOLERANCES[dtype], mag_dx, "dx")
        assert_close(dscale, ds_ref, TOLERANCES[torch.float32], mag_ds, "dscale")
        assert_close(dshift, dh_ref, TOLERANCES[torch.float32], mag_dh, "dshift")


# --- nn.AdaLayerNorm ----------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cdim", ["sample", "token", "tensor"])
def test_module_is_dits_modulation(device, cdim):
    n, cond = 256, 64
    mod = fusedaot.nn.AdaLayerNorm(n, cond, device=device)
    assert [k for k in mod.state_dict()] == ["linear.weight", "linear.bias"]
    assert mod.linear.out_features == 2 * n
    x = make_tensor((3, 10, n), torch.bfloat16, device)
    c = make_tensor({"sample": (3, cond), "token": (3, 10, cond), "tensor": (cond,)}[cdim], torch.float32, device)
    y = mod(x, c)
    # DiT: shift, scale = adaLN_modulation(c).chunk(2, dim=1); modulate(norm(x), shift, scale)
    emb = mod.linear(F.silu(c)).detach()
    shift, scale = emb.chunk(2, dim=-1)
    if cdim == "sample":
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    assert_close(y, ref64(oracle, x, scale, shift, eps=1e-6), TOLERANCES[torch.bfloat16], mags(x, scale, shift, 1e-6))
    y.float().sum().backward()
    assert mod.linear.weight.grad is not None and mod.linear.weight.grad.dtype == torch.float32
