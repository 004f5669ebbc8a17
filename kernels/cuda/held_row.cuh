// One row held on chip from its first load to its last store, for the forwards of LayerNorm
// (kernels/cuda/layer_norm.cu) and AdaLN with a shared scale (kernels/cuda/ada_layer_norm.cu) at
// wide 16-bit rows: a block of THREADS threads a row; thread t owns the row's 16-byte vectors
// t + k * THREADS, the first NPT in registers, the next SNPT in its own slots of dynamic shared
// memory (`held`, slot k at held[k * THREADS]), filled by cp.async.  Every load of the row is in
// flight before the first wait, and the row is read from DRAM once.  mean and var are Chan's
// merge of the threads' exact two-pass statistics: no cancellation for rows with a large mean,
// and a fixed order, so results are deterministic.  The row's parameters a and b come after the
// statistics, a vector at a time, from L2, where every row sharing them finds them:
//
//     y = act((x - mean) * rstd * A + b),   A = a (LayerNorm) or 1 + a (ADA),   act = identity or relu
//
// flags: 1 a, 2 b (absent: A = 1, b = 0), 8 ReLU (NaN kept, as where(y < 0, 0, y) does).
// Register spills cost these kernels more than shared memory does (docs/benchmarks.md,
// "LayerNorm's wide rows in CUDA C++"): check ptxas's report when changing them.
#pragma once
#include "row_stats.cuh"

template <typename T, typename P, int THREADS, int NPT, int SNPT, bool ADA>
__device__ __forceinline__ void held_row_fwd(const T* __restrict__ xr, T* __restrict__ yr, const P* __restrict__ a,
                                             const P* __restrict__ b, int N, float eps, int flags) {
  constexpr int VEC = 16 / sizeof(T);
  static_assert(VEC == 8, "16-bit x only");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float shm[3 * MAX_WARPS];
  Raw<T, VEC>* held = reinterpret_cast<Raw<T, VEC>*>(smem_raw) + threadIdx.x;
  const int tid = threadIdx.x;
  // column of this thread's vector k; vectors past N hold nothing and are skipped
  auto col = [&](int k) { return (tid + k * THREADS) * VEC; };

  // phase 1: every load of the row in flight
  Raw<T, VEC> v[NPT];
#pragma unroll
  for (int k = 0; k < NPT; ++k)
    if (col(k) < N) v[k].load(xr + col(k));
#pragma unroll
  for (int k = 0; k < SNPT; ++k)
    if (col(NPT + k) < N) cp_async16(&held[k * THREADS], xr + col(NPT + k));
  cp_async_wait_all();   // only this thread reads its slots: no block barrier

  // phase 2: this thread's exact two-pass statistics, merged over the block
  float sum = 0.0f, n = 0.0f;
#pragma unroll
  for (int k = 0; k < NPT + SNPT; ++k)
    if (col(k) < N) {
      const Raw<T, VEC> u = k < NPT ? v[k < NPT ? k : 0] : held[(k - NPT) * THREADS];
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum += u[i];
      n += VEC;
    }
  Stats st = {0.0f, 0.0f, 0.0f};
  if (n > 0.0f) {
    const float m = __fdividef(sum, n);
    float m2 = 0.0f;
#pragma unroll
    for (int k = 0; k < NPT + SNPT; ++k)
      if (col(k) < N) {
        const Raw<T, VEC> u = k < NPT ? v[k < NPT ? k : 0] : held[(k - NPT) * THREADS];
#pragma unroll
        for (int i = 0; i < VEC; ++i) m2 += (u[i] - m) * (u[i] - m);
      }
    st = {n, m, m2};
  }
  float mean, rstd;
  finish_stats(block_stats(st, shm), N, eps, mean, rstd);

  // phase 3: normalise, scale, shift, store
#pragma unroll
  for (int k = 0; k < NPT + SNPT; ++k) {
    const int c = col(k);
    if (c >= N) continue;
    Raw<P, VEC> av, bv;
    if (flags & 1) av.load(a + c);
    if (flags & 2) bv.load(b + c);
    const Raw<T, VEC> u = k < NPT ? v[k < NPT ? k : 0] : held[(k - NPT) * THREADS];
    float out[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      float o = (u[i] - mean) * rstd;
      if (flags & 1) o *= ADA ? 1.0f + av[i] : av[i];
      if (flags & 2) o += bv[i];
      out[i] = (flags & 8) && o < 0.0f ? 0.0f : o;
    }
    store_f32<T, VEC>(yr + c, out);
  }
}
