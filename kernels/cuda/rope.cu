// rope's forward and backward (q and k in one launch) for 16-bit values, the half-split layout,
// head_dim 64, 128 or 256, aligned calls; kernels/triton/rope.py has the op's conventions and
// every other case (interleaved, fp32, other head sizes, unaligned rows, few tokens), rope.cuh
// the rotation.
//
// Layout (as rms_norm_rope.cu's per-head form): a block is one warp and takes one token's chunk
// of HPW heads from q's heads then k's (block b: token b / chunks); a head's D values lie across
// D / 8 lanes, 16 bytes a lane, so a warp holds 32 / (D / 8) heads at once and PASSES such
// groups.  All of a lane's loads (its heads, the token's cos and sin) are in flight before the
// first rotation; a value's partner arrives by shuffle, so the in-place form (outputs = inputs)
// reads every value before it is written.  Columns at or past the op's D (the in-place form's
// pass-through columns, D = 2R) are neither read nor written.
#include "rope.cuh"

constexpr int ROPE_PASSES = 4;

template <typename T, int HD>
__device__ __forceinline__ void rope_tile(
    const T* q, const T* k, const T* cos, const T* sin, const i64* pos, T* q_out, T* k_out,
    i64 stride_qb, i64 stride_qs, i64 stride_qh, i64 stride_kb, i64 stride_ks, i64 stride_kh,
    i64 stride_oqb, i64 stride_oqs, i64 stride_oqh, i64 stride_okb, i64 stride_oks, i64 stride_okh,
    i64 stride_cb, i64 stride_cs, i64 stride_pb, int S, int Hq, int Hk, int pairs, int D, int P, int flags) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int LPH = HD / VEC;               // lanes a head
  constexpr int HPP = 32 / LPH;               // heads a warp holds in one pass
  constexpr int HPW = HPP * ROPE_PASSES;      // heads of a block
  static_assert(VEC == 8, "16-bit values only");

  const int lane = threadIdx.x;
  const int col = (lane % LPH) * VEC;         // this lane's first column in its head
  const int H = Hq + Hk;
  const int chunks = (H + HPW - 1) / HPW;
  const i64 t = blockIdx.x / chunks, b = t / S, s = t % S;
  const int h0 = (int)(blockIdx.x % chunks) * HPW + lane / LPH;
  const bool live = col < D;

  bool in_range;
  const i64 r = rope_table_row(pos, b, s, stride_pb, P, flags, in_range);
  const RopeLane l(lane, col, pairs, flags);

  Raw<T, VEC> xv[ROPE_PASSES], cv, sv;
#pragma unroll
  for (int p = 0; p < ROPE_PASSES; ++p) {
    const int h = h0 + p * HPP;
    if (live && h < H)
      xv[p].load(h < Hq ? q + b * stride_qb + s * stride_qs + h * stride_qh + col
                        : k + b * stride_kb + s * stride_ks + (h - Hq) * stride_kh + col);
  }
  if (l.rotated) {
    cv.load(cos + b * stride_cb + r * stride_cs + l.ccol);
    sv.load(sin + b * stride_cb + r * stride_cs + l.scol);
  }
  float c[VEC], sn[VEC];
  rope_coeffs(cv, sv, l, in_range, flags, c, sn);

#pragma unroll
  for (int p = 0; p < ROPE_PASSES; ++p) {
    const Raw<T, VEC> xp = shuffle_raw(xv[p], l.partner);   // every lane shuffles; unrotated ones read themselves
    float out[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = xv[p][i] * c[i] + xp[i] * sn[i];
    const int h = h0 + p * HPP;
    if (live && h < H)
      store_f32<T, VEC>(h < Hq ? q_out + b * stride_oqb + s * stride_oqs + h * stride_oqh + col
                               : k_out + b * stride_okb + s * stride_oks + (h - Hq) * stride_okh + col, out);
  }
}

// rope_<dtype>_d<HD>: the op's parameters (aot/specs/rope.py); M, the tokens, and N = rotary_dim / 2
// as pairs.  One warp a block, M * ceil((Hq + Hk) / HPW) blocks.
#define ROPE(T, NAME, HD)                                                                                    \
  extern "C" __global__ void __launch_bounds__(32) rope_##NAME##_d##HD(                                      \
      const T* q, const T* k, const T* cos, const T* sin, const i64* pos, T* q_out, T* k_out,                \
      i64 stride_qb, i64 stride_qs, i64 stride_qh, i64 stride_kb, i64 stride_ks, i64 stride_kh,              \
      i64 stride_oqb, i64 stride_oqs, i64 stride_oqh, i64 stride_okb, i64 stride_oks, i64 stride_okh,        \
      i64 stride_cb, i64 stride_cs, i64 stride_pb, int M, int S, int Hq, int Hk, int N, int D, int P,        \
      int flags) {                                                                                           \
    rope_tile<T, HD>(q, k, cos, sin, pos, q_out, k_out, stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, \
                     stride_kh, stride_oqb, stride_oqs, stride_oqh, stride_okb, stride_oks, stride_okh,      \
                     stride_cb, stride_cs, stride_pb, S, Hq, Hk, N, D, P, flags);                            \
  }
#define ROPE_DTYPES(HD) ROPE(bf16_t, bf16, HD) ROPE(half_t, fp16, HD)

ROPE_DTYPES(64)
ROPE_DTYPES(128)
ROPE_DTYPES(256)
