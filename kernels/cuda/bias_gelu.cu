// bias + GELU, forward and backward.
//
//   u  = x + bias                      (bias broadcast over rows)
//   y  = gelu(u)
//        exact: u Phi(u) = 0.5 u (1 + erf(u / sqrt 2))
//        tanh:  0.5 u (1 + tanh(z)) = u * sigmoid(2z),  z = k (u + 0.044715 u^3),  k = sqrt(2 / pi)
//   dx = dy * gelu'(u)
//   dbias = sum over rows of dx        (into dbias when one row group covers M, else per row
//                                       group into dbias_partial, added by reduce_finish)
//
// Layout: a thread owns VEC consecutive columns (one 16-byte access when aligned); its bias
// stays in registers.  The forward walks rows blockIdx.y, blockIdx.y + gridDim.y, ...; the
// backward is elementwise.cuh's colsum_loop.
//
// The forward's grid has a block for every FWD_ROWS rows (up to grid.y's limit), so a block
// makes one trip and the hardware schedules the blocks: at 256M bf16 elements this ran at
// 96-100% of copy bandwidth on an H100, against 84-90% with 8 blocks per SM looping over the
// rows (measured; docs/benchmarks.md).  The exact form, with more arithmetic, is fastest with
// four rows' loads in flight per thread; the tanh form with two.
#include "elementwise.cuh"

#define FWD_ROWS(TANH) ((TANH) ? 2 : 4)

// The tanh form as u * sigmoid(2z), since 0.5 (1 + tanh(z)) = 1 / (1 + exp(-2z)): one exp and one
// reciprocal instead of tanhf's longer sequence (relative error ~1e-6, far below fp32 output needs).
#define GELU_K 0.7978845608028654f   // sqrt(2 / pi)
#define GELU_C 0.044715f

// Phi(u) = erfc(-u / sqrt2) / 2 by the Chebyshev fit of erfc in Numerical Recipes (erfcc):
// erfc(z) = t exp(P(t) - z^2), t = 1 / (1 + z/2), z = |u| / sqrt2 >= 0, fractional error
// < 1.2e-7.  Branch free, one reciprocal and one exp: about a third of erff's instructions,
// which at H100/H200 bandwidth left the exact form compute-bound.  It is also accurate
// relative to Phi in the negative tail, where 1 + erf(u / sqrt2) cancels.
__device__ __forceinline__ float erfcc_poly(float t) {
  float p = fmaf(t, 0.17087277f, -0.82215223f);
  p = fmaf(t, p, 1.48851587f);
  p = fmaf(t, p, -1.13520398f);
  p = fmaf(t, p, 0.27886807f);
  p = fmaf(t, p, -0.18628806f);
  p = fmaf(t, p, 0.09678418f);
  p = fmaf(t, p, 0.37409196f);
  p = fmaf(t, p, 1.00002368f);
  return fmaf(t, p, -1.26551223f);
}

__device__ __forceinline__ float phi_cdf(float u) {
  const float z = fabsf(u) * 0.7071067811865476f;
  const float t = __fdividef(1.0f, fmaf(0.5f, z, 1.0f));
  const float e = 0.5f * t * __expf(erfcc_poly(t) - z * z);  // Phi(-|u|)
  return u > 0.0f ? 1.0f - e : e;
}

template <bool TANH>
__device__ __forceinline__ float gelu(float u) {
  if (TANH) {
    const float z = GELU_K * (u + GELU_C * u * u * u);
    return __fdividef(u, 1.0f + __expf(-2.0f * z));
  }
  return u * phi_cdf(u);
}

template <bool TANH>
__device__ __forceinline__ float gelu_grad(float u) {
  if (TANH) {
    // d/du [u s(2z)] = s + u * 2 s (1 - s) * z',  s = sigmoid(2z),  z' = k (1 + 3c u^2)
    const float z = GELU_K * (u + GELU_C * u * u * u);
    const float s = __fdividef(1.0f, 1.0f + __expf(-2.0f * z));
    return s + 2.0f * u * s * (1.0f - s) * GELU_K * (1.0f + 3.0f * GELU_C * u * u);
  }
  // Phi(u) + u * phi(u),  phi(u) = exp(-u^2 / 2) / sqrt(2 pi), sharing exp(-z^2)
  const float z = fabsf(u) * 0.7071067811865476f;
  const float t = __fdividef(1.0f, fmaf(0.5f, z, 1.0f));
  const float ez = __expf(-z * z);
  const float e = 0.5f * t * ez * __expf(erfcc_poly(t));  // Phi(-|u|)
  return (u > 0.0f ? 1.0f - e : e) + u * 0.3989422804014327f * ez;
}

