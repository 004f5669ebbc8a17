"""LayerNorm (+ optional ReLU) forward and backward (Triton).

    y     = act(x_hat * w + b),   x_hat = (x - mean) * rstd,   rstd = 1 / sqrt(var + eps)
    act   = identity, or relu (gradient passed where x_hat * w + b > 0)
    dyp   = dy * act'(x_hat * w + b),   g = dyp * w
    dx    = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    dw    = sum over rows of dyp * x_hat,   db = sum over rows of dyp

Rows may be strided (`stride_*` elements apart); the last dimension is contiguous.  All
arithmetic is fp32 whatever the storage dtype.  `flags` is a bit set:
    1  weight present      2  bias present
    4  weight and bias stored in fp32 (x is 16-bit)      8  ReLU after the affine
Absent parameters are never read (their loads are masked off), so their pointers may be null.

Variants are constexpr flags: ROWS rows per program, BLOCK_N >= N for the single-block form,
LOOPED for rows wider than one block (BLOCK_N is then the chunk width).  Rows too wide for one
program's registers take two passes over x in the forward; the backward of very wide rows is
split in two kernels, `_layer_norm_bwd_stats` (per-row sums) and `_layer_norm_bwd_dx` (a 2-D grid
over row groups x column blocks), so that dw and db are summed in registers there too.
"""
import triton
import triton.language as tl


