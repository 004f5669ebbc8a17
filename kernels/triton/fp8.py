"""FP8 (e4m3fn) quantization with dynamic scales, and dequantization (Triton).

    amax  = max |x|                      over the whole tensor, or over each row
    scale = amax / 448                   fp32, raised to 2^-126 (a normal number); 1 where amax == 0
    q     = e4m3(clamp(x / scale, -448, 448))    round to nearest even; x / scale correctly rounded
    y     = q * scale                    (dequantization, rounded once into y's dtype)

The fp8 tensors are passed as bytes (uint8 pointers), so the same kernels build for every
library.  HW_CVT selects the conversion: the hardware's cvt.rn.satfinite (sm89 and newer)
or an exact integer emulation of it (sm80 and the compute_80 PTX library, whose
instruction set has no FP8 conversions).  Both round to nearest even and give the same bits.
Rows are `stride_*` elements apart; the last dimension is contiguous.
"""
import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)            # largest finite e4m3fn value
MIN_SCALE = tl.constexpr(2.0 ** -126)    # smallest normal fp32: x / scale stays finite for every x
NAN_BITS = tl.constexpr(0x7FC00000)      # fp32 quiet NaN


@triton.jit
def _scale_of(amax):
    """scale = max(amax / 448, 2^-126), or 1 where amax == 0; NaN/Inf amax propagate."""
    s = tl.math.div_rn(amax, tl.full(amax.shape, FP8_MAX, tl.float32))
    s = tl.where(s < MIN_SCALE, MIN_SCALE, s)
    return tl.where(amax == 0.0, 1.0, s)


