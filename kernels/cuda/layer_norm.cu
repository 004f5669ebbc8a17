// LayerNorm's forward for 16-bit x, 16-byte aligned, 2048 < N <= 65536, from 2048 rows;
// kernels/triton/layer_norm.py has the math and every other case.
//
//     y = act((x - mean) * rstd * w + b),   rstd = 1 / sqrt(var + eps),   act = identity or relu
//
// One block a row, which it holds on chip from its first load to its last store
// (kernels/cuda/held_row.cuh), so x is read from DRAM once and the row's two statistics take one
// reduction: the Triton forms read a row wider than 4096 twice (the second time mostly from L2)
// and ran at 75-93% of copy on an H100, 64-78% at widths that are not a power of two (5120,
// 6144: a chunk half masked), 80-84% at 3072 (a 4096-wide block a quarter masked).
// - Rows up to 16384 wide (the "r4" forms): blockDim.x = 32 * ceil(N / 1024) threads, 4 vectors
//   a thread in registers, several rows an SM.  With weight and bias and no ReLU (flags & 11 ==
//   3, what nn.LayerNorm calls) the flags are fixed at compile time: fewer registers a thread
//   (40 against 53-60 when measured: at 16384 wide 98.7% of copy on an H100 instead of 91.0%,
//   three blocks an SM instead of two; 32 against 46 since the statistics' tree merge).
// - Wider rows: 512 threads, 8 vectors a thread in registers and 8 in shared memory (64 KiB of
//   each a block at 65536 wide), two blocks an SM, one loading while the other reduces and
//   stores.
// Fewer rows (M < 2048) keep the Triton forms: one block a row fills fewer waves (1024 x 32768:
// 71-72% of copy against 75.8%; 1024 x 4096: 51.6% against 54.4%).
//
// flags: 1 weight, 2 bias, 4 weight and bias stored in fp32 (a separate entry point: P), 8 ReLU.
#include "held_row.cuh"

// ------------------------------------------------------------------ entry points
// layer_norm_fwd_<dtype>[_pf32]_<form>: the op's parameters (aot/specs/layer_norm.py: the
// variants and the calls each takes; M sizes the grid, one block a row).
// - r4: rows up to 16384 wide on blockDim.x threads (up to 512), 4 vectors a thread in registers;
//   r4_wb the same with flags fixed to weight and bias.
// - n32768, n65536: 512 threads, two blocks an SM (64 registers a thread at most), NPT vectors a
//   thread in registers and SNPT in shared memory (SNPT * 8 KiB a block): 4 + 4 for rows up to
//   32768 wide, 8 + 8 up to 65536.
// Register spills cost more than shared memory: through ctypes on an H100 at 4096 x 32768 bf16,
// 8 + 0 (32 bytes spilled) ran at 82.8% of copy, 4 + 4 at 88.3%, 6 + 2 at 87.8%; the weight and
// bias fixed at compile time or loaded one vector ahead spilled 120-370 bytes and ran at 49-68%;
// three blocks an SM (40 registers) gained nothing (docs/benchmarks.md, "LayerNorm's wide rows in
// CUDA C++").
#define LAYER_NORM_THREADS 512
#define LN_ENTRY(T, P, NAME, FORM, BOUNDS, ...)                                                               \
  extern "C" __global__ void BOUNDS layer_norm_fwd_##NAME##_##FORM(const T* x, T* y, const P* w, const P* b,  \
                                                                  i64 stride_x, i64 stride_y, int M, int N,    \
                                                                  float eps, int flags) {                      \
    held_row_fwd<T, P, __VA_ARGS__>(x + (i64)blockIdx.x * stride_x, y + (i64)blockIdx.x * stride_y, w, b, N,     \
                                    eps, flags);                                                               \
  }
// 512 threads, NPT vectors a thread in registers and SNPT in shared memory
#define LN_FWD(T, P, NAME, FORM, NPT, SNPT) \
  LN_ENTRY(T, P, NAME, FORM, __launch_bounds__(LAYER_NORM_THREADS, 2), LAYER_NORM_THREADS, NPT, SNPT, Norm::LN)
// blockDim.x threads, NPT vectors a thread in registers; FLAGS: -1 (given at run time) or fixed
#define LN_FWD_ROW(T, P, NAME, FORM, NPT, FLAGS) \
  LN_ENTRY(T, P, NAME, FORM, __launch_bounds__(LAYER_NORM_THREADS), 0, NPT, 0, Norm::LN, 1, FLAGS)
#define LN_FWD_FORMS(T, P, NAME)        \
  LN_FWD_ROW(T, P, NAME, r4, 4, -1)    \
  LN_FWD_ROW(T, P, NAME, r4_wb, 4, 3)  \
  LN_FWD(T, P, NAME, n32768, 4, 4)     \
  LN_FWD(T, P, NAME, n65536, 8, 8)

LN_FWD_FORMS(bf16_t, bf16_t, bf16)
LN_FWD_FORMS(half_t, half_t, fp16)
LN_FWD_FORMS(bf16_t, float, bf16_pf32)
LN_FWD_FORMS(half_t, float, fp16_pf32)
