// rms_norm_rope's forward per head (QK-norm, then RoPE) for 16-bit x, head_dim 128 or 256,
// the half-split layout; kernels/triton/rope.py has the math, the table conventions and every
// other case (over the row, interleaved, fp32, other head sizes, unaligned rows).
//
//     z = x * rstd * w,  rstd = 1 / sqrt(mean over the head (x^2) + eps)
//     pair i = (z[i], z[i + R]), i < R = rotary_dim / 2:
//     y[i] = z[i] * c[i] - z[i + R] * s[i],   y[i + R] = z[i + R] * c[i + R] + z[i] * s[i + R]
//     y[j] = z[j] for the pass-through columns j >= 2R
//
// Layout.  A head's D values lie across D / 8 lanes, 8 contiguous values (16 bytes) a lane, so a
// warp holds 32 / (D / 8) heads at once and ROPE_PASSES such groups: a block is one warp, and
// takes one token's chunk of HPW heads (block b: token b / chunks).  A head's sum of squares
// is a butterfly over its lanes; a value's rotation partner (R columns away) is in the lane R / 8
// away, whose 16 bytes arrive by shuffle; the table row and the weight are loaded once for the
// chunk.  All of a lane's loads (its heads of x, w at its own and its partner's columns, cos and
// sin) are in flight before the first sum.
//
// Aligned calls only (the spec's alignment test: pointers 16-byte aligned; strides, D and R
// multiples of 8 elements), so a lane's 16 bytes are all rotated or all passed through.  A
// position outside [0, P) reads table row 0 and makes the token's rotated values NaN, as the
// Triton kernel does.
#include "row_stats.cuh"

// Head groups a warp holds at once (aot/specs/rms_norm_rope.py: RMS_NORM_ROPE_CUDA's heads a
// block).  Timed on an H100 at 16384 tokens x 32 heads x 128: 1 pass 55%, 2 passes 73%, 4 passes
// 85%, 8 passes 83% of copy; blocks of 1, 2 or 4 warps alike.
constexpr int ROPE_PASSES = 4;

// Lane `src`'s 16 bytes, for every lane of the warp.
template <typename T, int VEC>
__device__ __forceinline__ Raw<T, VEC> shuffle_raw(const Raw<T, VEC>& v, int src) {
  static_assert(sizeof(Raw<T, VEC>) == 16, "a lane's values are one 16-byte vector");
  Raw<T, VEC> out;
  const unsigned* in = reinterpret_cast<const unsigned*>(&v);
  unsigned* o = reinterpret_cast<unsigned*>(&out);
#pragma unroll
  for (int k = 0; k < 4; ++k) o[k] = __shfl_sync(0xffffffffu, in[k], src);
  return out;
}

template <typename T, int D>
__device__ __forceinline__ void rms_norm_rope_head_fwd(
    const T* x, const T* w, const T* cos, const T* sin, const i64* pos, T* y,
    i64 stride_xb, i64 stride_xs, i64 stride_yb, i64 stride_ys, i64 stride_cb, i64 stride_cs,
    i64 stride_pb, int S, int H, int pairs, int P, float eps, int flags) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int LPH = D / VEC;                // lanes a head
  constexpr int HPP = 32 / LPH;               // heads a warp holds in one pass
  constexpr int HPW = HPP * ROPE_PASSES;      // heads of a warp's item
  static_assert(VEC == 8, "16-bit values only");
  static_assert(LPH >= 1 && LPH <= 32 && (LPH & (LPH - 1)) == 0, "a head spans a power of two of lanes");

  const int lane = threadIdx.x & 31;
  const int col = (lane % LPH) * VEC;         // this lane's first column in its head
  const int chunks = (H + HPW - 1) / HPW;
  const i64 t = blockIdx.x / chunks, b = t / S, s = t % S;
  const int h0 = (int)(blockIdx.x % chunks) * HPW + lane / LPH;
  const T* xt = x + b * stride_xb + s * stride_xs;
  T* yt = y + b * stride_yb + s * stride_ys;

  // the token's table row: its position (or s), row 0 and NaN where out of range
  i64 r = (flags & 1) ? pos[b * stride_pb + s] : s;
  const bool in_range = r >= 0 && r < P;
  if (!in_range) r = 0;
  const bool rotated = col < 2 * pairs;
  const bool first = col < pairs;             // the first element of its pairs
  const int partner = rotated ? (first ? lane + pairs / VEC : lane - pairs / VEC) : lane;
  const int pcol = rotated ? (first ? col + pairs : col - pairs) : col;
  const int tcol = (flags & 2) && !first ? col - pairs : col;   // half tables: one value a pair

  // phase 1: every load in flight
  Raw<T, VEC> xv[ROPE_PASSES], wv, wp, cv, sv;
