// LayerNorm's forward for wide rows of 16-bit x (16384 < N <= 65536, 16-byte aligned);
// kernels/triton/layer_norm.py has the math and every other case.
//
//     y = act((x - mean) * rstd * w + b),   rstd = 1 / sqrt(var + eps),   act = identity or relu
//
// One block a row, which it holds on chip from the first load to the last store, so x is read
// from DRAM once (the Triton forms read a row this wide twice, the second time mostly from L2,
// and ran at 79-80% of copy at 65536 wide on an H100).  Thread t owns the row's 16-byte vectors
// t + k * THREADS: the first NPT in registers, the next SNPT in its own slots of dynamic shared
// memory, filled by cp.async, so a 65536-wide row fits two blocks an SM (64 KiB of registers
// and 64 KiB of shared memory each), one loading while the other reduces and stores.  Few rows
// (M < 2048) keep the Triton forms: one block a row fills fewer waves (1024 x 32768: 71-72% of
// copy against 75.8%).  Every
// load of the row is in flight before the first wait.  mean and var are Chan's merge of the
// threads' exact two-pass statistics (kernels/cuda/row_stats.cuh): no cancellation for rows
// with a large mean, and a fixed order, so results are deterministic.  The weight and bias come
// after the statistics, a vector at a time, from L2 (every row reads them).
//
// flags: 1 weight, 2 bias, 4 weight and bias stored in fp32 (a separate entry point: P), 8 ReLU.
// The output keeps NaN through the ReLU, as the Triton kernel's where(y < 0, 0, y) does.
#include "row_stats.cuh"

template <typename T, typename P, int THREADS, int NPT, int SNPT>
__device__ __forceinline__ void layer_norm_fwd_row(const T* __restrict__ x, T* __restrict__ y,
                                                   const P* __restrict__ w, const P* __restrict__ b,
                                                   i64 stride_x, i64 stride_y, int M, int N, float eps, int flags) {
  constexpr int VEC = 16 / sizeof(T);
  static_assert(VEC == 8, "16-bit x only");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float shm[3 * MAX_WARPS];
  Raw<T, VEC>* held = reinterpret_cast<Raw<T, VEC>*>(smem_raw) + threadIdx.x;   // slot k at held[k * THREADS]
  const int tid = threadIdx.x;
  // column of this thread's vector k; vectors past N hold nothing and are skipped
  auto col = [&](int k) { return (tid + k * THREADS) * VEC; };

  {
    const i64 row = blockIdx.x;
    const T* xr = x + row * stride_x;
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
    T* yr = y + row * stride_y;
#pragma unroll
    for (int k = 0; k < NPT + SNPT; ++k) {
      const int c = col(k);
      if (c >= N) continue;
      Raw<P, VEC> wv, bv;
      if (flags & 1) wv.load(w + c);
      if (flags & 2) bv.load(b + c);
      const Raw<T, VEC> u = k < NPT ? v[k < NPT ? k : 0] : held[(k - NPT) * THREADS];
      float out[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        float o = (u[i] - mean) * rstd;
        if (flags & 1) o *= wv[i];
        if (flags & 2) o += bv[i];
        out[i] = (flags & 8) && o < 0.0f ? 0.0f : o;
      }
      store_f32<T, VEC>(yr + c, out);
    }
  }
}

// ------------------------------------------------------------------ entry points
// layer_norm_fwd_<dtype>[_pf32]_<form>: the op's parameters (aot/specs/layer_norm.py: the
// variants and the calls each takes; M sizes the grid, one block a row).  512 threads, two
// blocks an SM (64 registers a thread at most), NPT vectors a thread in registers and SNPT in
// shared memory (SNPT * 8 KiB a block):
// - n32768: 4 + 4, rows up to 32768 wide;
// - n65536: 8 + 8, rows up to 65536 wide.
// Register spills cost more than shared memory: through ctypes on an H100 at 4096 x 32768 bf16,
// 8 + 0 (32 bytes spilled) ran at 82.8% of copy, 4 + 4 at 88.3%, 6 + 2 at 87.8%; the weight and
// bias fixed at compile time or loaded one vector ahead spilled 120-370 bytes and ran at 49-68%;
// three blocks an SM (40 registers) gained nothing (docs/benchmarks.md, "LayerNorm's wide rows in
// CUDA C++").
#define LAYER_NORM_THREADS 512
#define LN_FWD(T, P, NAME, FORM, NPT, SNPT)                                                              \
  extern "C" __global__ void __launch_bounds__(LAYER_NORM_THREADS, 2) layer_norm_fwd_##NAME##_##FORM( \
      const T* x, T* y, const P* w, const P* b, i64 stride_x, i64 stride_y, int M, int N, float eps,     \
      int flags) {                                                                                       \
    layer_norm_fwd_row<T, P, LAYER_NORM_THREADS, NPT, SNPT>(x, y, w, b, stride_x, stride_y, M, N, eps, flags); \
  }
#define LN_FWD_FORMS(T, P, NAME) \
  LN_FWD(T, P, NAME, n32768, 4, 4)  \
  LN_FWD(T, P, NAME, n65536, 8, 8)

LN_FWD_FORMS(bf16_t, bf16_t, bf16)
LN_FWD_FORMS(half_t, half_t, fp16)
LN_FWD_FORMS(bf16_t, float, bf16_pf32)
LN_FWD_FORMS(half_t, float, fp16_pf32)
