"""Rotary position embedding (RoPE), alone and after RMSNorm, forward and backward (Triton).

Both ops live in this one file because they share its helpers (and the build hashes a kernel's
own source file only).  The launchers are aot/specs/rope.py and aot/specs/rms_norm_rope.py.

Pairs.  A head of D values rotates its first R = 2*N values (rotary_dim) as N pairs; the
values [R, D) pass through unchanged.
    half layout (NeoX, Llama: rotate_half):  pair i = (x[i], x[i + N])
    interleaved layout (GPT-J):              pair i = (x[2i], x[2i + 1])
Tables.  A row of cos (sin alike) holds R values in the layout's order (the Hugging Face
convention: each pair's value twice), or N values (one per pair, `half_table`).  c1, c2 are
the table values at the pair's first and second element:
    forward:   o1 = x1*c1 - x2*s1,   o2 = x2*c2 + x1*s2     (x*cos + rotate_half(x)*sin)
    backward:  the transpose: the same with (s1, s2) -> (-s2, -s1), the rotation by -theta
A token's table row is position_ids[b, s] (s without positions) in a (P, R) table, or in
batch b's table of a (B, P, R) one.  A position outside [0, P) reads row 0 and makes the
token's rotated values NaN: nothing out of bounds is read, and the error is visible.
All arithmetic is fp32 whatever the storage dtype.
"""
import triton
import triton.language as tl


