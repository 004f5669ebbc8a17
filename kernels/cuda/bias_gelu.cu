// bias + GELU, forward and backward.
//
//   u  = x + bias                      (bias broadcast over rows)
//   y  = gelu(u)
//        exact: 0.5 u (1 + erf(u / sqrt 2))
//        tanh:  0.5 u (1 + tanh(k (u + 0.044715 u^3))),  k = sqrt(2 / pi)
//   dx = dy * gelu'(u)
//   dbias = sum over rows of dx        (per row group into dbias_partial, summed by the caller)
//
// Layout: a thread owns VEC consecutive columns (one 16-byte access when aligned) and
// walks rows blockIdx.y, blockIdx.y + gridDim.y, ...; its bias stays in registers.
#include "fa_common.cuh"

#define ROW_UNROLL 4

__device__ __forceinline__ float gelu(float u, int approximate) {
  if (approximate) {
    const float k = 0.7978845608028654f;
    return 0.5f * u * (1.0f + tanhf(k * (u + 0.044715f * u * u * u)));
  }
  return 0.5f * u * (1.0f + erff(u * 0.7071067811865476f));
}

__device__ __forceinline__ float gelu_grad(float u, int approximate) {
  if (approximate) {
    const float k = 0.7978845608028654f;
    float t = tanhf(k * (u + 0.044715f * u * u * u));
    return 0.5f * (1.0f + t) + 0.5f * u * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * u * u);
  }
  // Phi(u) + u * phi(u)
  return 0.5f * (1.0f + erff(u * 0.7071067811865476f)) + u * 0.3989422804014327f * __expf(-0.5f * u * u);
}

template <typename T, int VEC>
__device__ __forceinline__ void bias_gelu_fwd(const T* __restrict__ x, const T* __restrict__ bias,
                                              T* __restrict__ y, i64 stride_x, i64 M, i64 N,
                                              int approximate) {
  const i64 col = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  if (col >= N) return;  // aligned variants have N % VEC == 0, so a whole vector is in range
  const Vec<T, VEC> b = load_vec<T, VEC>(bias + col);
  for (i64 row0 = blockIdx.y; row0 < M; row0 += (i64)gridDim.y * ROW_UNROLL) {
    // issue ROW_UNROLL independent loads before any arithmetic
    Vec<T, VEC> in[ROW_UNROLL];
#pragma unroll
    for (int r = 0; r < ROW_UNROLL; ++r) {
      const i64 row = row0 + (i64)r * gridDim.y;
      if (row < M) in[r] = load_vec<T, VEC>(x + row * stride_x + col);
    }
#pragma unroll
    for (int r = 0; r < ROW_UNROLL; ++r) {
      const i64 row = row0 + (i64)r * gridDim.y;
      if (row >= M) break;
      Vec<T, VEC> out;
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        out.v[i] = from_float<T>(gelu(to_float(in[r].v[i]) + to_float(b.v[i]), approximate));
      store_vec<T, VEC>(y + row * N + col, out);
    }
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void bias_gelu_bwd(const T* __restrict__ dy, const T* __restrict__ x,
                                              const T* __restrict__ bias, T* __restrict__ dx,
                                              float* __restrict__ dbias_partial, i64 stride_dy,
                                              i64 stride_x, i64 M, i64 N, int approximate, int G) {
  const i64 col = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  if (col >= N) return;
  const Vec<T, VEC> b = load_vec<T, VEC>(bias + col);
  float db[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) db[i] = 0.0f;
  for (i64 row0 = blockIdx.y; row0 < M; row0 += (i64)G * ROW_UNROLL) {
    Vec<T, VEC> xin[ROW_UNROLL], gin[ROW_UNROLL];
#pragma unroll
    for (int r = 0; r < ROW_UNROLL; ++r) {
      const i64 row = row0 + (i64)r * G;
      if (row < M) {
        xin[r] = load_vec<T, VEC>(x + row * stride_x + col);
        gin[r] = load_vec<T, VEC>(dy + row * stride_dy + col);
      }
    }
#pragma unroll
    for (int r = 0; r < ROW_UNROLL; ++r) {
      const i64 row = row0 + (i64)r * G;
      if (row >= M) break;
      Vec<T, VEC> out;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float g = to_float(gin[r].v[i]) * gelu_grad(to_float(xin[r].v[i]) + to_float(b.v[i]), approximate);
        out.v[i] = from_float<T>(g);
        db[i] += g;
      }
      store_vec<T, VEC>(dx + row * N + col, out);
    }
  }
  float* part = dbias_partial + (i64)blockIdx.y * N + col;
#pragma unroll
  for (int i = 0; i < VEC; ++i) part[i] = db[i];
}

// One extern "C" entry point per (dtype, vector width): the names the spec table uses.
#define BIAS_GELU_INSTANCE(T, NAME, VEC)                                                          \
  extern "C" __global__ void bias_gelu_fwd_##NAME##_v##VEC(                                      \
      const T* x, const T* bias, T* y, i64 stride_x, i64 M, i64 N, int approximate) {            \
    bias_gelu_fwd<T, VEC>(x, bias, y, stride_x, M, N, approximate);                               \
  }                                                                                               \
  extern "C" __global__ void bias_gelu_bwd_##NAME##_v##VEC(                                      \
      const T* dy, const T* x, const T* bias, T* dx, float* dbias_partial, i64 stride_dy,        \
      i64 stride_x, i64 M, i64 N, int approximate, int G) {                                      \
    bias_gelu_bwd<T, VEC>(dy, x, bias, dx, dbias_partial, stride_dy, stride_x, M, N, approximate, G); \
  }

BIAS_GELU_INSTANCE(bf16_t, bf16, 8)
BIAS_GELU_INSTANCE(bf16_t, bf16, 1)
BIAS_GELU_INSTANCE(half_t, fp16, 8)
BIAS_GELU_INSTANCE(half_t, fp16, 1)
BIAS_GELU_INSTANCE(float, fp32, 4)
BIAS_GELU_INSTANCE(float, fp32, 1)
