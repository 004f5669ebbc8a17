// The rotation of rope.cu and rms_norm_rope.cu: 16-bit values, the half-split layout, a head's D
// values across D / 8 lanes, 8 contiguous values (16 bytes) a lane.  With R = rotary_dim / 2:
//
//     pair i = (v[i], v[i + R]), i < R:
//     y[i] = v[i] * c[i] - v[i + R] * s[i],   y[i + R] = v[i + R] * c[i + R] + v[i] * s[i + R]
//     y[j] = v[j] for the pass-through columns j >= 2R
//     backward (the rotation by -theta): s[i] and s[i + R] trade places and change sign
//
// so a lane computes y = v * c + vp * sn, vp its partner's values (R columns away, in the lane
// R / 8 away, by shuffle), c and sn its coefficients below.  Aligned calls only (R a multiple of
// 8): a lane's 16 bytes are all rotated or all passed through.
#pragma once
#include "row_stats.cuh"

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

// A lane's part in its head's rotation.  flags: 2 half tables (one value a pair), 4 backward.
struct RopeLane {
  bool rotated;   // its columns are rotated (col < 2R), else passed through
  bool first;     // they are the first of their pairs (col < R)
  int partner;    // the lane holding the partner columns (itself where not rotated)
  int pcol;       // the partner's first column in the head
  int ccol;       // the table column of its cos values
  int scol;       // and of its sin values (the partner's in the backward)
  __device__ __forceinline__ RopeLane(int lane, int col, int pairs, int flags) {
    rotated = col < 2 * pairs;
    first = col < pairs;
    partner = rotated ? (first ? lane + pairs / 8 : lane - pairs / 8) : lane;
    pcol = rotated ? (first ? col + pairs : col - pairs) : col;
    ccol = (flags & 2) && !first ? col - pairs : col;
    scol = (flags & 4) && !(flags & 2) ? pcol : ccol;
  }
};

// The token's table row: its position (or s); row 0 and in_range false outside [0, P).
__device__ __forceinline__ i64 rope_table_row(const i64* pos, i64 b, i64 s, i64 stride_pb, int P, int flags,
                                              bool& in_range) {
  const i64 r = (flags & 1) ? pos[b * stride_pb + s] : s;
  in_range = r >= 0 && r < P;
  return in_range ? r : 0;
}

// c and sn from the lane's table values (cv at ccol, sv at scol; not read where not rotated): the
// table's cos and signed sin where the lane rotates, NaN where the position was out of range (as
// the Triton kernels), 1 and 0 where it passes its values through.
template <typename T, int VEC>
__device__ __forceinline__ void rope_coeffs(const Raw<T, VEC>& cv, const Raw<T, VEC>& sv, const RopeLane& l,
                                            bool in_range, int flags, float (&c)[VEC], float (&sn)[VEC]) {
  const float poison = in_range ? 0.0f : __int_as_float(0x7fc00000);
  const float sign = (l.first != ((flags & 4) != 0)) ? -1.0f : 1.0f;
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    c[i] = l.rotated ? cv[i] + poison : 1.0f;
    sn[i] = l.rotated ? sign * (sv[i] + poison) : 0.0f;
  }
}
