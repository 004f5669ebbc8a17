// rms_norm_rope's forward (RMSNorm per head or over the row, then RoPE) for 16-bit x, the
// half-split layout, head_dim 64, 128 or 256; kernels/triton/rope.py has the math, the table
// conventions and every other case (interleaved, fp32, other head sizes, unaligned rows, few
// tokens).
//
//     z = x * rstd * w,  rstd = 1 / sqrt(mean over the head or the row (x^2) + eps)
//     pair i = (z[i], z[i + R]), i < R = rotary_dim / 2:
//     y[i] = z[i] * c[i] - z[i + R] * s[i],   y[i + R] = z[i + R] * c[i + R] + z[i] * s[i + R]
//     y[j] = z[j] for the pass-through columns j >= 2R
//
// Layout.  A head's D values lie across D / 8 lanes, 8 contiguous values (16 bytes) a lane, so a
// warp holds 32 / (D / 8) heads at once and PASSES such groups, HPW heads in all.  Per head a
// block is one warp and takes one token's chunk of HPW heads (block b: token b / chunks); a
// head's sum of squares is a butterfly over its lanes.  Over the row a block of ceil(H / HPW)
// warps takes one token and the row's sum of squares is a block sum.  A value's rotation
// partner (R columns away) is in the lane R / 8 away, whose 16 bytes arrive by shuffle; the table
// row is loaded once for the warp.  All of a lane's loads of x and the table are in flight
// before the first sum (per head the weight's too: one row of it serves every head).
//
// Aligned calls only (the spec's alignment test: pointers 16-byte aligned; strides, D and R
// multiples of 8 elements), so a lane's 16 bytes are all rotated or all passed through.  A
// position outside [0, P) reads table row 0 and makes the token's rotated values NaN, as the
// Triton kernel does.
#include "rope.cuh"

// ROW: the norm is over the token's whole row (weight (H * D,), stride_wh = D) and a block of
// H / HPW warps (rounded up) holds the token's heads; otherwise over each head (weight (D,)).
template <typename T, int D, bool ROW, int PASSES>
__device__ __forceinline__ void rms_norm_rope_fwd_tile(
    const T* x, const T* w, const T* cos, const T* sin, const i64* pos, T* y,
    i64 stride_xb, i64 stride_xs, i64 stride_yb, i64 stride_ys, i64 stride_wh, i64 stride_cb, i64 stride_cs,
    i64 stride_pb, int S, int H, int pairs, int P, float eps, int flags, float* shm) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int LPH = D / VEC;                // lanes a head
  constexpr int HPP = 32 / LPH;               // heads a warp holds in one pass
  constexpr int HPW = HPP * PASSES;           // heads of a warp's item
  static_assert(VEC == 8, "16-bit values only");
  static_assert(LPH >= 1 && LPH <= 32 && (LPH & (LPH - 1)) == 0, "a head spans a power of two of lanes");

  const int lane = threadIdx.x & 31;
  const int col = (lane % LPH) * VEC;         // this lane's first column in its head
  const int chunks = ROW ? 1 : (H + HPW - 1) / HPW;
  const i64 t = blockIdx.x / chunks, b = t / S, s = t % S;
  const int h0 = (ROW ? (int)(threadIdx.x >> 5) : (int)(blockIdx.x % chunks)) * HPW + lane / LPH;
  const T* xt = x + b * stride_xb + s * stride_xs;
  T* yt = y + b * stride_yb + s * stride_ys;

  bool in_range;
  const i64 r = rope_table_row(pos, b, s, stride_pb, P, flags, in_range);
  const RopeLane l(lane, col, pairs, flags);

  // phase 1: every load in flight (over the row, the weight's rows come in phase 2: holding a
  // row of them for every head group would halve the warps an SM holds)
  Raw<T, VEC> xv[PASSES], wv, wp, cv, sv;
#pragma unroll
  for (int p = 0; p < PASSES; ++p)
    if (h0 + p * HPP < H) xv[p].load(xt + (i64)(h0 + p * HPP) * D + col);
  if constexpr (!ROW) {
    wv.load(w + col);
    wp.load(w + l.pcol);
  }
  if (l.rotated) {
    cv.load(cos + b * stride_cb + r * stride_cs + l.ccol);
    sv.load(sin + b * stride_cb + r * stride_cs + l.scol);
  }
  float c[VEC], sn[VEC];
  rope_coeffs(cv, sv, l, in_range, flags, c, sn);
  // y = rstd * (x * (w c) + x_partner * (w_partner sn)): per head the weight is the same for
  // every head group, so its products with the table are taken once a lane
  if constexpr (!ROW) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      c[i] *= wv[i];
      sn[i] *= wp[i];
    }
  }

  // over the row: the row's sum of squares over the block, before any head is finished
  float row_rstd = 0.0f;
  if constexpr (ROW) {
    float ss[1] = {0.0f};
#pragma unroll
    for (int p = 0; p < PASSES; ++p)
      if (h0 + p * HPP < H) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) ss[0] += xv[p][i] * xv[p][i];
      }
    block_sums<1>(ss, shm);
    row_rstd = rsqrtf(ss[0] / (float)(H * D) + eps);
  }

  // phase 2, head group by head group: (per head) rstd, normalise, rotate, store
