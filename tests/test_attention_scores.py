"""fusedaot.attention_scores: float64 references, 3-D and 4-D inputs, sizes that are not
multiples of a tile, empty ones, strided views (a fused QKV projection, expanded heads),
more than 65535 batch*heads, dtypes, backward, errors, opcheck, torch.compile, CUDA graphs.

    s = q @ k^T * scale   over (B, [H,] M, D) x (B, [H,] N, D) -> (B, [H,] M, N)
"""
from __future__ import annotations

import math

import pytest
import torch

import fusedaot
from conftest import assert_close, assert_written, compile_backends, make_tensor, on_foreign_device, poison

DTYPES = (torch.bfloat16, torch.float16)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]

# |got - ref| <= out*|ref| + comp*mag + floor, ref in float64 (conftest.assert_close).
# out:   s is rounded once from fp32: 2^-8 (bf16), 2^-11 (fp16).
# comp:  2^-23 with mag = steps * scale * (|q| @ |k|^T) + |ref|: the tensor cores add each
#        block of 16 exact products into the fp32 accumulator after aligning them to the
#        largest (truncating, up to ~16 ulps of the block's largest magnitude, itself <= the
#        sum of absolute products), so steps = ceil(D/16) + 16 bounds the sum's error in ulps;
#        then one fp32 rounding of the product with the scale.
# floor: fp16 results below 2^-14 are subnormal: half their spacing, 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=2**-23, floor=0.0),
    torch.float16: dict(out=2**-11, comp=2**-23, floor=2**-25),
}
# Backward (torch's batched matmuls in the input dtype, the scale applied as baddbmm's alpha
# before their rounding): out as above; comp with mag = scale * (|g| @ |k|) (and |g|^T @ |q|):
# one more rounding into the dtype of a partial sum (torch lets cuBLAS reduce split-K partial
# sums in bf16/fp16: allow_*_reduced_precision_reduction, on by default), at most u of mag,
# plus the fp32 sums' error, L * 2^-24 of mag for the contraction length L <= 2^12 here.
GRAD_TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=2**-8 + 2**-12, floor=0.0),
    torch.float16: dict(out=2**-11, comp=2**-11 + 2**-12, floor=2**-25),
}


def reference(q, k, scale):
    """(float64 s, mag); see TOLERANCES."""
    q64, k64 = q.detach().to(torch.float64), k.detach().to(torch.float64)
    s = q64 @ k64.transpose(-1, -2) * scale
    steps = math.ceil(q.shape[-1] / 16) + 16
    mag = steps * abs(scale) * (q64.abs() @ k64.abs().transpose(-1, -2)) + s.abs()
    return s, mag


def check_forward(q, k, scale):
    if q.is_cuda:
        poison(q.shape[:-1].numel() * k.shape[-2] * q.element_size())
    s = fusedaot.attention_scores(q, k, scale)
    assert s.shape == q.shape[:-1] + (k.shape[-2],) and s.dtype == q.dtype and s.is_contiguous()
    ref, mag = reference(q, k, scale)
    assert_written(s)
    assert_close(s, ref, TOLERANCES[q.dtype], mag, f"attention_scores {tuple(q.shape)} x {tuple(k.shape)}")
    return s


def check_backward(q, k, scale, dy):
    q, k = (t.detach().clone().requires_grad_() for t in (q, k))
    fusedaot.attention_scores(q, k, scale).backward(dy)
    q64, k64, g = (t.detach().to(torch.float64) for t in (q, k, dy))
    dq, dk = g @ k64 * scale, g.transpose(-1, -2) @ q64 * scale
    mag_dq = abs(scale) * (g.abs() @ k64.abs())
    mag_dk = abs(scale) * (g.abs().transpose(-1, -2) @ q64.abs())
    for name, got, want, mag in (("dq", q.grad, dq, mag_dq), ("dk", k.grad, dk, mag_dk)):
        assert got.shape == want.shape and got.dtype == q.dtype, name
        assert_written(got)
        assert_close(got, want, GRAD_TOLERANCES[q.dtype], mag, name)