@triton.jit
def _load_rows(ptr, cols, mask, EVICT: tl.constexpr):
    if EVICT:
        # keep the row in L2 for the looped form's next pass
        return tl.load(ptr + cols, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    return tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_param(p, cols, mask, other, p32):
    """A weight or bias chunk as fp32: p is typed like x; fp32 storage is read through a cast
    pointer (p32, a uniform runtime flag, costs one branch per chunk)."""
    if p32:
        v = tl.load(p.to(tl.pointer_type(tl.float32), bitcast=True) + cols, mask=mask, other=other)
    else:
        v = tl.load(p + cols, mask=mask, other=other).to(tl.float32)
    return v


@triton.jit
def _store_param(p, cols, v, mask, p32):
    """Store an fp32 dweight/dbias chunk into p, in the parameter's dtype."""
    if p32:
        tl.store(p.to(tl.pointer_type(tl.float32), bitcast=True) + cols, v, mask=mask)
    else:
        tl.store(p + cols, v.to(p.dtype.element_ty), mask=mask)


@triton.jit
def _params(w, b, cols, col_ok, flags):
    """(w, b) chunks as fp32: 1 and 0 where the parameter is absent."""
    p32 = (flags & 4) != 0
    wv = _load_param(w, cols, col_ok & ((flags & 1) != 0), 1.0, p32)
    bv = _load_param(b, cols, col_ok & ((flags & 2) != 0), 0.0, p32)
    return wv, bv


@triton.jit
def _looped_stats(x_rows, row_ok, N, eps, BLOCK_N: tl.constexpr):
    """(mean, rstd) of [ROWS] rows wider than one block, in one pass over x.

    Sums of d = x - K with K the mean of the row's first chunk: var = mean(d^2) - mean(d)^2.
    The chunk is a fraction f of the row, so |mean - K| <= std * sqrt(1/f - 1) (Cauchy-Schwarz):
    the subtraction loses at most a factor 1/f of fp32 precision relative to var (at
    N = 131072: 16 in 8192-wide chunks, 64 in 2048, 128 in 1024), never the catastrophic
    cancellation of the unshifted formula; for rows of i.i.d. values |mean - K| ~ std / sqrt(chunk)."""
    cols = tl.arange(0, BLOCK_N)
    mask = row_ok[:, None] & (cols[None, :] < N)
    x0 = _load_rows(x_rows, cols[None, :], mask, True)
    k = tl.sum(x0, axis=1) / tl.minimum(N, BLOCK_N)
    d = tl.where(mask, x0 - k[:, None], 0.0)
    s1 = d
    s2 = d * d
    for start in range(BLOCK_N, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (cols[None, :] < N)
        d = tl.where(mask, _load_rows(x_rows, cols[None, :], mask, True) - k[:, None], 0.0)
        s1 += d
        s2 += d * d
    m1 = tl.sum(s1, axis=1) / N
    var = tl.maximum(tl.sum(s2, axis=1) / N - m1 * m1, 0.0)
    return k + m1, tl.rsqrt(var + eps)


@triton.jit
def _block_stats(xv, mask, N, eps):
    """(x - mean masked to 0, rstd) of rows held whole in registers: exact two-pass variance."""
    mean = tl.sum(xv, axis=1) / N
    xc = tl.where(mask, xv - mean[:, None], 0.0)
    return xc, tl.rsqrt(tl.sum(xc * xc, axis=1) / N + eps)


@triton.jit
def _affine(x_hat, wv, bv, flags):
    y = x_hat * wv[None, :] + bv[None, :]
    return tl.where(((flags & 8) != 0) & (y < 0.0), 0.0, y)


@triton.jit
def _relu_grad(dyv, x_hat, wv, bv, flags):
    """dy where the output was not clamped by the ReLU (pre-activation > 0), else 0."""
    pre = x_hat * wv[None, :] + bv[None, :]
    return tl.where(((flags & 8) != 0) & (pre <= 0.0), 0.0, dyv)


@triton.jit
def _layer_norm_fwd(
    x,            # (M, N) input, rows stride_x elements apart
    y,            # (M, N) output, rows stride_y elements apart
    w,            # (N,) weight; read only with flags & 1
    b,            # (N,) bias; read only with flags & 2
    stride_x,     # row stride of x, in elements
    stride_y,     # row stride of y, in elements
    M,            # number of rows
    N,            # row width
    eps,          # added to the variance
    flags,        # HAS_W | HAS_B | PARAMS_FP32 | RELU
    BLOCK_N: tl.constexpr,   # columns per block (>= N unless LOOPED)
    ROWS: tl.constexpr,      # rows per program
    LOOPED: tl.constexpr,
    UNROLL: tl.constexpr,    # looped form: phase 2's chunks unrolled, their loads in flight at once (None: 1)
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    x_rows = x + rows.to(tl.int64)[:, None] * stride_x
    y_rows = y + rows.to(tl.int64)[:, None] * stride_y
    if LOOPED:
        # phase 1: mean and rstd in one pass; phase 2: re-read (from L2), normalise, store
        mean, rstd = _looped_stats(x_rows, row_ok, N, eps, BLOCK_N)
        for start in tl.range(0, N, BLOCK_N, loop_unroll_factor=UNROLL):
            cols = start + tl.arange(0, BLOCK_N)
            mask = row_ok[:, None] & (cols[None, :] < N)
            xv = _load_rows(x_rows, cols[None, :], mask, False)
            wv, bv = _params(w, b, cols, cols < N, flags)
            yv = _affine((xv - mean[:, None]) * rstd[:, None], wv, bv, flags)
            tl.store(y_rows + cols[None, :], yv.to(y.dtype.element_ty), mask=mask)
    else:
        # the whole row is one block held in registers
        cols = tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (cols[None, :] < N)
        xv = _load_rows(x_rows, cols[None, :], mask, False)
        wv, bv = _params(w, b, cols, cols < N, flags)
        xc, rstd = _block_stats(xv, mask, N, eps)
        yv = _affine(xc * rstd[:, None], wv, bv, flags)
        tl.store(y_rows + cols[None, :], yv.to(y.dtype.element_ty), mask=mask)


@triton.jit
def _store_dwb(part_row, dw, db, cols, dw_acc, db_acc, N, G, flags):
    """One program's sums of dyp * x_hat and of dyp over its rows: dw and db themselves when
    G == 1 (one program saw every row), else its row of the (G, 2N) fp32 partial sums
    ([dw | db] per row), which _layer_norm_dw adds up in a fixed order."""
    col_ok = cols < N
    has_w = (flags & 1) != 0
    has_b = (flags & 2) != 0
    if G == 1:
        p32 = (flags & 4) != 0
        _store_param(dw, cols, dw_acc, col_ok & has_w, p32)
        _store_param(db, cols, db_acc, col_ok & has_b, p32)
    else:
        tl.store(part_row + cols, dw_acc, mask=col_ok & has_w)
        tl.store(part_row + N + cols, db_acc, mask=col_ok & has_b)


@triton.jit
def _looped_grad_sums(x_rows, dy_rows, row_ok, mean, rstd, w, b, N, flags,
                      BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    """(mean(g), mean(g * x_hat)) of [ROWS] rows wider than one block, g = dyp * w."""
    a1 = tl.zeros([ROWS, BLOCK_N], tl.float32)
    a2 = tl.zeros([ROWS, BLOCK_N], tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (cols[None, :] < N)
        xv = _load_rows(x_rows, cols[None, :], mask, True)
        dyv = _load_rows(dy_rows, cols[None, :], mask, True)  # masked to 0: no contribution
        wv, bv = _params(w, b, cols, cols < N, flags)
        x_hat = (xv - mean[:, None]) * rstd[:, None]
        g = _relu_grad(dyv, x_hat, wv, bv, flags) * wv[None, :]
        a1 += g
        a2 += g * x_hat
    return tl.sum(a1, axis=1) / N, tl.sum(a2, axis=1) / N


@triton.jit
def _layer_norm_bwd(
    dy,           # (M, N) upstream gradient, rows stride_dy apart
    x,            # (M, N) forward input, rows stride_x apart
    w,            # (N,) weight; read only with flags & 1
    b,            # (N,) bias; read only with flags & 2 (the ReLU mask needs it)
    dx,           # (M, N) input gradient, rows stride_dx apart
    dwb_partial,  # (G, 2N) fp32: program g's sums [dw | db] over its rows (G == 1: scratch of the looped form)
    dw,           # (N,) weight gradient, written directly when G == 1
    db,           # (N,) bias gradient, written directly when G == 1
    stride_dy,    # row strides, in elements
    stride_x,
    stride_dx,
    M,            # number of rows
    N,            # row width
    eps,
    flags,        # HAS_W | HAS_B | PARAMS_FP32 | RELU
    G,            # number of programs; program g takes rows g*ROWS + k*G*ROWS
    BLOCK_N: tl.constexpr,
    ROWS: tl.constexpr,
    LOOPED: tl.constexpr,
):
    pid = tl.program_id(0)
    part_row = dwb_partial + pid.to(tl.int64) * 2 * N
    if LOOPED:
        # dw and db of a row this wide do not fit in registers: this program accumulates them
        # in its own row of dwb_partial (no other program touches it; without weight and bias
        # there is no partial buffer, and every access to it is masked off).
        has_w = (flags & 1) != 0
        has_b = (flags & 2) != 0
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            tl.store(part_row + cols, tl.zeros([BLOCK_N], tl.float32), mask=(cols < N) & has_w)
            tl.store(part_row + N + cols, tl.zeros([BLOCK_N], tl.float32), mask=(cols < N) & has_b)
        for first in range(pid * ROWS, M, G * ROWS):
            rows = first + tl.arange(0, ROWS)
            row_ok = rows < M
            r64 = rows.to(tl.int64)[:, None]
            # phase 1: mean and rstd (x); phase 2: mean(g), mean(g * x_hat) (x, dy from L2)
            mean, rstd = _looped_stats(x + r64 * stride_x, row_ok, N, eps, BLOCK_N)
            c1, c2 = _looped_grad_sums(x + r64 * stride_x, dy + r64 * stride_dy, row_ok, mean, rstd,
                                       w, b, N, flags, BLOCK_N, ROWS)
            # phase 3: dx, and dw, db into this program's partial row
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                col_ok = cols < N
                mask = row_ok[:, None] & col_ok[None, :]
                xv = _load_rows(x + r64 * stride_x, cols[None, :], mask, False)
                dyv = _load_rows(dy + r64 * stride_dy, cols[None, :], mask, False)
                wv, bv = _params(w, b, cols, col_ok, flags)
                x_hat = (xv - mean[:, None]) * rstd[:, None]
                dyp = _relu_grad(dyv, x_hat, wv, bv, flags)
                dxv = rstd[:, None] * (dyp * wv[None, :] - c1[:, None] - x_hat * c2[:, None])
                tl.store(dx + r64 * stride_dx + cols[None, :], dxv.to(dx.dtype.element_ty), mask=mask)
                acc = tl.load(part_row + cols, mask=col_ok & has_w, other=0.0)
                tl.store(part_row + cols, acc + tl.sum(dyp * x_hat, axis=0), mask=col_ok & has_w)
                acc = tl.load(part_row + N + cols, mask=col_ok & has_b, other=0.0)
                tl.store(part_row + N + cols, acc + tl.sum(dyp, axis=0), mask=col_ok & has_b)
        if G == 1:  # the partial row is dw and db themselves: copy it out in their dtype
            tl.debug_barrier()
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                _store_dwb(part_row, dw, db, cols, tl.load(part_row + cols, mask=(cols < N) & has_w, other=0.0),
                           tl.load(part_row + N + cols, mask=(cols < N) & has_b, other=0.0), N, G, flags)
    else:
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < N
        wv, bv = _params(w, b, cols, col_ok, flags)
        # [ROWS, BLOCK_N] accumulators, summed over rows once at the end: a per-step row sum
        # would move the tile through shared memory on every step
        dw_acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
        db_acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
        for first in range(pid * ROWS, M, G * ROWS):
            rows = first + tl.arange(0, ROWS)
            r64 = rows.to(tl.int64)[:, None]
            mask = (rows < M)[:, None] & col_ok[None, :]
            xv = _load_rows(x + r64 * stride_x, cols[None, :], mask, False)
            dyv = _load_rows(dy + r64 * stride_dy, cols[None, :], mask, False)
            xc, rstd = _block_stats(xv, mask, N, eps)
            x_hat = xc * rstd[:, None]
            dyp = _relu_grad(dyv, x_hat, wv, bv, flags)
            g = dyp * wv[None, :]
            c1 = tl.sum(g, axis=1) / N
            c2 = tl.sum(g * x_hat, axis=1) / N
            dxv = rstd[:, None] * (g - c1[:, None] - x_hat * c2[:, None])
            tl.store(dx + r64 * stride_dx + cols[None, :], dxv.to(dx.dtype.element_ty), mask=mask)
            dw_acc += dyp * x_hat
            db_acc += dyp
        _store_dwb(part_row, dw, db, cols, tl.sum(dw_acc, axis=0), tl.sum(db_acc, axis=0), N, G, flags)


@triton.jit
def _layer_norm_bwd_stats(
    dy,           # (M, N) upstream gradient, rows stride_dy apart
    x,            # (M, N) forward input, rows stride_x apart
    w,            # (N,) weight; read only with flags & 1
    b,            # (N,) bias; read only with flags & 2
    stats,        # (M, 4) fp32 out: mean, rstd, mean(g), mean(g * x_hat) per row
    stride_dy,    # row strides, in elements
    stride_x,
    M,            # number of rows
    N,            # row width
    eps,
    flags,        # HAS_W | HAS_B | PARAMS_FP32 | RELU
    BLOCK_N: tl.constexpr,   # chunk width
    ROWS: tl.constexpr,      # rows per program
):
    # The first kernel of the wide-row backward: the row sums dx needs, chunk by chunk.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    r64 = rows.to(tl.int64)[:, None]
    mean, rstd = _looped_stats(x + r64 * stride_x, row_ok, N, eps, BLOCK_N)
    c1, c2 = _looped_grad_sums(x + r64 * stride_x, dy + r64 * stride_dy, row_ok, mean, rstd,
                               w, b, N, flags, BLOCK_N, ROWS)
    out = stats + rows.to(tl.int64) * 4
    tl.store(out, mean, mask=row_ok)
    tl.store(out + 1, rstd, mask=row_ok)
    tl.store(out + 2, c1, mask=row_ok)
    tl.store(out + 3, c2, mask=row_ok)


@triton.jit
def _layer_norm_bwd_dx(
    dy,           # (M, N) upstream gradient, rows stride_dy apart
    x,            # (M, N) forward input, rows stride_x apart
    w,            # (N,) weight; read only with flags & 1
    b,            # (N,) bias; read only with flags & 2
    stats,        # (M, 4) fp32 from _layer_norm_bwd_stats
    dx,           # (M, N) input gradient, rows stride_dx apart
    dwb_partial,  # (G, 2N) fp32: row group g's sums [dw | db] (unused when G == 1)
    dw,           # (N,) weight gradient, written directly when G == 1
    db,           # (N,) bias gradient, written directly when G == 1
    stride_dy,    # row strides, in elements
    stride_x,
    stride_dx,
    M,            # number of rows
    N,            # row width
    flags,        # HAS_W | HAS_B | PARAMS_FP32 | RELU
    G,            # row groups (grid dimension 1); group g takes rows g*ROWS + k*G*ROWS
    BLOCK_N: tl.constexpr,   # columns per program (grid dimension 0 covers N)
    ROWS: tl.constexpr,      # rows per step
):
    # The second kernel of the wide-row backward: a program owns BLOCK_N columns of one row
    # group, so dw and db stay in registers however wide the row.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    group = tl.program_id(1)
    wv, bv = _params(w, b, cols, col_ok, flags)
    dw_acc = tl.zeros([ROWS, BLOCK_N], tl.float32)   # summed over rows once, at the end
    db_acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
    for first in range(group * ROWS, M, G * ROWS):
        rows = first + tl.arange(0, ROWS)
        row_ok = rows < M
        r64 = rows.to(tl.int64)[:, None]
        mask = row_ok[:, None] & col_ok[None, :]
        st = stats + rows.to(tl.int64) * 4
        mean = tl.load(st, mask=row_ok, other=0.0)
        rstd = tl.load(st + 1, mask=row_ok, other=0.0)
        c1 = tl.load(st + 2, mask=row_ok, other=0.0)
        c2 = tl.load(st + 3, mask=row_ok, other=0.0)
        xv = _load_rows(x + r64 * stride_x, cols[None, :], mask, False)
        dyv = _load_rows(dy + r64 * stride_dy, cols[None, :], mask, False)
        x_hat = (xv - mean[:, None]) * rstd[:, None]
        dyp = _relu_grad(dyv, x_hat, wv, bv, flags)
        dxv = rstd[:, None] * (dyp * wv[None, :] - c1[:, None] - x_hat * c2[:, None])
        tl.store(dx + r64 * stride_dx + cols[None, :], dxv.to(dx.dtype.element_ty), mask=mask)
        dw_acc += dyp * x_hat
        db_acc += dyp
    _store_dwb(dwb_partial + group.to(tl.int64) * 2 * N, dw, db, cols, tl.sum(dw_acc, axis=0),
               tl.sum(db_acc, axis=0), N, G, flags)


@triton.jit
def _layer_norm_dw(
    dwb_partial,  # (G, 2N) fp32 partial sums [dw | db] per row
    dw,           # (N,) out, in the weight's dtype; written with flags & 1
    db,           # (N,) out, in the bias's dtype; written with flags & 2
    G,            # number of partial rows
    N,            # row width
    flags,        # HAS_W | HAS_B
    BLOCK_N: tl.constexpr,   # columns per program
    BLOCK_G: tl.constexpr,   # partial rows added per step
):
    # Program (c, 0) sums column block c of the dw half, (c, 1) of the db half, over g in a
    # fixed order: deterministic.
    half = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = (cols < N) & ((flags & (1 + half)) != 0)
    acc = tl.zeros([BLOCK_G, BLOCK_N], tl.float32)
    src = dwb_partial + half * N
    for first in range(0, G, BLOCK_G):
        rows = first + tl.arange(0, BLOCK_G)
        mask = (rows < G)[:, None] & col_ok[None, :]
        acc += tl.load(src + rows.to(tl.int64)[:, None] * 2 * N + cols[None, :], mask=mask, other=0.0)
    total = tl.sum(acc, axis=0)
    if half == 0:
        tl.store(dw + cols, total.to(dw.dtype.element_ty), mask=col_ok)
    else:
        tl.store(db + cols, total.to(db.dtype.element_ty), mask=col_ok)
