// LayerNorm's forward for wide rows of 16-bit x (16384 < N <= 65536, 16-byte aligned, from 2048
// rows); kernels/triton/layer_norm.py has the math and every other case.
//
//     y = act((x - mean) * rstd * w + b),   rstd = 1 / sqrt(var + eps),   act = identity or relu
//
// One block a row, which it holds on chip (kernels/cuda/held_row.cuh), so x is read from DRAM
// once: the Triton forms read a row this wide twice, the second time mostly from L2, and ran at
// 79-82% of copy at 65536 wide on an H100.  With 8 vectors a thread in registers and 8 in shared
// memory a 65536-wide row fits two blocks an SM (64 KiB of registers and 64 KiB of shared memory
// each), one loading while the other reduces and stores.  Few rows (M < 2048) keep the Triton
// forms: one block a row fills fewer waves (1024 x 32768: 71-72% of copy against 75.8%).
//
// flags: 1 weight, 2 bias, 4 weight and bias stored in fp32 (a separate entry point: P), 8 ReLU.
#include "held_row.cuh"

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
    held_row_fwd<T, P, LAYER_NORM_THREADS, NPT, SNPT, Norm::LN>(x + (i64)blockIdx.x * stride_x,           \
                                                             y + (i64)blockIdx.x * stride_y, w, b, N, eps, flags); \
  }
#define LN_FWD_FORMS(T, P, NAME) \
  LN_FWD(T, P, NAME, n32768, 4, 4)  \
  LN_FWD(T, P, NAME, n65536, 8, 8)

LN_FWD_FORMS(bf16_t, bf16_t, bf16)
LN_FWD_FORMS(half_t, half_t, fp16)
LN_FWD_FORMS(bf16_t, float, bf16_pf32)
LN_FWD_FORMS(half_t, float, fp16_pf32)