@triton.jit
def _e4m3_bits(v):
    """The e4m3fn code of fp32 `v` (|v| <= 448 or NaN) as uint8, rounded to nearest even,
    without FP8 instructions.  Normal results (|v| >= 2^-6) keep 3 of fp32's 23 mantissa
    bits: add half an e4m3 ulp minus one plus the kept lsb (ties to even), truncate, and
    move the exponent from bias 127 to bias 7.  Subnormal results are |v| / 2^-9 rounded
    to an integer 0..8 (8 is the smallest normal code, 0x08, so rounding up is exact too)."""
    bits = v.to(tl.int32, bitcast=True)
    a = tl.abs(v)
    abits = a.to(tl.int32, bitcast=True)
    normal = ((abits + 0x7FFFF + ((abits >> 20) & 1)) >> 20) - (120 << 3)
    # a * 512 is exact; adding 2^23 rounds it to an integer (nearest even) in the low bits
    sub = (a * 512.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
    mag = tl.where(a >= 0.015625, normal, sub)
    mag = tl.where(a != a, 0x7F, mag)                      # NaN
    return ((bits >> 24) & 0x80 | mag).to(tl.uint8)


@triton.jit
def _e4m3_value(code):
    """fp32 value of e4m3fn byte `code`: the 7 magnitude bits placed at fp16's exponent and
    mantissa (<< 7) read as fp16 are the value * 2^-8, subnormals included; 0x7F is NaN."""
    c = code.to(tl.int32)
    mag = ((c & 0x7F) << 7).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 256.0
    mag = tl.where((c & 0x7F) == 0x7F, tl.full(c.shape, NAN_BITS, tl.int32).to(tl.float32, bitcast=True), mag)
    return tl.where((c & 0x80) != 0, -mag, mag)


@triton.jit
def _quantize(x, scale, HW_CVT: tl.constexpr):
    """e4m3fn bytes of x / scale, saturated to +-448 (NaN stays NaN)."""
    y = tl.math.div_rn(x, scale)
    y = tl.clamp(y, -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)
    if HW_CVT:
        return y.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    return _e4m3_bits(y)


@triton.jit
def _abs_bits(v):
    """The fp32 bits of |v| as int32 (sign cleared).  Non-negative floats order like their bits,
    and a NaN's bits exceed every number's: an integer max is a float max that keeps NaN, which
    the float max instructions drop."""
    return v.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _amax(bits, axis):
    """max |v| along axis, as fp32, from _abs_bits(v)."""
    return tl.max(bits, axis=axis).to(tl.float32, bitcast=True)


@triton.jit
def _fp8_amax(
    x,            # (M, N) input, rows stride_x elements apart
    amax,         # (1,) int32: the bits of the fp32 amax, zeroed by the caller
    stride_x,     # row stride of x, in elements
    M,            # rows
    N,            # row width
    ROWS: tl.constexpr,      # rows per program
    BLOCK_N: tl.constexpr,   # columns per program
):
    # |x| >= 0, whose fp32 bits order like int32s: an integer atomic max is the float max
    # (and order-independent, so the result is deterministic).
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    xv = tl.load(x + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    tl.atomic_max(amax, tl.max(tl.max(_abs_bits(xv), axis=1), axis=0), sem="relaxed")


@triton.jit
def _fp8_quantize_tensor(
    x,            # (M, N) input, rows stride_x elements apart
    q,            # (M, N) e4m3fn bytes, rows stride_q apart
    scale,        # (1,) fp32 output: the tensor's scale
    amax,         # (1,) int32: the fp32 bits of max |x| from _fp8_amax
    stride_x,     # row stride of x, in elements
    stride_q,     # row stride of q, in elements
    M,            # rows
    N,            # row width
    ROWS: tl.constexpr,      # rows per program
    BLOCK_N: tl.constexpr,   # columns per program
    HW_CVT: tl.constexpr,    # hardware FP8 conversion (sm89+) or emulation
):
    s = _scale_of(tl.load(amax).to(tl.float32, bitcast=True))
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        tl.store(scale, s)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    xv = tl.load(x + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    tl.store(q + rows.to(tl.int64)[:, None] * stride_q + cols[None, :],
             _quantize(xv.to(tl.float32), s, HW_CVT), mask=mask)


@triton.jit
def _fp8_quantize_row(
    x,            # (M, N) input, rows stride_x elements apart
    q,            # (M, N) e4m3fn bytes, rows stride_q apart
    scale,        # (M,) fp32 output: one scale per row
    stride_x,     # row stride of x, in elements
    stride_q,     # row stride of q, in elements
    M,            # rows
    N,            # row width
    ROWS: tl.constexpr,      # rows per program
    BLOCK_N: tl.constexpr,   # columns per block (>= N unless LOOPED)
    LOOPED: tl.constexpr,    # rows wider than one block: two passes over the row
    HW_CVT: tl.constexpr,    # hardware FP8 conversion (sm89+) or emulation
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    x_rows = x + rows.to(tl.int64)[:, None] * stride_x
    q_rows = q + rows.to(tl.int64)[:, None] * stride_q
    if LOOPED:
        # pass 1: the row's amax, chunk by chunk (keep x in L2 for pass 2)
        acc = tl.zeros([ROWS, BLOCK_N], tl.int32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = row_ok[:, None] & (cols < N)[None, :]
            xv = tl.load(x_rows + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_last")
            acc = tl.maximum(acc, _abs_bits(xv))
        s = _scale_of(_amax(acc, 1))
        tl.store(scale + rows, s, mask=row_ok)
        # pass 2: re-read, quantize, store
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = row_ok[:, None] & (cols < N)[None, :]
            xv = tl.load(x_rows + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
            tl.store(q_rows + cols[None, :], _quantize(xv.to(tl.float32), s[:, None], HW_CVT), mask=mask)
    else:
        # the whole row is one block held in registers: x is read once
        cols = tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (cols < N)[None, :]
        xv = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        s = _scale_of(_amax(_abs_bits(xv), 1))
        tl.store(scale + rows, s, mask=row_ok)
        tl.store(q_rows + cols[None, :], _quantize(xv, s[:, None], HW_CVT), mask=mask)


@triton.jit
def _fp8_dequantize(
    q,            # (M, N) e4m3fn bytes, rows stride_q apart
    scale,        # fp32 scales: scale[row * stride_s] (stride_s 0: one per tensor)
    y,            # (M, N) output, rows stride_y apart
    stride_q,     # row stride of q, in elements
    stride_y,     # row stride of y, in elements
    stride_s,     # 0 (per-tensor scale) or 1 (per-row scales)
    M,            # rows
    N,            # row width
    ROWS: tl.constexpr,      # rows per program
    BLOCK_N: tl.constexpr,   # columns per program
):
    # y = q * scale in fp32, rounded once into y's dtype
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols < N)[None, :]
    code = tl.load(q + rows.to(tl.int64)[:, None] * stride_q + cols[None, :], mask=mask, other=0)
    s = tl.load(scale + rows * stride_s, mask=row_ok, other=1.0)
    yv = _e4m3_value(code) * s[:, None]
    tl.store(y + rows.to(tl.int64)[:, None] * stride_y + cols[None, :], yv.to(y.dtype.element_ty), mask=mask)