@triton.jit
def _load_pairs(rows, first, N, row_ok, INTERLEAVED: tl.constexpr, BLOCK: tl.constexpr):
    """(a, b) fp32 [ROWS, BLOCK]: the first and second elements of pairs first..first+BLOCK-1.
    rows: [ROWS, 1] pointers to element 0 of each row (or one scalar pointer); row_ok: mask."""
    if INTERLEAVED:
        # one contiguous load, split into even and odd elements in registers
        cols = 2 * first + tl.arange(0, 2 * BLOCK)[None, :]
        v = tl.load(rows + cols, mask=row_ok & (cols < 2 * N), other=0.0).to(tl.float32)
        a, b = tl.split(tl.reshape(v, (v.shape[0], BLOCK, 2)))
    else:
        i = first + tl.arange(0, BLOCK)[None, :]
        mask = row_ok & (i < N)
        a = tl.load(rows + i, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(rows + N + i, mask=mask, other=0.0).to(tl.float32)
    return a, b


@triton.jit
def _store_pairs(rows, a, b, first, N, row_ok, INTERLEAVED: tl.constexpr, BLOCK: tl.constexpr):
    """The inverse of _load_pairs: a, b rounded into the rows' dtype."""
    ty = rows.dtype.element_ty
    if INTERLEAVED:
        cols = 2 * first + tl.arange(0, 2 * BLOCK)[None, :]
        v = tl.reshape(tl.join(a, b), (a.shape[0], 2 * BLOCK))
        tl.store(rows + cols, v.to(ty), mask=row_ok & (cols < 2 * N))
    else:
        i = first + tl.arange(0, BLOCK)[None, :]
        mask = row_ok & (i < N)
        tl.store(rows + i, a.to(ty), mask=mask)
        tl.store(rows + N + i, b.to(ty), mask=mask)


@triton.jit
def _table_row(pos, b, s, stride_pb, P, has_pos):
    """(row, ok): the token's table row (clamped to 0 when outside [0, P)) and whether it was in range."""
    r = s
    if has_pos:
        r = tl.load(pos + b * stride_pb + s)
    ok = (r >= 0) & (r < P)
    return tl.where(ok, r, 0), ok


@triton.jit
def _table(row, first, N, ok, half_table, INTERLEAVED: tl.constexpr, BLOCK: tl.constexpr):
    """(t1, t2) fp32 [1, BLOCK]: one table row's values at pairs first..; NaN if not ok."""
    if half_table:
        i = first + tl.arange(0, BLOCK)[None, :]
        t1 = tl.load(row + i, mask=i < N, other=0.0).to(tl.float32)
        t2 = t1
    else:
        t1, t2 = _load_pairs(row, first, N, True, INTERLEAVED, BLOCK)
    poison = tl.where(ok, 0.0, float("nan"))
    return t1 + poison, t2 + poison


@triton.jit
def _tables(cos_row, sin_row, first, N, ok, half_table, backward, INTERLEAVED: tl.constexpr,
            BLOCK: tl.constexpr):
    """(c1, c2, s1, s2) for pairs first..; for the backward, (s1, s2) -> (-s2, -s1)."""
    c1, c2 = _table(cos_row, first, N, ok, half_table, INTERLEAVED, BLOCK)
    s1, s2 = _table(sin_row, first, N, ok, half_table, INTERLEAVED, BLOCK)
    if backward:
        t = s1
        s1 = -s2
        s2 = -t
    return c1, c2, s1, s2


@triton.jit
def _rope(
    q, k,            # (B, S, Hq, D) and (B, S, Hk, D) inputs, strided, last dimension contiguous
    cos, sin,        # tables: batch b's row r at b*stride_cb + r*stride_cs (cos and sin alike)
    pos,             # (B, S) or (S,) int64 positions; read only if has_pos
    q_out, k_out,    # outputs of q's and k's shapes (q and k themselves for the in-place form)
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_oqb, stride_oqs, stride_oqh,
    stride_okb, stride_oks, stride_okh,
    stride_cb, stride_cs,   # table strides; stride_cb is 0 for a table shared by the batch
    stride_pb,       # batch stride of pos (0 for (S,) positions)
    S, Hq, Hk,       # sequence length and head counts
    N,               # pairs per head (rotary_dim / 2)
    D,               # the pass-through columns [2N, D) are copied: D = head_dim, or 2N (none)
    P,               # table rows
    flags,           # 1: positions given (else row s), 2: half tables, 4: backward (rotate by -theta)
    BLOCK_N: tl.constexpr,       # pairs per step (>= N unless the head takes several steps)
    HEADS: tl.constexpr,         # heads per program
    INTERLEAVED: tl.constexpr,
):
    has_pos = (flags & 1) != 0
    half_table = (flags & 2) != 0
    backward = (flags & 4) != 0
    # program -> (token, chunk of HEADS heads); q's heads come first, then k's
    chunks = tl.cdiv(Hq + Hk, HEADS)
    pid = tl.program_id(0)
    t = pid // chunks
    b = (t // S).to(tl.int64)
    s = (t % S).to(tl.int64)
    h = (pid % chunks) * HEADS + tl.arange(0, HEADS)
    is_q = h < Hq
    x_rows = tl.where(is_q, q + b * stride_qb + s * stride_qs + h * stride_qh,
                      k + b * stride_kb + s * stride_ks + (h - Hq) * stride_kh)[:, None]
    o_rows = tl.where(is_q, q_out + b * stride_oqb + s * stride_oqs + h * stride_oqh,
                      k_out + b * stride_okb + s * stride_oks + (h - Hq) * stride_okh)[:, None]
    row_ok = (h < Hq + Hk)[:, None]
    r, ok = _table_row(pos, b, s, stride_pb, P, has_pos)
    cos_row = cos + b * stride_cb + r * stride_cs
    sin_row = sin + b * stride_cb + r * stride_cs
    # rotate the pairs (one step unless N > BLOCK_N)
    for first in range(0, N, BLOCK_N):
        c1, c2, s1, s2 = _tables(cos_row, sin_row, first, N, ok, half_table, backward, INTERLEAVED, BLOCK_N)
        x1, x2 = _load_pairs(x_rows, first, N, row_ok, INTERLEAVED, BLOCK_N)
        _store_pairs(o_rows, x1 * c1 - x2 * s1, x2 * c2 + x1 * s2, first, N, row_ok, INTERLEAVED, BLOCK_N)
    # copy the pass-through columns (partial rotary, out of place)
    for start in range(2 * N, D, 2 * BLOCK_N):
        cols = start + tl.arange(0, 2 * BLOCK_N)[None, :]
        mask = row_ok & (cols < D)
        tl.store(o_rows + cols, tl.load(x_rows + cols, mask=mask), mask=mask)


# ------------------------------------------------------------------------- RMSNorm + RoPE
#
# x (B, S, H*D): each token's row holds H heads of D values.  The norm's group is a head
# (per_head: QK-norm, weight (D,) shared by the heads) or the whole row (weight (H*D,)):
#     z = x * rstd * w,   rstd = 1 / sqrt(mean over the group of x^2 + eps),   y = rope(z)
# Backward: dz = rope^T(dy) (the rotation by -theta), then RMSNorm's backward with dz:
#     dx = rstd * (w*dz - x_hat * mean(x_hat * w*dz)),   dw = sum over tokens (and heads) of dz * x_hat
# Tiles are HEADS heads x BLOCK_D columns: pairs as two [HEADS, BLOCK_D/2] tiles, the
# pass-through columns [2*pairs, D) of partial rotary as masked [HEADS, BLOCK_D] tiles.
# Fast path: the group fits one tile (D <= BLOCK_D, and per_head or H <= HEADS; the backward
# also needs full rotary) and x (backward: dy and x) is read once; the backward keeps dw's
# terms in registers and writes them to the program's row of dw_partial at its end.
# Otherwise two passes over chunks of heads and columns: the sums, then the rest (its reads
# mostly from L1 or L2), the backward adding dw's terms into its row of dw_partial per token.


@triton.jit
def _pass_load(rows, start, D, row_ok, BLOCK_D: tl.constexpr):
    """Columns start..start+BLOCK_D-1 (< D) of the rows, fp32."""
    cols = start + tl.arange(0, BLOCK_D)[None, :]
    return tl.load(rows + cols, mask=row_ok & (cols < D), other=0.0).to(tl.float32)


@triton.jit
def _pass_store(rows, v, start, D, row_ok, BLOCK_D: tl.constexpr):
    cols = start + tl.arange(0, BLOCK_D)[None, :]
    tl.store(rows + cols, v.to(rows.dtype.element_ty), mask=row_ok & (cols < D))


@triton.jit
def _norm_mode(per_head, NORM: tl.constexpr):
    """Whether each head is normalised alone: fixed at compile time where the variant's calls
    all have one mode (each image then holds that mode's code only), else the run-time flag."""
    if NORM == 0:
        out = per_head != 0
    else:
        out = NORM == 1
    return out


@triton.jit
def _rstd(ss, per_head, n_group, eps):
    """[HEADS] 1/sqrt(mean(x^2) + eps) from each tile row's sum of squares: per head, or of
    the whole row (the tile rows' total) broadcast to every head."""
    return tl.rsqrt(_group_sum(ss, per_head) / n_group + eps)


@triton.jit
def _group_sum(v, per_head):
    """v (one value per head), or for a row normalised as a whole its total, for every head."""
    if per_head:
        out = v
    else:
        out = tl.sum(v, axis=0) + tl.zeros_like(v)
    return out


@triton.jit
def _fwd_sums(rows, row_ok, D, pairs, INTERLEAVED: tl.constexpr, BLOCK_D: tl.constexpr):
    """Each row's sum of squares over its D values, chunk by chunk."""
    HALF: tl.constexpr = BLOCK_D // 2
    ss = tl.zeros([rows.shape[0]], tl.float32)
    for first in range(0, pairs, HALF):
        x1, x2 = _load_pairs(rows, first, pairs, row_ok, INTERLEAVED, HALF)
        ss += tl.sum(x1 * x1 + x2 * x2, axis=1)
    for start in range(2 * pairs, D, BLOCK_D):
        xp = _pass_load(rows, start, D, row_ok, BLOCK_D)
        ss += tl.sum(xp * xp, axis=1)
    return ss


@triton.jit
def _fwd_pairs(x1, x2, rstd, w_rows, y_rows, first, pairs, row_ok, c1, c2, s1, s2,
               INTERLEAVED: tl.constexpr, HALF: tl.constexpr):
    """Normalise, rotate and store one chunk of pairs."""
    w1, w2 = _load_pairs(w_rows, first, pairs, row_ok, INTERLEAVED, HALF)
    z1 = x1 * rstd[:, None] * w1
    z2 = x2 * rstd[:, None] * w2
    _store_pairs(y_rows, z1 * c1 - z2 * s1, z2 * c2 + z1 * s2, first, pairs, row_ok, INTERLEAVED, HALF)


@triton.jit
def _fwd_pass(x_rows, w_rows, y_rows, rstd, D, pairs, row_ok, BLOCK_D: tl.constexpr):
    """Normalise and store the pass-through columns."""
    for start in range(2 * pairs, D, BLOCK_D):
        v = _pass_load(x_rows, start, D, row_ok, BLOCK_D) * rstd[:, None] * _pass_load(w_rows, start, D, row_ok, BLOCK_D)
        _pass_store(y_rows, v, start, D, row_ok, BLOCK_D)


@triton.jit
def _rms_norm_rope_fwd(
    x, w, cos, sin, pos, y,   # x, y: (B, S, H*D); w: (D,) or (H*D,); tables and pos as in _rope
    stride_xb, stride_xs,     # token strides of x (heads are D apart, columns contiguous)
    stride_yb, stride_ys,
    stride_wh,                # 0 for a per-head weight (D,), D for a (H*D,) weight
    stride_cb, stride_cs, stride_pb,
    S, H,
    N,                        # head_dim D
    pairs,                    # rotary_dim / 2
    P, eps, per_head,
    flags,                    # as in _rope: 1 positions given, 2 half tables
    BLOCK_D: tl.constexpr,    # columns per tile: a power of two, >= D on the fast path
    HEADS: tl.constexpr,      # heads per tile
    INTERLEAVED: tl.constexpr,
    NORM: tl.constexpr,       # 1 per head, 2 over the row (the variant's calls all have it), 0: per_head
):
    HALF: tl.constexpr = BLOCK_D // 2
    D = N
    per_head = _norm_mode(per_head, NORM)
    has_pos = (flags & 1) != 0
    half_table = (flags & 2) != 0
    # one token per program; with per_head, one chunk of HEADS heads of it (grid axis 1)
    t = tl.program_id(0)
    h_lo = tl.program_id(1) * HEADS
    h_hi = tl.where(per_head, tl.minimum(h_lo + HEADS, H), H)
    n_group = tl.where(per_head, D, H * D)
    b = (t // S).to(tl.int64)
    s = (t % S).to(tl.int64)
    x_row = x + b * stride_xb + s * stride_xs
    y_row = y + b * stride_yb + s * stride_ys
    r, ok = _table_row(pos, b, s, stride_pb, P, has_pos)
    cos_row = cos + b * stride_cb + r * stride_cs
    sin_row = sin + b * stride_cb + r * stride_cs
    if (D <= BLOCK_D) & (h_hi - h_lo <= HEADS):
        # fast path: the group is one tile, x is read once (the pass-through columns twice)
        h = h_lo + tl.arange(0, HEADS)
        row_ok = (h < h_hi)[:, None]
        x_rows = x_row + (h * D)[:, None]
        w_rows = w + (h * stride_wh)[:, None]
        x1, x2 = _load_pairs(x_rows, 0, pairs, row_ok, INTERLEAVED, HALF)
        ss = tl.sum(x1 * x1 + x2 * x2, axis=1)
        for start in range(2 * pairs, D, BLOCK_D):
            xp = _pass_load(x_rows, start, D, row_ok, BLOCK_D)
            ss += tl.sum(xp * xp, axis=1)
        rstd = _rstd(ss, per_head, n_group, eps)
        c1, c2, s1, s2 = _tables(cos_row, sin_row, 0, pairs, ok, half_table, False, INTERLEAVED, HALF)
        _fwd_pairs(x1, x2, rstd, w_rows, y_row + (h * D)[:, None], 0, pairs, row_ok, c1, c2, s1, s2,
                   INTERLEAVED, HALF)
        _fwd_pass(x_rows, w_rows, y_row + (h * D)[:, None], rstd, D, pairs, row_ok, BLOCK_D)
    else:
        # two passes over chunks of heads and columns: the sums, then normalise, rotate, store
        ss = tl.zeros([HEADS], tl.float32)
        for h0 in range(h_lo, h_hi, HEADS):
            h = h0 + tl.arange(0, HEADS)
            ss += _fwd_sums(x_row + (h * D)[:, None], (h < h_hi)[:, None], D, pairs, INTERLEAVED, BLOCK_D)
        rstd = _rstd(ss, per_head, n_group, eps)
        for h0 in range(h_lo, h_hi, HEADS):
            h = h0 + tl.arange(0, HEADS)
            row_ok = (h < h_hi)[:, None]
            x_rows = x_row + (h * D)[:, None]
            w_rows = w + (h * stride_wh)[:, None]
            for first in range(0, pairs, HALF):
                c1, c2, s1, s2 = _tables(cos_row, sin_row, first, pairs, ok, half_table, False,
                                         INTERLEAVED, HALF)
                x1, x2 = _load_pairs(x_rows, first, pairs, row_ok, INTERLEAVED, HALF)
                _fwd_pairs(x1, x2, rstd, w_rows, y_row + (h * D)[:, None], first, pairs, row_ok,
                           c1, c2, s1, s2, INTERLEAVED, HALF)
            _fwd_pass(x_rows, w_rows, y_row + (h * D)[:, None], rstd, D, pairs, row_ok, BLOCK_D)


@triton.jit
def _bwd_pairs(dy_rows, x_rows, w_rows, first, pairs, row_ok, c1, c2, s1, s2,
               INTERLEAVED: tl.constexpr, HALF: tl.constexpr):
    """(dz1, dz2, x1, x2, w1, w2) of one chunk of pairs; dz = rope^T(dy) (tables transposed)."""
    dy1, dy2 = _load_pairs(dy_rows, first, pairs, row_ok, INTERLEAVED, HALF)
    x1, x2 = _load_pairs(x_rows, first, pairs, row_ok, INTERLEAVED, HALF)
    w1, w2 = _load_pairs(w_rows, first, pairs, row_ok, INTERLEAVED, HALF)
    return dy1 * c1 - dy2 * s1, dy2 * c2 + dy1 * s2, x1, x2, w1, w2


@triton.jit
def _bwd_dx(dx_rows, dz1, dz2, x1, x2, w1, w2, rstd, c, first, pairs, row_ok,
            INTERLEAVED: tl.constexpr, HALF: tl.constexpr):
    """Store dx of one chunk of pairs; return its dz * x_hat (dw's terms)."""
    xh1 = x1 * rstd[:, None]
    xh2 = x2 * rstd[:, None]
    _store_pairs(dx_rows, rstd[:, None] * (w1 * dz1 - xh1 * c[:, None]), rstd[:, None] * (w2 * dz2 - xh2 * c[:, None]),
                 first, pairs, row_ok, INTERLEAVED, HALF)
    return dz1 * xh1, dz2 * xh2


@triton.jit
def _dw_rows(part, h, D, row_ok, g, per_head):
    """(rows, mask, g) for adding dw's terms g [HEADS, *] into the partial row: per head-row at
    h*D, or (per_head: one weight for every head) their sum over the heads, added by row 0 only."""
    if per_head:
        rows = part + (h * 0)[:, None]
        mask = (tl.arange(0, g.shape[0]) == 0)[:, None]
        g = tl.sum(g, axis=0)[None, :] + tl.zeros_like(g)
    else:
        rows = part + (h * D)[:, None]
        mask = row_ok
    return rows, mask, g


@triton.jit
def _bwd_pass_sums(dy_rows, x_rows, w_rows, D, pairs, row_ok, BLOCK_D: tl.constexpr):
    """Per row (sum x^2, sum x*w*dy) over the pass-through columns (dz = dy there)."""
    ss = tl.zeros([row_ok.shape[0]], tl.float32)
    sx = tl.zeros([row_ok.shape[0]], tl.float32)
    for start in range(2 * pairs, D, BLOCK_D):
        xp = _pass_load(x_rows, start, D, row_ok, BLOCK_D)
        ss += tl.sum(xp * xp, axis=1)
        sx += tl.sum(xp * _pass_load(w_rows, start, D, row_ok, BLOCK_D) * _pass_load(dy_rows, start, D, row_ok, BLOCK_D),
                     axis=1)
    return ss, sx


@triton.jit
def _bwd_pass(dy_rows, x_rows, w_rows, dx_rows, part, h, rstd, c, D, pairs, row_ok, per_head,
              BLOCK_D: tl.constexpr):
    """dx of the pass-through columns; their dw's terms added into the partial row."""
    for start in range(2 * pairs, D, BLOCK_D):
        xh = _pass_load(x_rows, start, D, row_ok, BLOCK_D) * rstd[:, None]
        dyp = _pass_load(dy_rows, start, D, row_ok, BLOCK_D)
        wp = _pass_load(w_rows, start, D, row_ok, BLOCK_D)
        _pass_store(dx_rows, rstd[:, None] * (wp * dyp - xh * c[:, None]), start, D, row_ok, BLOCK_D)
        rows, mask, g = _dw_rows(part, h, D, row_ok, dyp * xh, per_head)
        tl.debug_barrier()   # the previous token's additions are complete
        _pass_store(rows, _pass_load(rows, start, D, mask, BLOCK_D) + g, start, D, mask, BLOCK_D)


@triton.jit
def _token_tables(t, cos, sin, pos, stride_cb, stride_cs, stride_pb, S, P, has_pos):
    """Token t = b * S + s: (b, s), its rows of the cos and sin tables, and whether its position
    is inside them."""
    b = (t // S).to(tl.int64)
    s = (t % S).to(tl.int64)
    r, ok = _table_row(pos, b, s, stride_pb, P, has_pos)
    return b, s, cos + b * stride_cb + r * stride_cs, sin + b * stride_cb + r * stride_cs, ok


@triton.jit
def _bwd_token(t, dy, x, dx, cos, sin, pos, stride_dyb, stride_dys, stride_xb, stride_xs, stride_dxb, stride_dxs,
               stride_cb, stride_cs, stride_pb, S, P, pairs, has_pos, half_table,
               INTERLEAVED: tl.constexpr, HALF: tl.constexpr):
    """Token t's rows of dy, x and dx, and its transposed table values (one-pass backward)."""
    b, s, cos_row, sin_row, ok = _token_tables(t, cos, sin, pos, stride_cb, stride_cs, stride_pb, S, P, has_pos)
    c1, c2, s1, s2 = _tables(cos_row, sin_row, 0, pairs, ok, half_table, True, INTERLEAVED, HALF)
    return (dy + b * stride_dyb + s * stride_dys, x + b * stride_xb + s * stride_xs,
            dx + b * stride_dxb + s * stride_dxs, c1, c2, s1, s2)


@triton.jit
def _bwd_tile(dy_row, x_row, dx_row, w, h, c1, c2, s1, s2, stride_wh, D, H, pairs, n_group, eps, per_head,
              INTERLEAVED: tl.constexpr, HALF: tl.constexpr):
    """Heads h of one token, whole norm groups read once: store dx, return dw's terms."""
    row_ok = (h < H)[:, None]
    dz1, dz2, x1, x2, w1, w2 = _bwd_pairs(dy_row + (h * D)[:, None], x_row + (h * D)[:, None],
                                          w + (h * stride_wh)[:, None], 0, pairs, row_ok, c1, c2, s1, s2,
                                          INTERLEAVED, HALF)
    rstd = _rstd(tl.sum(x1 * x1 + x2 * x2, axis=1), per_head, n_group, eps)
    c = rstd * _group_sum(tl.sum(x1 * w1 * dz1 + x2 * w2 * dz2, axis=1), per_head) / n_group
    return _bwd_dx(dx_row + (h * D)[:, None], dz1, dz2, x1, x2, w1, w2, rstd, c, 0, pairs, row_ok, INTERLEAVED, HALF)


@triton.jit
def _rms_norm_rope_bwd(
    dy, x, w, cos, sin, pos, dx,   # as _rms_norm_rope_fwd; dy, dx: (B, S, H*D)
    dw_partial,               # (G*C, W) fp32: program (g, c)'s sum of dz * x_hat, row g*C + c
    dw,                       # (W,) in the weight's dtype: written instead where G * C == 1
    stride_dyb, stride_dys, stride_xb, stride_xs, stride_dxb, stride_dxs, stride_wh,
    stride_cb, stride_cs, stride_pb,
    M, S, H, N, pairs, P, eps, per_head,
    flags,                    # as in _rope: 1 positions given, 2 half tables
    G,                        # programs along the tokens: program (g, c) takes tokens g, g + G, ...
    C,                        # per_head: programs along the heads, (g, c) takes chunks c, c + C, ...
                              # of HEADS heads (few tokens, many heads); over the row 1
    W,                        # weight length: D (per_head) or H*D
    BLOCK_D: tl.constexpr, HEADS: tl.constexpr, INTERLEAVED: tl.constexpr,
    STAGES: tl.constexpr,     # software pipelining depth of the one-pass loop over the row
    ONE_PASS: tl.constexpr,   # the variant's calls have whole groups in the tile and full rotary
                              # (D <= BLOCK_D, 2 * pairs == D, per_head or H <= HEADS: the spec's
                              # conditions); otherwise the two-pass form for any group
    NORM: tl.constexpr,       # as in _rms_norm_rope_fwd
):
    HALF: tl.constexpr = BLOCK_D // 2
    D = N
    per_head = _norm_mode(per_head, NORM)
    has_pos = (flags & 1) != 0
    half_table = (flags & 2) != 0
    pid = tl.program_id(0)
    cid = tl.program_id(1)
    part = dw_partial + (pid.to(tl.int64) * C + cid) * W
    n_group = tl.where(per_head, D, H * D)   # values a norm is over
    if ONE_PASS:
        # one pass: a tile of heads holds whole groups (per head, or the whole row), so dy and
        # x are read once; dw's terms stay in registers until the program's last token
        acc1 = tl.zeros([HEADS, HALF], tl.float32)
        acc2 = tl.zeros([HEADS, HALF], tl.float32)
        if per_head:
            # a token's chunks of heads in turn, its table row read once for all of them
            for t in range(pid, M, G):
                dy_row, x_row, dx_row, c1, c2, s1, s2 = _bwd_token(
                    t, dy, x, dx, cos, sin, pos, stride_dyb, stride_dys, stride_xb, stride_xs, stride_dxb, stride_dxs,
                    stride_cb, stride_cs, stride_pb, S, P, pairs, has_pos, half_table, INTERLEAVED, HALF)
                for h0 in range(cid * HEADS, H, C * HEADS):
                    g1, g2 = _bwd_tile(dy_row, x_row, dx_row, w, h0 + tl.arange(0, HEADS), c1, c2, s1, s2, stride_wh,
                                       D, H, pairs, n_group, eps, per_head, INTERLEAVED, HALF)
                    acc1 += g1
                    acc2 += g2
            # one weight for every head: the heads' sum (dw itself where one program saw them all)
            sum1, sum2 = tl.sum(acc1, axis=0)[None, :], tl.sum(acc2, axis=0)[None, :]
            if G * C == 1:
                _store_pairs(dw, sum1, sum2, 0, pairs, True, INTERLEAVED, HALF)
            else:
                _store_pairs(part, sum1, sum2, 0, pairs, True, INTERLEAVED, HALF)
        else:
            # the row is one tile; the token loop is software-pipelined (STAGES)
            h = tl.arange(0, HEADS)
            for t in tl.range(pid, M, G, num_stages=STAGES):
                dy_row, x_row, dx_row, c1, c2, s1, s2 = _bwd_token(
                    t, dy, x, dx, cos, sin, pos, stride_dyb, stride_dys, stride_xb, stride_xs, stride_dxb, stride_dxs,
                    stride_cb, stride_cs, stride_pb, S, P, pairs, has_pos, half_table, INTERLEAVED, HALF)
                g1, g2 = _bwd_tile(dy_row, x_row, dx_row, w, h, c1, c2, s1, s2, stride_wh, D, H, pairs, n_group,
                                   eps, per_head, INTERLEAVED, HALF)
                acc1 += g1
                acc2 += g2
            if G * C == 1:  # one program saw every token: its sums are dw itself
                _store_pairs(dw + (h * D)[:, None], acc1, acc2, 0, pairs, (h < H)[:, None], INTERLEAVED, HALF)
            else:
                _store_pairs(part + (h * D)[:, None], acc1, acc2, 0, pairs, (h < H)[:, None], INTERLEAVED, HALF)
    else:
        _bwd_two_pass(dy, x, w, cos, sin, pos, dx, part, dw, stride_dyb, stride_dys, stride_xb, stride_xs, stride_dxb,
                      stride_dxs, stride_wh, stride_cb, stride_cs, stride_pb, M, S, H, D, pairs, P, eps, per_head,
                      has_pos, half_table, n_group, pid, G, cid, C, W, BLOCK_D, HEADS, INTERLEAVED)


@triton.jit
def _bwd_two_pass(dy, x, w, cos, sin, pos, dx, part, dw, stride_dyb, stride_dys, stride_xb, stride_xs, stride_dxb,
                  stride_dxs, stride_wh, stride_cb, stride_cs, stride_pb, M, S, H, D, pairs, P, eps, per_head,
                  has_pos, half_table, n_group, pid, G, cid, C, W,
                  BLOCK_D: tl.constexpr, HEADS: tl.constexpr, INTERLEAVED: tl.constexpr):
    """The backward of any group and rotary_dim: per token, the group's sums over chunks of
    heads and columns, then dx (its reads mostly from L1); dw's terms added into the program's
    partial row in memory, copied into dw at the end where one program saw every token."""
    HALF: tl.constexpr = BLOCK_D // 2
    group = tl.where(per_head, HEADS, H)   # heads normalised together (per_head: a chunk)
    for c0 in range(0, W, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D)
        tl.store(part + cols, tl.zeros([BLOCK_D], tl.float32), mask=cols < W)
    for t in range(pid, M, G):
        b, s, cos_row, sin_row, ok = _token_tables(t, cos, sin, pos, stride_cb, stride_cs, stride_pb, S, P, has_pos)
        dy_row = dy + b * stride_dyb + s * stride_dys
        x_row = x + b * stride_xb + s * stride_xs
        dx_row = dx + b * stride_dxb + s * stride_dxs
        for g0 in range(cid * group, H, C * group):
            # pass 1: the group's two sums
            ss = tl.zeros([HEADS], tl.float32)
            sx = tl.zeros([HEADS], tl.float32)
            for h0 in range(g0, tl.minimum(g0 + group, H), HEADS):
                h = h0 + tl.arange(0, HEADS)
                row_ok = (h < H)[:, None]
                dy_rows = dy_row + (h * D)[:, None]
                x_rows = x_row + (h * D)[:, None]
                w_rows = w + (h * stride_wh)[:, None]
                for first in range(0, pairs, HALF):
                    c1, c2, s1, s2 = _tables(cos_row, sin_row, first, pairs, ok, half_table, True, INTERLEAVED, HALF)
                    dz1, dz2, x1, x2, w1, w2 = _bwd_pairs(dy_rows, x_rows, w_rows, first, pairs, row_ok,
                                                          c1, c2, s1, s2, INTERLEAVED, HALF)
                    ss += tl.sum(x1 * x1 + x2 * x2, axis=1)
                    sx += tl.sum(x1 * w1 * dz1 + x2 * w2 * dz2, axis=1)
                ssp, sxp = _bwd_pass_sums(dy_rows, x_rows, w_rows, D, pairs, row_ok, BLOCK_D)
                ss += ssp
                sx += sxp
            rstd = _rstd(ss, per_head, n_group, eps)
            c = rstd * _group_sum(sx, per_head) / n_group
            # pass 2 (its reads mostly from L1): dx, and dw's terms added into the partial row
            for h0 in range(g0, tl.minimum(g0 + group, H), HEADS):
                h = h0 + tl.arange(0, HEADS)
                row_ok = (h < H)[:, None]
                dy_rows = dy_row + (h * D)[:, None]
                x_rows = x_row + (h * D)[:, None]
                w_rows = w + (h * stride_wh)[:, None]
                for first in range(0, pairs, HALF):
                    c1, c2, s1, s2 = _tables(cos_row, sin_row, first, pairs, ok, half_table, True, INTERLEAVED, HALF)
                    dz1, dz2, x1, x2, w1, w2 = _bwd_pairs(dy_rows, x_rows, w_rows, first, pairs, row_ok,
                                                          c1, c2, s1, s2, INTERLEAVED, HALF)
                    g1, g2 = _bwd_dx(dx_row + (h * D)[:, None], dz1, dz2, x1, x2, w1, w2, rstd, c, first, pairs,
                                     row_ok, INTERLEAVED, HALF)
                    rows, mask, g1 = _dw_rows(part, h, D, row_ok, g1, per_head)
                    _, _, g2 = _dw_rows(part, h, D, row_ok, g2, per_head)
                    tl.debug_barrier()   # every earlier addition into the partial row is complete
                    p1, p2 = _load_pairs(rows, first, pairs, mask, INTERLEAVED, HALF)
                    _store_pairs(rows, p1 + g1, p2 + g2, first, pairs, mask, INTERLEAVED, HALF)
                _bwd_pass(dy_rows, x_rows, w_rows, dx_row + (h * D)[:, None], part, h, rstd, c, D, pairs,
                          row_ok, per_head, BLOCK_D)
    if G * C == 1:
        tl.debug_barrier()   # every addition into the partial row is complete
        for c0 in range(0, W, BLOCK_D):
            cols = c0 + tl.arange(0, BLOCK_D)
            tl.store(dw + cols, tl.load(part + cols, mask=cols < W).to(dw.dtype.element_ty), mask=cols < W)


@triton.jit
def _rms_norm_rope_dw(
    dw_partial,   # (G, W) fp32 partial sums from _rms_norm_rope_bwd
    dw,           # (W,) output, in the weight's dtype
    G, W,
    BLOCK_N: tl.constexpr,   # columns per program
    BLOCK_G: tl.constexpr,   # partial rows added per step
):
    # dw[n] = sum over g of dw_partial[g, n], in a fixed order: deterministic.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < W
    acc = tl.zeros([BLOCK_G, BLOCK_N], tl.float32)
    for first in range(0, G, BLOCK_G):
        rows = first + tl.arange(0, BLOCK_G)
        mask = (rows < G)[:, None] & col_ok[None, :]
        acc += tl.load(dw_partial + rows.to(tl.int64)[:, None] * W + cols[None, :], mask=mask, other=0.0)
    tl.store(dw + cols, tl.sum(acc, axis=0).to(dw.dtype.element_ty), mask=col_ok)
