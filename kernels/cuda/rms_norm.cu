// RMSNorm's forward for wide rows of 16-bit x (32768 < N <= 65536, 16-byte aligned, from 1024
// rows); kernels/triton/rms_norm.py has the math and every other case.
//
//     y = x * rstd [* w],   rstd = 1 / sqrt(mean(x^2) + eps)
//
// One block a row, which it holds on chip (kernels/cuda/held_row.cuh), so x is read from DRAM
// once; the Triton form reads a row this wide twice (the second time mostly from L2).
#include "held_row.cuh"

// rms_norm_fwd_<dtype>_<form> (with a weight) and rms_norm_fwd_<dtype>_<form>_nw (w is null):
// the op's parameters (aot/specs/rms_norm.py); M sizes the grid, one block a row.  4 vectors a
// thread in registers and 12 in shared memory (96 KiB a block, two blocks an SM), the weight two
// vectors at a time: 60-64 registers and no spill; 8 + 8 with the weight a vector at a time only
// tied with the Triton form.  Whether there is a weight is fixed at compile time: read at run
// time it spilled 68-80 bytes a thread (docs/benchmarks.md, "LayerNorm's wide rows in CUDA C++",
// its RMSNorm part).
#define RMS_NORM_THREADS 512
#define RMS_ENTRY(T, NAME, FORM, NPT, SNPT, G, FLAGS)                                                        \
  extern "C" __global__ void __launch_bounds__(RMS_NORM_THREADS, 2) rms_norm_fwd_##NAME##_##FORM(           \
      const T* x, T* y, const T* w, i64 stride_x, i64 stride_y, int M, int N, float eps) {                  \
    held_row_fwd<T, T, RMS_NORM_THREADS, NPT, SNPT, Norm::RMS, G, FLAGS>(                                   \
        x + (i64)blockIdx.x * stride_x, y + (i64)blockIdx.x * stride_y, w, nullptr, N, eps, FLAGS);         \
  }
// NPT vectors a thread in registers, SNPT in shared memory, the weight G vectors at a time
#define RMS_FWD(T, NAME, FORM, NPT, SNPT, G)      \
  RMS_ENTRY(T, NAME, FORM, NPT, SNPT, G, 1)       \
  RMS_ENTRY(T, NAME, FORM##_nw, NPT, SNPT, G, 0)

#define RMS_FWD_FORMS(T, NAME) \
  RMS_FWD(T, NAME, n65536, 4, 12, 2)

RMS_FWD_FORMS(bf16_t, bf16)
RMS_FWD_FORMS(half_t, fp16)
