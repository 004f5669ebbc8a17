// One row held on chip from its first load to its last store, for the forwards of LayerNorm
// (kernels/cuda/layer_norm.cu), AdaLN with a shared scale (kernels/cuda/ada_layer_norm.cu) and
// RMSNorm (kernels/cuda/rms_norm.cu) at 16-bit rows: a block of T threads a row
// (T = THREADS, or blockDim.x where THREADS is 0: a block sized to the row); thread t owns the
// row's 16-byte vectors t + k * T, the first NPT in registers, the next SNPT in its own slots of
// dynamic shared memory (`held`, slot k at held[k * T]), filled by cp.async.  Every load of the
// row is in flight before the first use (Raw::hold), and the row is read from DRAM once.  mean
// and var are Chan's merge of the threads' exact two-pass statistics: no cancellation for rows
// with a large mean, and a fixed order, so results are deterministic (RMS: the sum of squares,
// mean 0).  The row's parameters a and b come after the statistics, G vectors' worth at a time,
// from L2, where every row sharing them finds them:
//
//     y = act((x - mean) * rstd * A + b),   A = a (LN, RMS) or 1 + a (ADA),   act = identity or relu
//
// flags: 1 a, 2 b (absent: A = 1, b = 0), 8 ReLU (NaN kept, as where(y < 0, 0, y) does); FLAGS >= 0
// fixes them at compile time (fewer registers where the block holds its row in registers only;
// the LN wide forms spilled with it).  RMS reads flag 1 only (the weight; it has no b or ReLU),
// fixed at compile time: a weight optional at run time spilled its wide form.
// Register spills cost these kernels more than shared memory does (docs/benchmarks.md,
// "LayerNorm's wide rows in CUDA C++"): check ptxas's report when changing them.
#pragma once
#include "row_stats.cuh"

enum class Norm { LN, ADA, RMS };

template <typename T, typename P, int THREADS, int NPT, int SNPT, Norm MODE, int G = 1, int FLAGS = -1>
__device__ __forceinline__ void held_row_fwd(const T* __restrict__ xr, T* __restrict__ yr, const P* __restrict__ a,
                                             const P* __restrict__ b, int N, float eps, int flags) {
  constexpr int VEC = 16 / sizeof(T);
  static_assert(VEC == 8, "16-bit x only");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float shm[3 * MAX_WARPS];
  Raw<T, VEC>* held = reinterpret_cast<Raw<T, VEC>*>(smem_raw) + threadIdx.x;
  const int tid = threadIdx.x, nt = THREADS > 0 ? THREADS : (int)blockDim.x;
  static_assert(MODE != Norm::RMS || FLAGS >= 0, "RMS: the weight flag is fixed at compile time");
  if (FLAGS >= 0) flags = FLAGS;
  // column of this thread's vector k; vectors past N hold nothing and are skipped
  auto col = [&](int k) { return (tid + k * nt) * VEC; };

  // phase 1: every load of the row in flight
  Raw<T, VEC> v[NPT];
#pragma unroll
  for (int k = 0; k < NPT; ++k)
    if (col(k) < N) v[k].load(xr + col(k));
#pragma unroll
  for (int k = 0; k < SNPT; ++k)
    if (col(NPT + k) < N) cp_async16(&held[k * nt], xr + col(NPT + k));
#pragma unroll
  for (int k = 0; k < NPT; ++k) v[k].hold();
  if (SNPT > 0) cp_async_wait_all();   // only this thread reads its slots: no block barrier

  // phase 2: this thread's statistics (exact two-pass; RMS: the sum of squares), merged over the block
  float mean, rstd;
  if constexpr (MODE == Norm::RMS) {
    float ss[1] = {0.0f};
#pragma unroll
    for (int k = 0; k < NPT + SNPT; ++k)
      if (col(k) < N) {
        const Raw<T, VEC> u = k < NPT ? v[k < NPT ? k : 0] : held[(k - NPT) * nt];
#pragma unroll
        for (int i = 0; i < VEC; ++i) ss[0] += u[i] * u[i];
      }
    block_sums<1>(ss, shm);
    mean = 0.0f;
    rstd = rsqrtf(ss[0] / (float)N + eps);
  } else {
    float sum = 0.0f, n = 0.0f;
#pragma unroll
    for (int k = 0; k < NPT + SNPT; ++k)
      if (col(k) < N) {
        const Raw<T, VEC> u = k < NPT ? v[k < NPT ? k : 0] : held[(k - NPT) * nt];
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
          const Raw<T, VEC> u = k < NPT ? v[k < NPT ? k : 0] : held[(k - NPT) * nt];
#pragma unroll
          for (int i = 0; i < VEC; ++i) m2 += (u[i] - m) * (u[i] - m);
        }
      st = {n, m, m2};
    }
    finish_stats(block_stats(st, shm), N, eps, mean, rstd);
  }

  // phase 3: normalise, scale, shift, store (vector k, its parameters av and bv)
  constexpr bool HAS_B = MODE != Norm::RMS;
  auto emit = [&](int k, const Raw<P, VEC>& av, const Raw<P, VEC>& bv) {
    const Raw<T, VEC> u = k < NPT ? v[k < NPT ? k : 0] : held[(k - NPT) * nt];
    float out[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      float o = (MODE == Norm::RMS ? u[i] : u[i] - mean) * rstd;
      if (flags & 1) o *= MODE == Norm::ADA ? 1.0f + av[i] : av[i];
      if (HAS_B && (flags & 2)) o += bv[i];
      out[i] = HAS_B && (flags & 8) && o < 0.0f ? 0.0f : o;
    }
    store_f32<T, VEC>(yr + col(k), out);
  };
  if constexpr (G == 1) {
#pragma unroll
    for (int k = 0; k < NPT + SNPT; ++k) {
      const int c = col(k);
      if (c >= N) continue;
      Raw<P, VEC> av, bv;
      if (flags & 1) av.load(a + c);
      if (HAS_B && (flags & 2)) bv.load(b + c);
      emit(k, av, bv);
    }
  } else {   // G vectors' parameters in flight at once (loads and stores keep their order: asm volatile)
#pragma unroll
    for (int g = 0; g < NPT + SNPT; g += G) {
      Raw<P, VEC> av[G], bv[G];
#pragma unroll
      for (int j = 0; j < G; ++j)
        if (g + j < NPT + SNPT && col(g + j) < N) {
          if (flags & 1) av[j].load(a + col(g + j));
          if (HAS_B && (flags & 2)) bv[j].load(b + col(g + j));
        }
#pragma unroll
      for (int j = 0; j < G; ++j)
        if (g + j < NPT + SNPT && col(g + j) < N) emit(g + j, av[j], bv[j]);
    }
  }
}