template <typename T, int VEC, bool TANH>
__device__ __forceinline__ void bias_gelu_fwd(const T* __restrict__ x, const T* __restrict__ bias,
                                              T* __restrict__ y, i64 stride_x, i64 M, i64 N) {
  constexpr int ROWS = FWD_ROWS(TANH);
  const i64 col = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  if (col >= N) return;  // aligned variants have N % VEC == 0, so a whole vector is in range
  const Vec<T, VEC> b = load_vec<T, VEC>(bias + col);
  // one trip unless M needs more blocks than grid.y allows
  for (i64 row0 = blockIdx.y; row0 < M; row0 += (i64)gridDim.y * ROWS) {
    // issue ROWS independent loads before any arithmetic
    Vec<T, VEC> in[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const i64 row = row0 + (i64)r * gridDim.y;
      if (row < M) in[r] = load_vec<T, VEC>(x + row * stride_x + col);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const i64 row = row0 + (i64)r * gridDim.y;
      if (row >= M) break;
      Vec<T, VEC> out;
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        out.v[i] = from_float<T>(gelu<TANH>(to_float(in[r].v[i]) + to_float(b.v[i])));
      store_vec<T, VEC>(y + row * N + col, out);
    }
  }
}

// The backward's body for colsum_loop: dx, and each column's sum of dx over the block's rows.
template <typename T>
struct BiasGeluBwdParams {
  const T* dy;
  const T* x;
  const T* bias;
  T* dx;
  i64 stride_dy, stride_x, N;
};

template <typename T, int VEC, bool TANH>
struct BiasGeluBwdCols {
  typedef BiasGeluBwdParams<T> Params;
  struct Frag {
    Vec<T, VEC> x, dy;
  };
  Params p;
  Vec<T, VEC> b;
  __device__ __forceinline__ BiasGeluBwdCols(const Params& prm, i64 col) : p(prm) {
    b = load_vec<T, VEC>(p.bias + col);
  }
  __device__ __forceinline__ void load(Frag& f, i64 row, i64 col) const {
    f.x = load_vec<T, VEC>(p.x + row * p.stride_x + col);
    f.dy = load_vec<T, VEC>(p.dy + row * p.stride_dy + col);
  }
  __device__ __forceinline__ void store(const Frag& f, i64 row, i64 col, float* acc) const {
    Vec<T, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float g = to_float(f.dy.v[i]) * gelu_grad<TANH>(to_float(f.x.v[i]) + to_float(b.v[i]));
      out.v[i] = from_float<T>(g);
      acc[i] += g;
    }
    store_vec<T, VEC>(p.dx + row * p.N + col, out);
  }
};
template <typename T, int VEC>
using BiasGeluBwdExact = BiasGeluBwdCols<T, VEC, false>;
template <typename T, int VEC>
using BiasGeluBwdTanh = BiasGeluBwdCols<T, VEC, true>;

// One extern "C" entry point per (dtype, vector width): the names the spec table uses.  The
// approximate flag picks one of two separately compiled bodies once per thread, so neither
// pays for the other's math.
#define BIAS_GELU_INSTANCE(T, NAME, VEC)                                                          \
  extern "C" __global__ void bias_gelu_fwd_##NAME##_v##VEC(                                      \
      const T* x, const T* bias, T* y, i64 stride_x, i64 M, i64 N, int approximate) {            \
    if (approximate) bias_gelu_fwd<T, VEC, true>(x, bias, y, stride_x, M, N);                     \
    else bias_gelu_fwd<T, VEC, false>(x, bias, y, stride_x, M, N);                                \
  }                                                                                               \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, COLSUM_MIN_BLOCKS) bias_gelu_bwd_##NAME##_v##VEC( \
      const T* dy, const T* x, const T* bias, T* dx, T* dbias, float* dbias_partial, i64 stride_dy, \
      i64 stride_x, i64 M, i64 N, int approximate, int G) {                                      \
    const BiasGeluBwdParams<T> prm = {dy, x, bias, dx, stride_dy, stride_x, N};                 \
    if (approximate) colsum_loop<BiasGeluBwdTanh, T, VEC>(prm, dbias, dbias_partial, M, N, G);   \
    else colsum_loop<BiasGeluBwdExact, T, VEC>(prm, dbias, dbias_partial, M, N, G);              \
  }

BIAS_GELU_INSTANCE(bf16_t, bf16, 8)
BIAS_GELU_INSTANCE(bf16_t, bf16, 1)
BIAS_GELU_INSTANCE(half_t, fp16, 8)
BIAS_GELU_INSTANCE(half_t, fp16, 1)
BIAS_GELU_INSTANCE(float, fp32, 4)
BIAS_GELU_INSTANCE(float, fp32, 1)
