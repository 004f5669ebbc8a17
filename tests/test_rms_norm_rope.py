"""fusedaot.rms_norm_rope and nn.FusedRMSNormRoPE: reference path, argument errors, the kernels
over head counts and dims, per-row and per-head norms, layouts, partial rotary, tables and
positions, strided rows, backward (dx, dweight), torch.library integration.

Every result is compared with a float64 evaluation of the model-code formulas on the same inputs:
    z = x * rsqrt(mean(x^2) + eps) * w   (over each head if per_head, else over the row)
    y = z*cos + rotate_half(z)*sin       (rotate-every-two when interleaved; tests/rope_oracle.py)
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
import fusedaot.nn
import fusedaot.reference
from conftest import DTYPES, assert_close, assert_written, make_tensor, nbytes_of, on_foreign_device, poison, ref64
from rope_oracle import rope, rope_tables, rope_transposed_abs

# |got - ref| <= out*|ref| + comp*mag + floor   (conftest.assert_close)
# out:   fp32 arithmetic, one rounding into the storage dtype: 2^-8 (bf16), 2^-11 (fp16), 2^-24 (fp32).
# comp:  the fp32 arithmetic before it, relative to `mag` (the sum of the absolute values of the
#        terms).  The longest chain of dependent fp32 additions is ~60: a head's or row's sum of
#        squares (16 values per thread, an 8-level tree, a term per chunk of heads for rows wider
#        than a tile) and dweight's (tokens per program, then a fixed-order sum over <= 528
#        programs in steps of 64 rows); 60 * 2^-24 = 3.6e-6, plus rsqrt (~2^-22) and the rotation's
#        products and sum.  1e-5 (~170 fp32 ulps) leaves a ~2x margin, as in test_rms_norm.py.
# floor: fp16 results below 2^-14 are subnormal; rounding there errs by up to 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=1e-5, floor=0.0),
    torch.float16: dict(out=2**-11, comp=1e-5, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=1e-5, floor=0.0),
}
EPS = 1e-6
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]


def heads(x, d):
    x3 = x.unsqueeze(0) if x.dim() == 2 else x
    return x3.reshape(*x3.shape[:2], x3.shape[-1] // d, d)


def oracle(x, w, cos, sin, d, eps, per_head, pos=None, interleaved=False, rotary_dim=None, absolute=False):
    xh = heads(x, d)
    dims = (-1,) if per_head else (-2, -1)
    z = xh * torch.rsqrt(xh.pow(2).mean(dims, keepdim=True) + eps) * (w if per_head else w.view(-1, d))
    return rope(z.abs() if absolute else z, cos, sin, pos, interleaved, rotary_dim, absolute).reshape(x.shape)


def grad_mags(x, w, dy, cos, sin, d, eps, per_head, pos, interleaved, rotary_dim):
    """Magnitude scales of dx = rstd*(w*dz - x_hat*mean(x_hat*w*dz)) and dw = sum dz*x_hat,
    dz = rope^T(dy)."""
    xh4 = heads(x.double(), d)
    dims = (-1,) if per_head else (-2, -1)
    rstd = torch.rsqrt(xh4.pow(2).mean(dims, keepdim=True) + eps)
    x_hat = (xh4 * rstd).abs()
    dz = rope_transposed_abs(heads(dy.double(), d), cos.double(), sin.double(), pos, interleaved, rotary_dim)
    wdz = dz * (w.double() if per_head else w.double().view(-1, d)).abs()
    mag_dx = rstd * (wdz + x_hat * (x_hat * wdz).mean(dims, keepdim=True))
    return mag_dx.reshape(x.shape), (dz * x_hat).reshape(-1, w.numel()).sum(0)


def inputs(b, s, h, d, dtype, device, per_head):
    x = make_tensor((b, s, h * d), dtype, device)
    w = make_tensor((d,) if per_head else (h * d,), dtype, device, scale=0.5, offset=1.0)
    return x, w


def check(x, w, cos, sin, d, per_head, pos=None, interleaved=False, rotary_dim=None, eps=EPS):
    x0 = x.clone()
    if x.is_cuda:
        poison(nbytes_of(x))
    y = fusedaot.rms_norm_rope(x, w, cos, sin, head_dim=d, eps=eps, per_head=per_head, position_ids=pos,
                               interleaved=interleaved, rotary_dim=rotary_dim)
    assert torch.equal(x, x0), "the input was written to"
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device and y.is_contiguous()
    assert_written(y)
    args = (d, eps, per_head, pos, interleaved, rotary_dim)
    want = ref64(oracle, x, w, cos, sin, *args)
    mag = ref64(oracle, x, w, cos, sin, *args, absolute=True)
    assert_close(y, want, TOLERANCES[x.dtype], mag)
    return y


def check_backward(x, w, cos, sin, d, per_head, pos=None, interleaved=False, rotary_dim=None):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = fusedaot.rms_norm_rope(x, w, cos, sin, head_dim=d, eps=EPS, per_head=per_head, position_ids=pos,
                               interleaved=interleaved, rotary_dim=rotary_dim)
    dy = make_tensor(y.shape, y.dtype, y.device)
    if x.is_cuda:
        poison(nbytes_of(x))
    y.backward(dy)
    args = (d, EPS, per_head, pos, interleaved, rotary_dim)
    _, (dx_ref, dw_ref, *_) = ref64(lambda a, b: oracle(a, b, cos.double(), sin.double(), *args), x, w, dy=dy)
    mag_dx, mag_dw = grad_mags(x.detach(), w.detach(), dy, cos, sin, *args[:1], EPS, per_head, pos, interleaved,
                               rotary_dim)
    assert x.grad.shape == x.shape and x.grad.dtype == x.dtype and w.grad.dtype == w.dtype
    assert_written(x.grad, w.grad)
    assert_close(x.grad, dx_ref, TOLERANCES[x.dtype], mag_dx, "dx")
    assert_close(w.grad, dw_ref, TOLERANCES[x.dtype], mag_dw, "dweight")
    return x.grad, w.grad


# --- CPU: the reference path -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("h,d,r", [(4, 64, 64), (3, 80, 32), (2, 8, 8)], ids=str)
def test_cpu_matches_float64(h, d, r, interleaved, per_head, dtype):
    x, w = inputs(2, 7, h, d, dtype, "cpu", per_head)
    cos, sin = rope_tables(12, r, dtype, "cpu", kind="random", interleaved=interleaved)
    pos = torch.tensor([[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5, 8, 9, 7]])
    check(x, w, cos, sin, d, per_head, pos, interleaved, r)
    check_backward(x, w, cos, sin, d, per_head, pos, interleaved, r)


def test_reference_is_norm_then_rope_in_float64():
    for per_head in (False, True):
        x, w = inputs(2, 5, 3, 64, torch.float64, "cpu", per_head)
        cos, sin = rope_tables(5, 64, torch.float64, "cpu")
        got = fusedaot.reference.rms_norm_rope(x, w, cos, sin, 64, EPS, per_head)
        torch.testing.assert_close(got, oracle(x, w, cos, sin, 64, EPS, per_head), rtol=1e-13, atol=1e-13)


# --- argument errors ------------------------------------------------------------------------

def _bad_calls(dev):
    bf = torch.bfloat16
    x, w = inputs(2, 5, 4, 64, bf, dev, False)
    cos, sin = rope_tables(8, 64, bf, dev)
    kw = dict(head_dim=64)
    return [
        ((x.int(), w, cos, sin), kw, TypeError, r"rms_norm_rope: x must be float16, bfloat16 or float32, got torch\.int32"),
        ((x, w.float(), cos, sin), kw, TypeError, r"rms_norm_rope: weight dtype torch\.float32 does not match x dtype "
                                                  r"torch\.bfloat16"),
        ((x, w, cos.float(), sin), kw, TypeError, r"rms_norm_rope: cos dtype torch\.float32 does not match x dtype"),
        ((x, w, cos, sin), dict(head_dim=48), ValueError, r"rms_norm_rope: x's last dimension 256 is not a multiple of "
                                                          r"head_dim 48"),
        ((x, w, cos, sin), dict(head_dim=0), ValueError, r"rms_norm_rope: head_dim must be a positive int, got 0"),
        ((x, w[:64], cos, sin), kw, ValueError, r"rms_norm_rope: weight has shape \(64,\) but per_head=False needs "
                                                r"\(heads \* head_dim,\) = \(256,\)"),
        ((x, w, cos, sin), dict(kw, per_head=True), ValueError, r"rms_norm_rope: weight has shape \(256,\) but "
                                                                r"per_head=True needs \(head_dim,\) = \(64,\)"),
        ((x[0, 0], w, cos, sin), kw, ValueError, r"rms_norm_rope: x must be \(batch, seq, heads \* head_dim\) or "
                                                 r"\(tokens, heads \* head_dim\), got shape \(256,\)"),
        ((x, w, cos, sin), dict(kw, eps=0.0), ValueError, r"rms_norm_rope: eps must be a positive finite number, got 0\.0"),
        ((x, w, cos, sin), dict(kw, eps=-1e-6), ValueError, r"rms_norm_rope: eps must be a positive finite number"),
        ((x, w, cos, sin), dict(kw, rotary_dim=33), ValueError, r"rms_norm_rope: rotary_dim must be a positive even number"),
        ((x, w, cos, sin), dict(kw, rotary_dim=96), ValueError, r"rms_norm_rope: rotary_dim 96 exceeds head_dim 64"),
        ((x, w, cos[:4], sin[:4]), kw, ValueError, r"rms_norm_rope: cos has 4 rows but the sequence has 5 positions"),
        ((x, w, cos, sin), dict(kw, position_ids=torch.zeros(3, dtype=torch.long, device=dev)), ValueError,
         r"rms_norm_rope: position_ids must be \(batch, seq\) = \(2, 5\) or \(seq,\) = \(5,\), got shape \(3,\)"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(14))
def test_bad_arguments(device, case):
    args, kw, exc, msg = _bad_calls(device)[case]
    with pytest.raises(exc, match=msg):
        fusedaot.rms_norm_rope(*args, **kw)


def test_unsupported_device_type_and_table_grad():
    x, w = inputs(1, 3, 2, 16, torch.float32, "cpu", True)
    cos, sin = rope_tables(4, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"rms_norm_rope: tensors on 'xla' are not supported"):
        fusedaot.rms_norm_rope(on_foreign_device(x), w, cos, sin, head_dim=16, per_head=True)
    with pytest.raises(ValueError, match=r"rms_norm_rope: cos and sin get no gradient"):
        fusedaot.rms_norm_rope(x, w, cos.requires_grad_(), sin, head_dim=16, per_head=True)
    with pytest.raises(IndexError, match=r"rms_norm_rope: position_ids must lie in \[0, 4\)"):
        fusedaot.rms_norm_rope(x, w, cos.detach(), sin, head_dim=16, per_head=True, position_ids=torch.tensor([0, 4, 1]))


# --- GPU forward ----------------------------------------------------------------------------

# (heads, head_dim, rotary_dim): rows of one tile (32 x 128; over the row, 17-32 heads of
# 65-128 take the 32-head tile), rows wider than a tile (40, 64 heads: two passes unless
# per_head), odd head dims, partial rotary, a head wider than the largest tile (512), one
# without 16-byte alignment (72 -> 36 pairs... and 72 values), tiny heads.
SHAPES = [(32, 128, 128), (64, 128, 128), (40, 128, 128), (8, 128, 128), (17, 128, 128), (24, 96, 64),
          (16, 128, 128), (33, 128, 128), (4, 64, 64), (6, 80, 80), (5, 96, 96), (24, 64, 64), (20, 256, 256),
          (24, 128, 64), (2, 256, 256), (4, 128, 64), (3, 96, 32), (2, 512, 512), (2, 512, 128), (2, 72, 72),
          (1, 2, 2)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("h,d,r", SHAPES, ids=[f"{h}x{d}r{r}" for h, d, r in SHAPES])
@pytest.mark.parametrize("seq", [13, 80], ids=["26tokens", "160tokens"])
def test_forward_shapes(seq, h, d, r, interleaved, per_head, dtype):
    # 26 tokens take the 16-bit forward's few-token tiles where it has them (up to 128 tokens,
    # aot/specs/rms_norm_rope.py), 160 the others
    x, w = inputs(2, seq, h, d, dtype, "cuda", per_head)
    cos, sin = rope_tables(seq, r, dtype, "cuda", interleaved=interleaved)
    check(x, w, cos, sin, d, per_head, None, interleaved, r if r < d else None)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
@pytest.mark.parametrize("tables", ["half", "random", "per-batch"])
@pytest.mark.parametrize("positions", ["none", "batch", "seq"])
def test_forward_tables_and_positions(positions, tables, per_head, dtype):
    b, s, h, d = 3, 11, 8, 128
    x, w = inputs(b, s, h, d, dtype, "cuda", per_head)
    cos, sin = rope_tables(64, d, dtype, "cuda", "random" if tables == "random" else "rope", tables == "half",
                           batch=b if tables == "per-batch" else 0)
    pos = {"none": None, "batch": torch.randint(0, 64, (b, s), device="cuda"),
           "seq": torch.randperm(64, device="cuda")[:s].int()}[positions]
    check(x, w, cos, sin, d, per_head, pos, False, d if tables == "half" else None)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
@pytest.mark.parametrize("shape", [(1, 1), (0, 5), (3, 0), (1, 1024)], ids=str)
def test_forward_token_counts(shape, per_head, dtype):
    x, w = inputs(*shape, 8, 64, dtype, "cuda", per_head)
    cos, sin = rope_tables(max(shape[1], 1), 64, dtype, "cuda")
    check(x, w, cos, sin, 64, per_head)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
@pytest.mark.parametrize("layout", ["fused-qkv", "misaligned", "tokens"])
def test_forward_strided(layout, per_head, dtype):
    b, s, h, d = 2, 17, 8, 128
    if layout == "fused-qkv":   # q of a (B, S, (Hq + 2Hk) * D) projection: rows 12*D apart
        x = make_tensor((b, s, (h + 4) * d), dtype, "cuda")[..., :h * d]
    elif layout == "misaligned":
        x = make_tensor((b * s * h * d + 1,), dtype, "cuda")[1:].view(b, s, h * d)
    else:                       # (T, H*D) rows with (T,) positions
        x = make_tensor((2 * s, h * d), dtype, "cuda")[::2]
    w = inputs(1, 1, h, d, dtype, "cuda", per_head)[1]
    cos, sin = rope_tables(64, d, dtype, "cuda")
    pos = torch.randperm(64, device="cuda")[:s]
    check(x, w, cos, sin, d, per_head, pos)


# 4098 tokens of 16-bit x run the CUDA C++ kernel (aot/specs/rms_norm_rope.py: more than 128
# tokens at head_dim 64, 128 and 256).  Per head (RMS_NORM_ROPE_CUDA) 33 heads leave each token's
# last chunk of heads one head; over the row (RMS_NORM_ROPE_CUDA_ROW) the head counts reach both
# forms (4 head groups a warp up to 64, 32 and 16 heads, 8 above) with a last warp part empty.
# Partial rotary passes columns through, and the layouts reach the strides, positions, half
# tables and per-batch tables.  (per_head, head_dim, rotary_dim, heads):
MANY_ROWS_CASES = [(True, 64, 64, 33), (True, 128, 128, 33), (True, 128, 64, 33), (True, 256, 256, 33),
                   (False, 64, 32, 33), (False, 64, 64, 65), (False, 128, 128, 31), (False, 128, 64, 33),
                   (False, 256, 256, 15), (False, 256, 128, 17)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("per_head,d,r,h", MANY_ROWS_CASES,
                         ids=[f"{'head' if p else 'row'}-d{d}-r{r}-h{h}" for p, d, r, h in MANY_ROWS_CASES])
@pytest.mark.parametrize("layout", ["plain", "fused-qkv", "positions-half-tables", "per-batch-tables"])
def test_forward_many_rows(layout, per_head, d, r, h, dtype):
    b, s = 2, 2049
    x, w = inputs(b, s, h, d, dtype, "cuda", per_head)
    if layout == "fused-qkv":
        x = make_tensor((b, s, (h + 4) * d), dtype, "cuda")[..., :h * d]
    pos = None
    if layout in ("fused-qkv", "positions-half-tables"):
        pos = torch.stack([torch.randperm(4096, device="cuda")[:s] for _ in range(b)])
    cos, sin = rope_tables(4096, r, dtype, "cuda", "random" if layout == "plain" else "rope",
                           layout == "positions-half-tables", batch=b if layout == "per-batch-tables" else 0)
    if layout == "per-batch-tables":
        cos, sin = cos[:, :s], sin[:, :s]
    half = layout == "positions-half-tables"   # half tables name their rotary_dim, as in apply_rope
    check(x, w, cos, sin, d, per_head, pos, False, r if r < d or half else None)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("eps", (1e-6, 1e-2))
def test_eps_reaches_the_kernel(eps):
    # mean(x^2) ~ 1e-4, so the two eps give results far apart
    x = make_tensor((2, 9, 4 * 64), torch.float32, "cuda", scale=1e-2)
    w = torch.ones(64, device="cuda")
    cos, sin = rope_tables(9, 64, torch.float32, "cuda")
    check(x, w, cos, sin, 64, True, eps=eps)


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    x, w = inputs(4, 64, 32, 128, torch.bfloat16, "cuda", False)
    cos, sin = rope_tables(64, 128, torch.bfloat16, "cuda")
    a = fusedaot.rms_norm_rope(x, w, cos, sin, head_dim=128)
    b = torch.ops.fusedaot.rms_norm_rope(x, w, cos, sin, None, 128, EPS, False, False, 128)
    assert torch.equal(a, b)


# --- GPU backward -----------------------------------------------------------------------------

# Over the row, a tile that holds the whole row takes the one-pass backward: head counts at and
# past each tile's bound (8, 16, 17, 32, 33, 64 heads of 128; 32, 33, 65 of 64; 9, 33 of 256),
# a narrower head in a wider tile (96); 65 heads of 128, partial rotary and heads wider than
# the largest tile take two passes.  Per head: a last chunk of heads part empty (6 heads).
BWD = [(32, 128, 128), (64, 128, 128), (8, 128, 128), (16, 128, 128), (17, 128, 128), (33, 128, 128),
       (65, 128, 128), (32, 64, 64), (33, 64, 64), (65, 64, 64), (9, 256, 256), (33, 256, 256), (3, 96, 96),
       (6, 80, 80), (4, 128, 64), (2, 512, 512), (2, 512, 128), (2, 72, 72), (1, 2, 2)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("h,d,r", BWD, ids=[f"{h}x{d}r{r}" for h, d, r in BWD])
@pytest.mark.parametrize("seq", [13, 80], ids=["26tokens", "160tokens"])
def test_backward(seq, h, d, r, interleaved, per_head, dtype):
    # as test_forward_shapes: few-token tiles at 26 tokens, the others at 160
    x, w = inputs(2, seq, h, d, dtype, "cuda", per_head)
    cos, sin = rope_tables(40, r, dtype, "cuda", kind="random", interleaved=interleaved)
    pos = torch.randint(0, 40, (2, seq), device="cuda")
    check_backward(x, w, cos, sin, d, per_head, pos, interleaved, r if r < d else None)


# One token: over the row (and per head with one head) a single program sees every token and
# writes dweight itself, from the one-pass tile (32 heads of 128, 32 of 64) or after the two-pass
# form's partial row (65 heads, partial rotary, heads wider than the largest tile).
ONE_TOKEN = [(32, 128, 128), (32, 64, 64), (65, 128, 128), (4, 128, 64), (2, 512, 512), (1, 128, 128), (1, 128, 64)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("h,d,r", ONE_TOKEN, ids=[f"{h}x{d}r{r}" for h, d, r in ONE_TOKEN])
def test_backward_one_token(h, d, r, interleaved, per_head, dtype):
    x, w = inputs(1, 1, h, d, dtype, "cuda", per_head)
    cos, sin = rope_tables(4, r, dtype, "cuda", kind="random", interleaved=interleaved)
    pos = torch.tensor([[3]], device="cuda")
    check_backward(x, w, cos, sin, d, per_head, pos, interleaved, r if r < d else None)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
@pytest.mark.parametrize("tokens", [0, 1, 1000, 5000])
def test_backward_token_counts(tokens, per_head):
    # 1000 and 5000 tokens: several tokens per program (16 programs an SM per head, 4 over the
    # row), and the dweight reduction over every program
    x, w = inputs(1, tokens, 8, 128, torch.bfloat16, "cuda", per_head)
    cos, sin = rope_tables(max(tokens, 1), 128, torch.bfloat16, "cuda")
    dx, dw = check_backward(x, w, cos, sin, 128, per_head)
    if tokens == 0:
        assert torch.equal(dw, torch.zeros_like(dw))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
def test_backward_deterministic(per_head):
    x, w = inputs(4, 512, 32, 128, torch.bfloat16, "cuda", per_head)
    cos, sin = rope_tables(512, 128, torch.bfloat16, "cuda")
    dy = torch.randn_like(x)
    args = (cos, sin, None, 128, EPS, per_head, False, 128)
    first = torch.ops.fusedaot.rms_norm_rope_backward(dy, x, w, *args)
    for _ in range(2):
        again = torch.ops.fusedaot.rms_norm_rope_backward(dy, x, w, *args)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


# --- torch.library integration ---------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
def test_opcheck(device, per_head):
    x, w = inputs(2, 5, 4, 64, torch.float32, device, per_head)
    cos, sin = rope_tables(8, 64, torch.float32, device, half=True, interleaved=True)
    pos = torch.tensor([[1, 0, 7, 3, 3], [2, 4, 6, 5, 0]], device=device)
    for p in (None, pos):
        for grad in (False, True):
            args = (x.clone().requires_grad_(grad), w.clone().requires_grad_(grad), cos, sin, p, 64, EPS, per_head,
                    True, 64)
            torch.library.opcheck(torch.ops.fusedaot.rms_norm_rope.default, args)
        torch.library.opcheck(torch.ops.fusedaot.rms_norm_rope_backward.default,
                              (torch.randn_like(x), x, w, cos, sin, p, 64, EPS, per_head, True, 64))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    tol = TOLERANCES[torch.float32]
    torch._dynamo.reset()
    module = fusedaot.nn.FusedRMSNormRoPE(4 * 64, 64, per_head=True, device=device)
    with torch.no_grad():
        module.weight.copy_(torch.rand(64) + 0.5)

    def f(x, cos, sin, pos):
        return module(x * 2.0, cos, sin, pos) + 1.0

    cf = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=True)
    cos, sin = rope_tables(32, 64, torch.float32, device)
    for s in (5, 17):
        x = make_tensor((2, s, 4 * 64), torch.float32, device).requires_grad_()
        pos = torch.randint(0, 32, (2, s), device=device)
        got, want = cf(x, cos, sin, pos), f(x, cos, sin, pos)
        assert_close(got, want, tol, want.abs() + 1, "forward")
        dy = torch.randn_like(got)
        for a, b, name in zip(torch.autograd.grad(got, (x, module.weight), dy),
                              torch.autograd.grad(want, (x, module.weight), dy), ("dx", "dw")):
            assert_close(a, b, tol, b.abs() + 1, name)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
def test_cuda_graph_replay(per_head):
    fusedaot.load()
    dtype = torch.bfloat16
    x, w = inputs(2, 64, 32, 128, dtype, "cuda", per_head)
    cos, sin = rope_tables(256, 128, dtype, "cuda")
    pos = torch.randint(0, 256, (2, 64), device="cuda")
    dy = torch.randn_like(x)
    call = (lambda: fusedaot.rms_norm_rope(x, w, cos, sin, head_dim=128, per_head=per_head, position_ids=pos),
            lambda: torch.ops.fusedaot.rms_norm_rope_backward(dy, x, w, cos, sin, pos, 128, EPS, per_head, False, 128))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in call:
            c()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = call[0]()
        dx, dw = call[1]()
    args = (128, EPS, per_head, pos, False, None)
    for _ in range(2):
        for t in (x, dy):
            t.copy_(torch.randn_like(t))
        pos.copy_(torch.randint(0, 256, (2, 64), device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(y, ref64(oracle, x, w, cos, sin, *args), TOLERANCES[dtype],
                     ref64(oracle, x, w, cos, sin, *args, absolute=True))
        _, (dx_ref, dw_ref) = ref64(lambda a, b: oracle(a, b, cos.double(), sin.double(), *args), x, w, dy=dy)
        mag_dx, mag_dw = grad_mags(x, w, dy, cos, sin, *args)
        assert_close(dx, dx_ref, TOLERANCES[dtype], mag_dx, "dx")
        assert_close(dw, dw_ref, TOLERANCES[dtype], mag_dw, "dweight")


# --- nn.FusedRMSNormRoPE ----------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_head", [False, True], ids=["row", "per_head"])
def test_module(device, per_head):
    m = fusedaot.nn.FusedRMSNormRoPE(4 * 64, 64, per_head=per_head, device=device, dtype=torch.bfloat16)
    assert m.weight.shape == ((64,) if per_head else (256,)) and bool((m.weight == 1).all())
    assert list(m.state_dict()) == ["weight"]
    with torch.no_grad():
        m.weight.copy_(torch.rand(m.weight.shape) + 0.5)
    x = make_tensor((2, 9, 256), torch.bfloat16, device)
    cos, sin = rope_tables(9, 64, torch.bfloat16, device)
    y = m(x, cos, sin)
    want = fusedaot.rms_norm_rope(x, m.weight.detach(), cos, sin, head_dim=64, per_head=per_head)
    assert torch.equal(y, want)
    y.float().sum().backward()
    assert m.weight.grad is not None and m.weight.grad.shape == m.weight.shape
    with pytest.raises(ValueError, match=r"FusedRMSNormRoPE: hidden_size 100 is not a multiple of head_dim 64"):
        fusedaot.nn.FusedRMSNormRoPE(100, 64)
