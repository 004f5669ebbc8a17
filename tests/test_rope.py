"""fusedaot.apply_rope / apply_rope_: reference path, argument errors, the kernel over head
counts (GQA), head dims, layouts, partial rotary, tables and positions, strided q/k, backward,
torch.library integration (opcheck, compile, CUDA graphs).

Every result is compared with a float64 evaluation of the model-code formula on the same inputs
(tests/rope_oracle.py):  out = x*cos + rotate_half(x)*sin  (rotate-every-two when interleaved).
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
import fusedaot.reference
from conftest import (DTYPES, assert_close, assert_written, compile_backends, make_tensor, nbytes_of,
                      on_foreign_device, poison, ref64)
from rope_oracle import rope, rope_tables, rope_transposed_abs

# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close), mag = |x|*|cos| + |rot(x)|*|sin|
# out:   fp32 arithmetic, one rounding into the storage dtype: its unit roundoff 2^-8 (bf16),
#        2^-11 (fp16), 2^-24 (fp32).
# comp:  two fp32 products and one sum (fused or not) before that rounding: at most 3 fp32
#        roundings of terms bounded by mag, 3 * 2^-24 = 1.8e-7; 4e-7 leaves a 2x margin.
# floor: fp16 results below 2^-14 are subnormal; rounding there errs by up to 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=4e-7, floor=0.0),
    torch.float16: dict(out=2**-11, comp=4e-7, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=4e-7, floor=0.0),
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]


def to4(t):
    return t.unsqueeze(0) if t.dim() == 3 else t


def check(q, k, cos, sin, pos=None, interleaved=False, rotary_dim=None, inplace=False):
    """Forward against the float64 oracle, outputs poisoned first; returns (q_out, k_out)."""
    q0, k0 = q.clone(), k.clone()
    if q.is_cuda:
        poison(max(nbytes_of(q), nbytes_of(k)))
    kw = dict(position_ids=pos, interleaved=interleaved, rotary_dim=rotary_dim)
    if inplace:
        qo, ko = fusedaot.apply_rope_(q, k, cos, sin, **kw)
        assert qo is q and ko is k
    else:
        qo, ko = fusedaot.apply_rope(q, k, cos, sin, **kw)
        assert torch.equal(q, q0) and torch.equal(k, k0), "the inputs were written to"
        assert qo.is_contiguous() and ko.is_contiguous()
    for got, x in ((qo, q0), (ko, k0)):
        assert got.shape == x.shape and got.dtype == x.dtype and got.device == x.device
        assert_written(got)
        want = ref64(lambda t, c, s: rope(to4(t), c, s, pos, interleaved, rotary_dim), x, cos, sin)
        mag = ref64(lambda t, c, s: rope(to4(t), c, s, pos, interleaved, rotary_dim, absolute=True), x, cos, sin)
        assert_close(to4(got), want, TOLERANCES[x.dtype], mag)
    return qo, ko


def check_backward(q, k, cos, sin, pos=None, interleaved=False, rotary_dim=None):
    q = q.detach().requires_grad_()
    k = k.detach().requires_grad_()
    qo, ko = fusedaot.apply_rope(q, k, cos, sin, position_ids=pos, interleaved=interleaved, rotary_dim=rotary_dim)
    dq, dk = make_tensor(qo.shape, q.dtype, q.device), make_tensor(ko.shape, k.dtype, k.device)
    if q.is_cuda:
        poison(max(nbytes_of(q), nbytes_of(k)))
    torch.autograd.backward((qo, ko), (dq, dk))
    for x, dy in ((q, dq), (k, dk)):
        assert x.grad.shape == x.shape and x.grad.dtype == x.dtype
        assert_written(x.grad)
        _, (want, *_) = ref64(lambda t: rope(to4(t), cos.double(), sin.double(), pos, interleaved, rotary_dim),
                              x, dy=dy)
        mag = rope_transposed_abs(to4(dy).double(), cos.double(), sin.double(), pos, interleaved, rotary_dim)
        assert_close(to4(x.grad), to4(want), TOLERANCES[x.dtype], mag, "grad")


def qk(b, s, hq, hk, d, dtype, device):
    return make_tensor((b, s, hq, d), dtype, device), make_tensor((b, s, hk, d), dtype, device)


# --- CPU: the reference path -------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("hq,hk,d,r", [(4, 2, 64, 64), (3, 1, 80, 32), (2, 2, 8, 8)], ids=str)
def test_cpu_matches_float64(dtype, interleaved, hq, hk, d, r):
    q, k = qk(2, 7, hq, hk, d, dtype, "cpu")
    cos, sin = rope_tables(12, r, dtype, "cpu", kind="random", interleaved=interleaved)
    pos = torch.tensor([[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5, 8, 9, 7]])
    check(q, k, cos, sin, pos, interleaved, r)
    check_backward(q, k, cos, sin, pos, interleaved, r)
    check(q.clone(), k.clone(), cos, sin, pos, interleaved, r, inplace=True)


def test_reference_is_the_hf_formula_in_float64():
    q, k = qk(2, 5, 3, 1, 64, torch.float64, "cpu")
    cos, sin = rope_tables(5, 64, torch.float64, "cpu")
    qo, ko = fusedaot.reference.apply_rope(q, k, cos, sin)
    torch.testing.assert_close(qo, rope(q, cos, sin), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(ko, rope(k, cos, sin), rtol=1e-14, atol=1e-14)


def test_rotation_backward_is_rotation_by_minus_theta():
    # a true rotation table: the backward applied to the forward gives the input back
    q, k = qk(1, 9, 2, 2, 32, torch.float64, "cpu")
    cos, sin = rope_tables(9, 32, torch.float64, "cpu")
    back = fusedaot.reference.apply_rope_backward(*fusedaot.reference.apply_rope(q, k, cos, sin), cos, sin)
    torch.testing.assert_close(back[0], q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(back[1], k, rtol=1e-12, atol=1e-12)


# --- argument errors ------------------------------------------------------------------------

def _bad_calls(dev):
    bf, f32 = torch.bfloat16, torch.float32
    q, k = qk(2, 5, 4, 2, 64, bf, dev)
    cos, sin = rope_tables(8, 64, bf, dev)
    c32, s32 = rope_tables(8, 64, f32, dev)
    half = rope_tables(8, 64, bf, dev, half=True)
    pos = torch.zeros(2, 5, dtype=torch.long, device=dev)
    return [
        ((q.int(), k, cos, sin), {}, TypeError, r"apply_rope: q must be float16, bfloat16 or float32, got torch\.int32"),
        ((q, k.float(), cos, sin), {}, TypeError, r"apply_rope: k dtype torch\.float32 does not match q dtype torch\.bfloat16"),
        ((q, k, c32, s32), {}, TypeError, r"apply_rope: cos dtype torch\.float32 does not match q dtype torch\.bfloat16"),
        ((q[0], k, cos, sin), {}, ValueError, r"apply_rope: k has shape \(2, 5, 2, 64\) but q has shape \(5, 4, 64\)"),
        ((q[..., :32], k, cos, sin), {}, ValueError, r"k must match q in every dimension but the number of heads"),
        ((q[0, 0], k[0, 0], cos, sin), {}, ValueError, r"apply_rope: q must be \(batch, seq, heads, head_dim\) or "
                                                       r"\(tokens, heads, head_dim\), got shape \(4, 64\)"),
        ((q, k, cos, sin[:, :32]), {}, ValueError, r"apply_rope: sin has shape \(8, 32\) but cos has shape \(8, 64\)"),
        ((q, k, cos[None, None], sin[None, None]), {}, ValueError, r"cos and sin must be \(positions, dim\) or "
                                                                   r"\(batch, positions, dim\)"),
        ((q[..., :32], k[..., :32], cos, sin), {}, ValueError, r"apply_rope: cos has 64 columns but head_dim is 32"),
        ((q, k, cos, sin), dict(rotary_dim=63), ValueError, r"apply_rope: rotary_dim must be a positive even number, got 63"),
        ((q, k, cos, sin), dict(rotary_dim=0), ValueError, r"apply_rope: rotary_dim must be a positive even number, got 0"),
        ((q, k, cos, sin), dict(rotary_dim=128), ValueError, r"apply_rope: rotary_dim 128 exceeds head_dim 64"),
        ((q, k, *half), dict(rotary_dim=48), ValueError, r"apply_rope: cos has 32 columns; with rotary_dim 48 expected "
                                                         r"48 \(one value per element\) or 24 \(one per pair\)"),
        ((q, k, cos[:4], sin[:4]), {}, ValueError, r"apply_rope: cos has 4 rows but the sequence has 5 positions"),
        ((q, k, cos, sin), dict(position_ids=pos.float()), TypeError, r"position_ids must be int64 or int32, got torch\.float32"),
        ((q, k, cos, sin), dict(position_ids=pos[:, :4]), ValueError, r"position_ids must be \(batch, seq\) = \(2, 5\) "
                                                                      r"or \(seq,\) = \(5,\), got shape \(2, 4\)"),
        ((q, k, cos, sin), dict(rotary_dim=64.0), TypeError, r"apply_rope: rotary_dim must be an int or None, got float"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(17))
def test_bad_arguments(device, case):
    args, kw, exc, msg = _bad_calls(device)[case]
    with pytest.raises(exc, match=msg):
        fusedaot.apply_rope(*args, **kw)
    with pytest.raises(exc, match=msg.replace("apply_rope:", "apply_rope_:")):
        fusedaot.apply_rope_(*[a.clone() for a in args], **kw)


def test_positions_out_of_range_on_cpu():
    q, k = qk(1, 3, 2, 1, 16, torch.float32, "cpu")
    cos, sin = rope_tables(4, 16, torch.float32, "cpu")
    for bad in ([0, 1, 4], [-1, 0, 1]):
        with pytest.raises(IndexError, match=r"apply_rope: position_ids must lie in \[0, 4\) \(the rows of cos\)"):
            fusedaot.apply_rope(q, k, cos, sin, position_ids=torch.tensor(bad))


def test_table_gradient_refused():
    q, k = qk(1, 3, 2, 1, 16, torch.float32, "cpu")
    cos, sin = rope_tables(4, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"apply_rope: cos and sin get no gradient"):
        fusedaot.apply_rope(q, k, cos.requires_grad_(), sin)


def test_inplace_refuses_autograd():
    q, k = qk(1, 3, 2, 1, 16, torch.float32, "cpu")
    cos, sin = rope_tables(4, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"apply_rope_: rotating in place records no gradient"):
        fusedaot.apply_rope_(q.requires_grad_(), k, cos, sin)


@pytest.mark.requires_cuda
def test_tables_on_other_device():
    q, k = qk(1, 3, 2, 1, 16, torch.float32, "cuda")
    cos, sin = rope_tables(4, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match=rf"apply_rope: cos is on cpu but q is on {q.device}"):
        fusedaot.apply_rope(q, k, cos, sin)


def test_unsupported_device_type():
    q, k = qk(1, 3, 2, 1, 16, torch.float32, "cpu")
    cos, sin = rope_tables(4, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"apply_rope: tensors on 'xla' are not supported"):
        fusedaot.apply_rope(on_foreign_device(q), k, cos, sin)


# --- GPU forward ----------------------------------------------------------------------------

# (Hq, Hk, head_dim, rotary_dim): GQA counts, odd head dims, partial rotary, a head wider
# than one step (512), one not 16-byte aligned (72: rotary_dim/2 = 36 pairs), tiny heads.
HEADS = [(32, 8, 128, 128), (4, 2, 64, 64), (6, 2, 80, 80), (5, 1, 96, 96), (2, 2, 256, 256),
         (3, 1, 128, 64), (4, 2, 96, 32), (2, 1, 512, 512), (2, 1, 72, 72), (1, 1, 2, 2), (8, 0, 32, 32)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("hq,hk,d,r", HEADS, ids=[f"{h}x{k}x{d}r{r}" for h, k, d, r in HEADS])
def test_forward_heads(hq, hk, d, r, interleaved, dtype):
    q, k = qk(2, 37, hq, hk, d, dtype, "cuda")
    cos, sin = rope_tables(37, r, dtype, "cuda", interleaved=interleaved)
    check(q, k, cos, sin, None, interleaved, r if r < d else None)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("tables", ["full", "half", "random", "random-half", "per-batch"])
@pytest.mark.parametrize("positions", ["none", "batch", "seq"])
def test_forward_tables_and_positions(positions, tables, interleaved, dtype):
    b, s, d = 3, 19, 128
    q, k = qk(b, s, 8, 2, d, dtype, "cuda")
    kind = "random" if tables.startswith("random") else "rope"
    half = tables.endswith("half")
    cos, sin = rope_tables(64, d, dtype, "cuda", kind, half, interleaved, batch=b if tables == "per-batch" else 0)
    pos = {"none": None,  # out of order, repeated, across the whole table
           "batch": torch.randint(0, 64, (b, s), device="cuda"),
           "seq": torch.randperm(64, device="cuda")[:s].int()}[positions]
    check(q, k, cos, sin, pos, interleaved, d if half else None)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (0, 7), (4, 0), (1, 2048), (300, 3)], ids=str)
def test_forward_token_counts(shape, dtype):
    q, k = qk(*shape, 4, 2, 64, dtype, "cuda")
    cos, sin = rope_tables(max(shape[1], 1), 64, dtype, "cuda")
    qo, ko = check(q, k, cos, sin)
    assert qo.shape == q.shape and ko.shape == k.shape


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("layout", ["fused-qkv", "hf-transposed", "misaligned", "tokens"])
def test_forward_strided(layout, interleaved, dtype):
    b, s, hq, hk, d = 2, 33, 8, 2, 128
    if layout == "fused-qkv":      # slices of a (B, S, (Hq + 2Hk) * D) projection, viewed as heads
        qkv = make_tensor((b, s, (hq + 2 * hk) * d), dtype, "cuda").view(b, s, hq + 2 * hk, d)
        q, k = qkv[:, :, :hq], qkv[:, :, hq:hq + hk]
    elif layout == "hf-transposed":  # (B, H, S, D) tensors seen as (B, S, H, D)
        q = make_tensor((b, hq, s, d), dtype, "cuda").transpose(1, 2)
        k = make_tensor((b, hk, s, d), dtype, "cuda").transpose(1, 2)
    elif layout == "misaligned":   # one element off 16 bytes: the unaligned variant
        buf = make_tensor((b * s * (hq + hk) * d + 1,), dtype, "cuda")[1:].view(b, s, hq + hk, d)
        q, k = buf[:, :, :hq], buf[:, :, hq:]
    else:                          # (T, H, D) with (T,) positions, vLLM style
        q, k = qk(1, 2 * s, hq, hk, d, dtype, "cuda")
        q, k = q[0, ::2], k[0, 1::2]
    cos, sin = rope_tables(128, d, dtype, "cuda", interleaved=interleaved)
    seq = q.shape[-3]
    pos = torch.randperm(128, device="cuda")[:seq]
    check(q, k, cos, sin, pos if layout != "fused-qkv" else pos.expand(q.shape[0], seq), interleaved)
    # in place: only q's and k's elements change
    if layout == "fused-qkv":
        before = qkv.clone()
        want = fusedaot.apply_rope(q, k, cos, sin, position_ids=pos, interleaved=interleaved)
        fusedaot.apply_rope_(q, k, cos, sin, position_ids=pos, interleaved=interleaved)
        assert torch.equal(q, want[0]) and torch.equal(k, want[1])
        assert torch.equal(qkv[:, :, hq + hk:], before[:, :, hq + hk:]), "v was written to"


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hq,hk,d,r", [(32, 8, 128, 128), (3, 1, 128, 64), (2, 1, 512, 512), (2, 1, 72, 72)], ids=str)
def test_inplace(hq, hk, d, r, dtype):
    q, k = qk(2, 17, hq, hk, d, dtype, "cuda")
    cos, sin = rope_tables(17, r, dtype, "cuda", kind="random")
    want = fusedaot.apply_rope(q, k, cos, sin, rotary_dim=r)
    check(q, k, cos, sin, None, False, r, inplace=True)
    assert torch.equal(q, want[0]) and torch.equal(k, want[1])


# 2 x 1025 tokens of 16-bit q and k run the CUDA C++ kernel (aot/specs/rope.py: ROPE_CUDA, the
# op's D of 64, 128 or 256 with many tokens); (Hq, Hk, head_dim, rotary_dim): the last chunk of
# heads part empty (33 + 7 at 64: 16 heads a block), partial rotary out of place (pass-through
# columns copied) and in place (D = 2R = 64 of a 128-wide head: the rest never touched), q and k
# strided as slices of a fused projection; forward, in place and backward (the rotation by
# -theta reads each lane's partner's sin: random tables tell them apart).
MANY_TOKENS = [(33, 7, 64, 64), (32, 8, 128, 128), (5, 3, 128, 64), (9, 2, 256, 256)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("hq,hk,d,r", MANY_TOKENS, ids=[f"{h}x{k}x{d}r{r}" for h, k, d, r in MANY_TOKENS])
@pytest.mark.parametrize("form", ["forward", "fused-qkv-positions", "inplace", "backward"])
def test_many_tokens(form, hq, hk, d, r, dtype):
    b, s = 2, 1025
    q, k = qk(b, s, hq, hk, d, dtype, "cuda")
    if form == "fused-qkv-positions":
        qkv = make_tensor((b, s, hq + 2 * hk, d), dtype, "cuda")
        q, k = qkv[:, :, :hq], qkv[:, :, hq:hq + hk]
    cos, sin = rope_tables(2048, r, dtype, "cuda", kind="random")
    pos = torch.randint(0, 2048, (b, s), device="cuda") if form != "forward" else None
    rotary = r if r < d else None
    if form == "backward":
        check_backward(q, k, cos, sin, pos, False, rotary)
    elif form == "inplace":
        want = fusedaot.apply_rope(q, k, cos, sin, position_ids=pos, rotary_dim=rotary)
        check(q, k, cos, sin, pos, False, rotary, inplace=True)
        assert torch.equal(q, want[0]) and torch.equal(k, want[1])
    else:
        check(q, k, cos, sin, pos, False, rotary)


@pytest.mark.requires_cuda
def test_positions_out_of_range_poison_the_token_on_cuda():
    # the contract without a host sync: a position outside the table makes that token's
    # rotated values NaN (nothing out of bounds is read); the other tokens are unaffected
    q, k = qk(1, 4, 2, 1, 64, torch.float32, "cuda")
    cos, sin = rope_tables(8, 32, torch.float32, "cuda")
    pos = torch.tensor([0, 8, -1, 7], device="cuda")
    qo, ko = fusedaot.apply_rope(q, k, cos, sin, position_ids=pos)
    for out in (qo, ko):
        assert out[0, [1, 2], :, :32].isnan().all()
        assert torch.equal(out[0, [1, 2], :, 32:], (q if out is qo else k)[0, [1, 2], :, 32:])
        assert out[0, [0, 3]].isfinite().all()


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    q, k = qk(4, 64, 32, 8, 128, torch.bfloat16, "cuda")
    cos, sin = rope_tables(64, 128, torch.bfloat16, "cuda")
    a = fusedaot.apply_rope(q, k, cos, sin)
    b = torch.ops.fusedaot.apply_rope(q, k, cos, sin, None, False, 128)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- GPU backward -----------------------------------------------------------------------------

@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("hq,hk,d,r,kind", [(32, 8, 128, 128, "rope"), (6, 2, 80, 80, "random"),
                                            (3, 1, 128, 64, "random"), (2, 1, 512, 512, "rope"),
                                            (2, 1, 72, 72, "random")], ids=str)
def test_backward(hq, hk, d, r, kind, interleaved, dtype):
    q, k = qk(2, 21, hq, hk, d, dtype, "cuda")
    cos, sin = rope_tables(40, r, dtype, "cuda", kind, interleaved=interleaved)
    pos = torch.randint(0, 40, (2, 21), device="cuda")
    check_backward(q, k, cos, sin, pos, interleaved, r)


@pytest.mark.requires_cuda
def test_backward_of_a_sum_and_of_unused_output():
    q, k = qk(2, 9, 4, 2, 64, torch.float32, "cuda")
    cos, sin = rope_tables(9, 64, torch.float32, "cuda", kind="random")
    q.requires_grad_(), k.requires_grad_()
    qo, ko = fusedaot.apply_rope(q, k, cos, sin)
    qo.sum().backward()   # dy expanded (every stride 0); k's output unused: k.grad is zero
    _, (want,) = ref64(lambda t: rope(t, cos.double(), sin.double()), q, dy=torch.ones_like(qo))
    assert_close(q.grad, want, TOLERANCES[torch.float32], rope_transposed_abs(torch.ones_like(qo).double(),
                                                                             cos.double(), sin.double()))
    assert k.grad is None or not k.grad.any()


@pytest.mark.requires_cuda
def test_backward_op_equals_autograd():
    q, k = qk(2, 16, 8, 2, 128, torch.bfloat16, "cuda")
    cos, sin = rope_tables(16, 128, torch.bfloat16, "cuda")
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    a = torch.ops.fusedaot.apply_rope_backward(dq, dk, cos, sin, None, False, 128)
    q.requires_grad_(), k.requires_grad_()
    torch.autograd.backward(fusedaot.apply_rope(q, k, cos, sin), (dq, dk))
    assert torch.equal(a[0], q.grad) and torch.equal(a[1], k.grad)


# --- torch.library integration ---------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_opcheck(device, interleaved):
    q, k = qk(2, 5, 4, 2, 64, torch.float32, device)
    cos, sin = rope_tables(8, 32, torch.float32, device, interleaved=interleaved)
    pos = torch.tensor([[1, 0, 7, 3, 3], [2, 4, 6, 5, 0]], device=device)
    for p in (None, pos):
        for grad in (False, True):
            args = (q.clone().requires_grad_(grad), k.clone().requires_grad_(grad), cos, sin, p, interleaved, 32)
            torch.library.opcheck(torch.ops.fusedaot.apply_rope.default, args)
        torch.library.opcheck(torch.ops.fusedaot.apply_rope_backward.default,
                              (q, k, cos, sin, p, interleaved, 32))
        torch.library.opcheck(torch.ops.fusedaot.apply_rope_.default,
                              (q.clone(), k.clone(), cos, sin, p, interleaved, 32))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    tol = TOLERANCES[torch.float32]
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def f(q, k, cos, sin, pos):
            qo, ko = fusedaot.apply_rope(q * 2.0, k, cos, sin, position_ids=pos)
            return qo + 1.0, ko

        def g(q, k, cos, sin, pos):
            return fusedaot.apply_rope_(q, k, cos, sin, position_ids=pos)

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        cg = torch.compile(g, fullgraph=True, backend=backend, dynamic=True)
        cos, sin = rope_tables(32, 64, torch.float32, device)
        for s in (5, 17):  # two sequence lengths through one dynamic graph
            q, k = qk(2, s, 4, 2, 64, torch.float32, device)
            pos = torch.randint(0, 32, (2, s), device=device)
            q.requires_grad_(), k.requires_grad_()
            got, want = cf(q, k, cos, sin, pos), f(q, k, cos, sin, pos)
            for a, b in zip(got, want):
                assert_close(a, b, tol, b.abs() + 1, f"{backend} forward")
            dy = [torch.randn_like(t) for t in got]
            for a, b, name in zip(torch.autograd.grad(got, (q, k), dy), torch.autograd.grad(want, (q, k), dy), "qk"):
                assert_close(a, b, tol, b.abs() + 1, f"{backend} d{name}")
            q2, k2 = q.detach().clone(), k.detach().clone()
            cg(q2, k2, cos, sin, pos)
            for a, b in zip((q2, k2), fusedaot.apply_rope(q.detach(), k.detach(), cos, sin, position_ids=pos)):
                assert_close(a, b, tol, b.abs() + 1, f"{backend} in place")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_cuda_graph_replay(interleaved):
    fusedaot.load()
    dtype = torch.bfloat16
    q, k = qk(2, 64, 32, 8, 128, dtype, "cuda")
    cos, sin = rope_tables(256, 128, dtype, "cuda", interleaved=interleaved)
    pos = torch.randint(0, 256, (2, 64), device="cuda")
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        fusedaot.apply_rope(q, k, cos, sin, position_ids=pos, interleaved=interleaved)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        qo, ko = fusedaot.apply_rope(q, k, cos, sin, position_ids=pos, interleaved=interleaved)
        gq, gk = torch.ops.fusedaot.apply_rope_backward(dq, dk, cos, sin, pos, interleaved, 128)
    for _ in range(2):
        for t in (q, k, dq, dk):
            t.copy_(torch.randn_like(t))
        pos.copy_(torch.randint(0, 256, (2, 64), device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        for got, x in ((qo, q), (ko, k)):
            want = ref64(lambda t, c, s: rope(t, c, s, pos, interleaved), x, cos, sin)
            mag = ref64(lambda t, c, s: rope(t, c, s, pos, interleaved, absolute=True), x, cos, sin)
            assert_close(got, want, TOLERANCES[dtype], mag)
        for got, dy in ((gq, dq), (gk, dk)):
            _, (want,) = ref64(lambda t: rope(t, cos.double(), sin.double(), pos, interleaved), dy, dy=dy)
            mag = rope_transposed_abs(dy.double(), cos.double(), sin.double(), pos, interleaved)
            assert_close(got, want, TOLERANCES[dtype], mag, "grad")
