#include "reduce.cu"
// dx[o, r, c] = scale * x[o, r, c] * dy[o, c]: LANES threads across (VEC columns each), ROWS down,
// K rows a thread with their loads in flight; no division
template <typename T, int VEC, int LANES, int K>
__device__ __forceinline__ void bwd_rows(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                                         i64 stride_o, i64 stride_r, i64 stride_go, i64 R, i64 N, float scale) {
  constexpr int ROWS = 256 / LANES;
  const int tx = threadIdx.x % LANES, ty = threadIdx.x / LANES;
  const i64 c = ((i64)blockIdx.x * LANES + tx) * VEC;
  if (c >= N) return;
  const i64 o = blockIdx.z;
  const Vec<T, VEC> g = load_vec<T, VEC>(dy + o * stride_go + c);
  const i64 r0 = (i64)blockIdx.y * ROWS * K + ty;
  Vec<T, VEC> xs[K];
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (r0 + k * ROWS < R) xs[k] = load_vec<T, VEC>(x + o * stride_o + (r0 + k * ROWS) * stride_r + c);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const i64 r = r0 + k * ROWS;
    if (r < R) {
      Vec<T, VEC> out;
#pragma unroll
      for (int i = 0; i < VEC; ++i) out.v[i] = from_float<T>(to_float(xs[k].v[i]) * (to_float(g.v[i]) * scale));
      store_vec<T, VEC>(dx + (o * R + r) * N + c, out);
    }
  }
}
#define RB(LANES, K) \
  extern "C" __global__ void __launch_bounds__(256) rb_l##LANES##_k##K(const bf16_t* dy, const bf16_t* x, bf16_t* dx, \
      i64 stride_o, i64 stride_r, i64 stride_go, i64 R, i64 N, float scale) { \
    bwd_rows<bf16_t, 8, LANES, K>(dy, x, dx, stride_o, stride_r, stride_go, R, N, scale); }
RB(32, 1) RB(32, 2) RB(32, 4) RB(32, 8) RB(16, 2) RB(16, 4) RB(8, 4) RB(64, 2)