# --- forward -------------------------------------------------------------------------------------------

# (B, H, M, N, D); H None: 3-D inputs.  Decode (M <= 64) and prefill classes, aligned and not.
SHAPES = [(1, 1, 1, 1, 1), (2, 3, 17, 33, 64), (1, 2, 1, 4097, 128), (2, 4, 64, 64, 16), (1, 2, 65, 300, 80),
          (1, 1, 1000, 1000, 128), (2, 8, 128, 128, 256), (3, None, 100, 200, 64), (2, 2, 0, 16, 64),
          (2, 2, 16, 0, 64), (2, 0, 16, 16, 64), (1, 1, 5, 7, 0)]


def qk(b, h, m, n, d, dtype, device):
    lead = (b,) if h is None else (b, h)
    return make_tensor(lead + (m, d), dtype, device), make_tensor(lead + (n, d), dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,h,m,n,d", SHAPES, ids=[f"{b}x{h}x{m}x{n}x{d}" for b, h, m, n, d in SHAPES])
def test_forward(b, h, m, n, d, dtype, device):
    q, k = qk(b, h, m, n, d, dtype, device)
    check_forward(q, k, 1 / math.sqrt(max(d, 1)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [None, 1.0, -0.3, 3])
def test_scale(device, scale):
    q, k = qk(2, 2, 19, 23, 64, torch.bfloat16, device)
    s = fusedaot.attention_scores(q, k, scale)
    used = 1 / 8 if scale is None else float(scale)
    assert_close(s, reference(q, k, used)[0], TOLERANCES[torch.bfloat16], reference(q, k, used)[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layouts(dtype, device):
    b, s_len, h, d = 2, 77, 4, 64
    qkv = make_tensor((b, s_len, 3, h, d), dtype, device)        # a fused QKV projection's output
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)   # (B, H, S, D) views, no copy
    assert not q.is_contiguous()
    want = fusedaot.attention_scores(q.contiguous(), k.contiguous(), 0.125)
    assert torch.equal(fusedaot.attention_scores(q, k, 0.125), want)
    check_forward(q, k, 0.125)
    kv1 = make_tensor((b, 1, s_len, d), dtype, device)            # one shared key head, expanded
    check_forward(q, kv1.expand(b, h, s_len, d), 0.125)
    big = make_tensor((b, h, s_len, d + 8), dtype, device)
    check_forward(q, big[..., 3:3 + d], 0.125)                    # misaligned rows: fallback variant
    check_forward(make_tensor((b, h, d, s_len), dtype, device).transpose(-1, -2), k, 0.125)  # D strided: copied


@pytest.mark.requires_cuda
def test_more_than_65535_heads():
    q, k = qk(1, 70000, 2, 3, 16, torch.bfloat16, "cuda")
    check_forward(q, k, 0.25)


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    q, k = qk(2, 4, 128, 256, 64, torch.bfloat16, "cuda")
    assert torch.equal(fusedaot.attention_scores(q, k, 0.125), torch.ops.fusedaot.attention_scores(q, k, 0.125))


# --- backward --------------------------------------------------------------------------------------------

BWD = [(1, 1, 1, 1, 8), (2, 3, 17, 33, 64), (3, None, 100, 50, 128), (2, 2, 0, 16, 64), (1, 4, 300, 300, 80)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,h,m,n,d", BWD, ids=[f"{b}x{h}x{m}x{n}x{d}" for b, h, m, n, d in BWD])
def test_backward(b, h, m, n, d, dtype, device):
    q, k = qk(b, h, m, n, d, dtype, device)
    check_backward(q, k, 0.17, make_tensor(q.shape[:-1] + (n,), dtype, device))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_through_views(device):
    qkv = make_tensor((2, 40, 3, 4, 32), torch.bfloat16, device).requires_grad_()
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    fusedaot.attention_scores(q, k, 0.5).sum().backward()
    ref = qkv.detach().to(torch.float64).requires_grad_()
    (ref[:, :, 0].transpose(1, 2) @ ref[:, :, 1].transpose(1, 2).transpose(-1, -2) * 0.5).sum().backward()
    assert torch.equal(qkv.grad[:, :, 2], torch.zeros_like(qkv.grad[:, :, 2]))
    torch.testing.assert_close(qkv.grad.double(), ref.grad, rtol=2**-7, atol=2**-7 * ref.grad.abs().max().item())


# --- errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_errors(device):
    q, k = qk(2, 4, 8, 16, 64, torch.bfloat16, device)
    cases = [
        ((q.float(), k), TypeError, r"attention_scores: q must be float16 or bfloat16, got torch\.float32"),
        ((q, k.half()), TypeError, r"attention_scores: k dtype torch\.float16 does not match q dtype torch\.bfloat16"),
        ((q, k[..., :32]), ValueError, r"attention_scores: q has shape \(2, 4, 8, 64\) and k has shape \(2, 4, 16, "
                                       r"32\): q's head dim \(64\) must equal k's \(32\)"),
        ((q, k[:, :3]), ValueError, r"attention_scores: q has shape \(2, 4, 8, 64\) and k has shape \(2, 3, 16, 64\): "
                                    r"their batch and head dimensions must match"),
        ((q[0, 0], k[0, 0]), ValueError, r"attention_scores: q must be \(batch, seq, head_dim\) or \(batch, heads, "
                                         r"seq, head_dim\), got shape \(8, 64\)"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fusedaot.attention_scores(*args)
    for bad in (float("nan"), float("inf"), "0.5", True):
        with pytest.raises(ValueError, match=r"attention_scores: scale must be a finite number or None"):
            fusedaot.attention_scores(q, k, bad)


def test_unsupported_device_type():
    q, k = qk(1, 1, 4, 4, 8, torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match=r"attention_scores: tensors on 'xla' are not supported"):
        fusedaot.attention_scores(on_foreign_device(q), k)


# --- torch.library integration -------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q, k = qk(2, 3, 9, 17, 32, torch.bfloat16, device)
    for grad in (False, True):
        torch.library.opcheck(torch.ops.fusedaot.attention_scores.default,
                              (q.clone().requires_grad_(grad), k.clone().requires_grad_(grad), 0.25))
    dy = make_tensor((2, 3, 9, 17), torch.bfloat16, device)
    torch.library.opcheck(torch.ops.fusedaot.attention_scores_backward.default, (dy, q, k, 0.25))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def f(q, k):
            return fusedaot.attention_scores(q * 2.0, k, 0.125).softmax(-1)

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):
            q, k = (t.requires_grad_() for t in qk(2, 2, m, 24, 32, torch.bfloat16, device))
            got, want = cf(q, k), f(q, k)
            assert_close(got, want, TOLERANCES[torch.bfloat16], what=backend)
            dy = torch.randn_like(got)
            for a, b in zip(torch.autograd.grad(got, (q, k), dy), torch.autograd.grad(want, (q, k), dy)):
                assert_close(a, b, dict(TOLERANCES[torch.bfloat16], out=2**-6), b.abs().max().expand_as(b) * 2**-7,
                             what=backend)


@pytest.mark.requires_cuda
def test_cuda_graph_replay():
    fusedaot.load()
    q, k = qk(2, 4, 128, 256, 64, torch.bfloat16, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fusedaot.attention_scores(q, k, 0.125)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        s = fusedaot.attention_scores(q, k, 0.125)
    for i in range(2):
        q.copy_(make_tensor(q.shape, torch.bfloat16, "cuda", scale=i + 1.0))
        g.replay()
        torch.cuda.synchronize()
        ref, mag = reference(q, k, 0.125)
        assert_close(s, ref, TOLERANCES[torch.bfloat16], mag)