#pragma unroll
  for (int p = 0; p < PASSES; ++p) {
    float rstd = row_rstd;
    if constexpr (!ROW) {
      float ss = 0.0f;
#pragma unroll
      for (int i = 0; i < VEC; ++i) ss += xv[p][i] * xv[p][i];
#pragma unroll
      for (int o = LPH / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      rstd = rsqrtf(ss / (float)D + eps);
    }
    const int h = h0 + p * HPP;
    if (ROW && h < H) {
      wv.load(w + h * stride_wh + col);
      wp.load(w + h * stride_wh + l.pcol);
    }
    const Raw<T, VEC> xp = shuffle_raw(xv[p], l.partner);   // every lane shuffles; unrotated ones read themselves
    float out[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float a = ROW ? wv[i] * c[i] : c[i], b = ROW ? wp[i] * sn[i] : sn[i];
      out[i] = rstd * fmaf(xv[p][i], a, xp[i] * b);
    }
    if (h < H) store_f32<T, VEC>(yt + (i64)h * D + col, out);
  }
}

// ------------------------------------------------------------------ entry points
// rms_norm_rope_fwd_<form>_<dtype>_d<D>: the op's parameters (aot/specs/rms_norm_rope.py: the
// variants and the calls each takes; M, the tokens, only sizes the grid).
// - head: per_head is 1 and w is (D,) (stride_wh 0); one warp a block, M * chunks blocks, 4 head
//   groups a warp.  Timed on an H100 at 16384 tokens x 32 heads x 128 (into preallocated
//   outputs, which ran these kernels 3-12% slower than the op does): 1 group 55%, 2 73%, 4 85%,
//   8 83% of copy; blocks of 1, 2 or 4 warps alike.
// - row_p4, row_p8: per_head is 0, w (H * D,) (stride_wh D); one block a token, 4 or 8 head
//   groups a warp, at most 4 or 8 warps a block (BOUNDS).  The block's warps wait on each
//   other at the block sum, so a block of many warps idles the SM's loads: 16 warps of 4 groups
//   ran 16384 x 128 heads x 128 at 67% of copy, 8 warps of 8 groups at 94-97%.  row_p4 is capped
//   at 64 registers (8 blocks an SM: 1024 tokens x 32 heads x 128 in one wave, 11.7 against 12.7
//   us); row_p8 at 80 where it does not spill (not at 256: 90% against 93% of copy uncapped).
#define ROPE_FWD(T, NAME, D, FORM, ROW, PASSES, BOUNDS)                                               \
  extern "C" __global__ void __launch_bounds__ BOUNDS rms_norm_rope_fwd_##FORM##_##NAME##_d##D(      \
      const T* x, const T* w, const T* cos, const T* sin, const i64* pos, T* y, i64 stride_xb,       \
      i64 stride_xs, i64 stride_yb, i64 stride_ys, i64 stride_wh, i64 stride_cb, i64 stride_cs,      \
      i64 stride_pb, int M, int S, int H, int N, int pairs, int P, float eps, int per_head, int flags) { \
    __shared__ float shm[ROW ? MAX_WARPS : 1];                                                       \
    rms_norm_rope_fwd_tile<T, D, ROW, PASSES>(x, w, cos, sin, pos, y, stride_xb, stride_xs, stride_yb, \
                                              stride_ys, stride_wh, stride_cb, stride_cs, stride_pb, S, H, \
                                              pairs, P, eps, flags, shm);                            \
  }
#define ROPE_FWD_DTYPES(D, FORM, ROW, PASSES, BOUNDS)  \
  ROPE_FWD(bf16_t, bf16, D, FORM, ROW, PASSES, BOUNDS) \
  ROPE_FWD(half_t, fp16, D, FORM, ROW, PASSES, BOUNDS)
#define ROPE_FWD_ROW(D)                            \
  ROPE_FWD_DTYPES(D, row_p4, true, 4, (128, 8))    \
  ROPE_FWD_DTYPES(D, row_p8, true, 8, (256, (D) < 256 ? 3 : 1))

ROPE_FWD_DTYPES(64, head, false, 4, (32))
ROPE_FWD_DTYPES(128, head, false, 4, (32))
ROPE_FWD_DTYPES(256, head, false, 4, (32))
ROPE_FWD_ROW(64)
ROPE_FWD_ROW(128)
ROPE_FWD_ROW(256)