#pragma unroll
  for (int p = 0; p < ROPE_PASSES; ++p)
    if (h0 + p * HPP < H) xv[p].load(xt + (i64)(h0 + p * HPP) * D + col);
  wv.load(w + col);
  wp.load(w + pcol);
  if (rotated) {
    cv.load(cos + b * stride_cb + r * stride_cs + tcol);
    sv.load(sin + b * stride_cb + r * stride_cs + tcol);
  }
  // y = z * c + zp * sn, with zp the partner's normalised value: c and sn are the table's cos and
  // (signed) sin where this lane rotates, 1 and 0 where it passes its values through
  const float poison = in_range ? 0.0f : __int_as_float(0x7fc00000);
  const float sign = first ? -1.0f : 1.0f;
  float c[VEC], sn[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    c[i] = rotated ? cv[i] + poison : 1.0f;
    sn[i] = rotated ? sign * (sv[i] + poison) : 0.0f;
  }

  // phase 2, head group by head group: rstd, normalise, rotate, store
#pragma unroll
  for (int p = 0; p < ROPE_PASSES; ++p) {
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) ss += xv[p][i] * xv[p][i];
#pragma unroll
    for (int o = LPH / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float rstd = rsqrtf(ss / (float)D + eps);
    const Raw<T, VEC> xp = shuffle_raw(xv[p], partner);   // every lane shuffles; unrotated ones read themselves
    float out[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      out[i] = xv[p][i] * rstd * wv[i] * c[i] + xp[i] * rstd * wp[i] * sn[i];
    }
    const int h = h0 + p * HPP;
    if (h < H) store_f32<T, VEC>(yt + (i64)h * D + col, out);
  }
}

// ------------------------------------------------------------------ entry points
// rms_norm_rope_fwd_head_<dtype>_d<D>: the op's parameters (aot/specs/rms_norm_rope.py); the
// variant takes per-head calls only, so per_head is 1 and w is (D,) (stride_wh 0); M, the
// tokens, only sizes the grid (M * chunks blocks).
#define ROPE_HEAD_FWD(T, NAME, D)                                                                          \
  extern "C" __global__ void __launch_bounds__(32) rms_norm_rope_fwd_head_##NAME##_d##D(     \
      const T* x, const T* w, const T* cos, const T* sin, const i64* pos, T* y, i64 stride_xb,             \
      i64 stride_xs, i64 stride_yb, i64 stride_ys, i64 stride_wh, i64 stride_cb, i64 stride_cs,            \
      i64 stride_pb, int M, int S, int H, int N, int pairs, int P, float eps, int per_head, int flags) {   \
    rms_norm_rope_head_fwd<T, D>(x, w, cos, sin, pos, y, stride_xb, stride_xs, stride_yb, stride_ys,       \
                                 stride_cb, stride_cs, stride_pb, S, H, pairs, P, eps, flags);         \
  }
#define ROPE_HEAD_FWD_ALL(D)          \
  ROPE_HEAD_FWD(bf16_t, bf16, D)      \
  ROPE_HEAD_FWD(half_t, fp16, D)

ROPE_HEAD_FWD_ALL(128)
ROPE_HEAD_FWD_ALL(256)
