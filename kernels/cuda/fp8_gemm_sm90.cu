// fp8_gemm on sm90 (CUDA C++, NVRTC for sm_90a): c = (a @ b^T) * a_scale * b_scale (+ bias),
// a (M, K) and b (N, K) e4m3fn, K-major (like F.linear); fp32 sums promoted every 128 of K.
//
// The FP8 tensor cores accumulate with reduced precision, so the partial sums of each 128-deep
// K step are added into an fp32 accumulator in registers (as cuBLAS does without fast
// accumulation).  aot/specs/fp8_gemm.py sends the promoted calls with many rows here
// (docs/benchmarks.md has the measurements against the Triton kernels it replaces).
//
// One persistent block per SM walks the output's 128 x 256 tiles; 384 threads in three warp
// groups, linked by mbarriers over a ring of STAGES shared-memory stages:
//   group 0, the producer: one thread issues the TMA copies of a's and b's boxes for each
//     128-deep K step (128 and 256 rows of 128 bytes, stored with the 128-byte swizzle that
//     wgmma reads); `full[s]` completes when a stage's bytes have landed;
//   groups 1 and 2, the consumers: rows 64 * (g - 1) .. + 63 of the tile, its 256 columns in
//     two halves of 128.  Per K step and half: part = four wgmma m64n128k32, then
//     acc[half] += part; `empty[s]` hands the stage back to the producer.  While one group
//     adds, the other group's wgmmas keep the tensor cores busy.
// The epilogue scales (a_scale per row or one, b_scale per column or one), adds the bias,
// converts and stores from registers.
//
// Arguments: the two TMA descriptors (encoded by the dispatch, aot/runtime: a as K x M
// bytes in 128 x 128 boxes, b as K x N in 128 x 256), then fp8_gemm's C parameters in order.
// The dispatch picks this kernel only for 16-byte aligned a, b, c, strides and K, and N a
// multiple of 8 (columns are stored 8 at a time); bf16 or fp16 output (fp32 calls keep the Triton
// kernels: aot/specs/fp8_gemm.py).
#include "fa_common.cuh"

namespace {

constexpr int BM = 128, BN = 256, BK = 128;   // the tile; BK bytes = one swizzled row of a box
constexpr int STAGES = 4;
constexpr int A_BYTES = BM * BK, B_BYTES = BN * BK, STAGE_BYTES = A_BYTES + B_BYTES;  // 48 KiB
constexpr int GROUP_M = 8;   // row tiles walked side by side (consecutive blocks share b's tiles in L2)
// setmaxnreg moves registers between the groups of a block launched with 168 a thread (384
// threads, one block an SM): the consumers can take no more than the producer gives up.
constexpr int PRODUCER_REGS = 64, CONSUMER_REGS = 216;
static_assert(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= 384 * 168, "setmaxnreg would wait forever");

// Dynamic shared memory a block needs (aot/specs/fp8_gemm.py's FP8_GEMM_SM90_CUDA_SHARED):
// STAGES * STAGE_BYTES, 1024 to align them, 64 for the barriers.

struct __align__(64) TensorMap { unsigned long long words[16]; };   // a CUtensorMap

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}

__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  asm volatile(
      "{\n .reg .pred done;\n WAIT:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}

__device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

// The barrier's arrival, expecting `bytes` more from TMA copies in this phase.
__device__ __forceinline__ void mbar_expect(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

// TMA: the box at (k, row) of `map` into shared memory at dst, its bytes counted on bar
// (rows past the tensor's end and K past its end arrive as zeros).
__device__ __forceinline__ void tma_load(unsigned dst, const TensorMap* map, int k, int row, unsigned bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
      ::"r"(dst), "l"(map), "r"(k), "r"(row), "r"(bar) : "memory");
}

// wgmma's shared-memory descriptor of a K-major tile with the 128-byte swizzle: rows of 128
// bytes, 8-row groups 1024 bytes apart, the tile 1024-byte aligned.
__device__ __forceinline__ unsigned long long smem_desc(unsigned addr) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

// d (+)= a (64 x 32 e4m3, shared) * b (128 x 32 e4m3, shared)^T; d is not read when !accumulate.
__device__ __forceinline__ void wgmma_m64n128k32(float (&d)[64], unsigned long long a, unsigned long long b,
                                                 int accumulate) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(accumulate));
}

// Registers in flight in a wgmma: the compiler must not move their reads or writes across this.
__device__ __forceinline__ void hold(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Tile t of the walk: GROUP_M row tiles side by side, then the next group.
__device__ __forceinline__ void tile_coords(int t, int tiles_m, int tiles_n, int& m0, int& n0) {
  const int per_group = GROUP_M * tiles_n;
  const int first = (t / per_group) * GROUP_M;
  const int rows = min(tiles_m - first, GROUP_M);
  m0 = (first + (t % per_group) % rows) * BM;
  n0 = ((t % per_group) / rows) * BN;
}

template <typename T> __device__ __forceinline__ unsigned pack2(float x, float y);   // x in the low half
template <> __device__ __forceinline__ unsigned pack2<bf16_t>(float x, float y) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %2, %1;" : "=r"(r) : "f"(x), "f"(y));
  return r;
}
template <> __device__ __forceinline__ unsigned pack2<half_t>(float x, float y) {
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %2, %1;" : "=r"(r) : "f"(x), "f"(y));
  return r;
}

__device__ __forceinline__ unsigned pick(unsigned v0, unsigned v1, unsigned v2, unsigned v3, int i) {
  return (i & 2) ? ((i & 1) ? v3 : v2) : ((i & 1) ? v1 : v0);
}

// A quad of lanes (q = lane % 4) holds word k = the column pair (2q, 2q + 1) of group k of four
// 8-column groups of one row; after the transpose lane q holds group q's four words (16 bytes).
__device__ __forceinline__ uint4 quad_transpose(unsigned a0, unsigned a1, unsigned a2, unsigned a3, int q) {
  const bool hi = q & 2, odd = q & 1;
  const unsigned o0 = hi ? a2 : a0, o1 = hi ? a3 : a1;   // groups sharing bit 1 with q: kept
  const unsigned r0 = __shfl_xor_sync(0xffffffffu, hi ? a0 : a2, 2);
  const unsigned r1 = __shfl_xor_sync(0xffffffffu, hi ? a1 : a3, 2);
  const unsigned own = odd ? o1 : o0, far = odd ? r1 : r0;   // group q: lanes q and q ^ 2's words
  const unsigned u0 = __shfl_xor_sync(0xffffffffu, odd ? o0 : o1, 1);   // lane q ^ 1's
  const unsigned u1 = __shfl_xor_sync(0xffffffffu, odd ? r0 : r1, 1);   // lane q ^ 3's
  return make_uint4(pick(own, u0, far, u1, q), pick(own, u0, far, u1, q ^ 1), pick(own, u0, far, u1, q ^ 2),
                    pick(own, u0, far, u1, q ^ 3));
}

template <typename T>
__device__ __forceinline__ void fp8_gemm_sm90(
    const TensorMap* map_a, const TensorMap* map_b,
    T* __restrict__ c,                    // (M, N), row stride stride_cm elements
    const float* __restrict__ a_scale,    // a_scale[m * stride_sa] (stride 0: one scale)
    const float* __restrict__ b_scale,    // b_scale[n * stride_sb]
    const T* __restrict__ bias,           // (N,), read when has_bias
    i64 stride_cm, i64 stride_sa, i64 stride_sb, int M, int N, int K, int has_bias) {
  extern __shared__ unsigned char smem_raw[];
  const unsigned base = (smem_u32(smem_raw) + 1023) & ~1023u;   // the swizzle needs 1024-byte alignment
  const unsigned full = base + STAGES * STAGE_BYTES, empty = full + 8 * STAGES;
  const int tid = threadIdx.x, group = tid / 128;
  const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN, tiles = tiles_m * tiles_n;
  const int k_steps = (K + BK - 1) / BK;

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full + 8 * s, 1);    // the producer's arrival, with the stage's TMA bytes
      mbar_init(empty + 8 * s, 8);   // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (group == 0) {   // the producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(PRODUCER_REGS));
    if (tid != 0) return;
    int step = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      int m0, n0;
      tile_coords(t, tiles_m, tiles_n, m0, n0);
      for (int ks = 0; ks < k_steps; ++ks, ++step) {
        const int s = step % STAGES;
        mbar_wait(empty + 8 * s, ((step / STAGES) & 1) ^ 1);   // a fresh barrier passes parity 1
        const unsigned sa = base + s * STAGE_BYTES;
        mbar_expect(full + 8 * s, STAGE_BYTES);
        tma_load(sa, map_a, ks * BK, m0, full + 8 * s);
        tma_load(sa + A_BYTES, map_b, ks * BK, n0, full + 8 * s);
      }
    }
    return;
  }

  // the consumers
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(CONSUMER_REGS));
  const int g = group - 1, warp = (tid % 128) / 32, lane = tid % 32;
  float acc[2][64], part[64];
  int step = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int m0, n0;
    tile_coords(t, tiles_m, tiles_n, m0, n0);
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[h][i] = 0.f;
    for (int ks = 0; ks < k_steps; ++ks, ++step) {
      const int s = step % STAGES;
      mbar_wait(full + 8 * s, (step / STAGES) & 1);
      const unsigned sa = base + s * STAGE_BYTES + g * 64 * BK, sb = base + s * STAGE_BYTES + A_BYTES;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // part = a[this group's 64 rows, K step] @ b[half h's 128 columns, K step]^T, 32 of K a wgmma
        hold(part);
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < BK / 32; ++kk)
          wgmma_m64n128k32(part, smem_desc(sa + kk * 32), smem_desc(sb + h * 128 * BK + kk * 32), kk);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        hold(part);
        // the promotion: this K step's partial sums added in fp32
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[h][i] += part[i];
      }
      if (lane == 0) mbar_arrive(empty + 8 * s);
    }
    // epilogue.  wgmma's m64nN layout: register i of thread (warp, lane) holds row
    // 16 * warp + lane / 4 + 8 * (i / 2 % 2), column 8 * (i / 4) + 2 * (lane % 4) + i % 2.
    // Scales and bias are loaded ahead of the stores: a load after a store waits for it (the
    // per-row form ran 7-8% slower that way).
    const float sb_all = stride_sb ? 1.f : b_scale[0];
    float row_scale[2];   // rows lane / 4 and lane / 4 + 8 of the warp's 16
#pragma unroll
    for (int half = 0; half < 2; ++half)
      row_scale[half] = a_scale[min(m0 + g * 64 + 16 * warp + lane / 4 + 8 * half, M - 1) * stride_sa] * sb_all;
#pragma unroll
    for (int q = 0; q < 4; ++q) {   // a quarter of the thread's columns at a time: 16, 64 apart
      const int h = q / 2, j0 = 8 * (q % 2);
      float col_scale[16], col_bias[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int n = min(n0 + h * 128 + 8 * (j0 + j / 2) + 2 * (lane % 4) + j % 2, N - 1);
        col_scale[j] = stride_sb ? b_scale[n * stride_sb] : 1.f;
        col_bias[j] = has_bias ? to_float(bias[n]) : 0.f;
      }
      // 16-byte stores: each quad of lanes trades words so that a lane stores one 8-column
      // group of its row (storing each lane's 4-byte pairs, 8 rows per instruction, took
      // 10% of the time at 4096^3).  Every lane shuffles; rows past M only skip the store.
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = m0 + g * 64 + 16 * warp + lane / 4 + 8 * half;
        T* row = c + min(m, M - 1) * stride_cm;
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          unsigned w[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const int j = 4 * t + k, i = 4 * (j0 + j) + 2 * half;
            w[k] = pack2<T>(acc[h][i] * row_scale[half] * col_scale[2 * j] + col_bias[2 * j],
                            acc[h][i + 1] * row_scale[half] * col_scale[2 * j + 1] + col_bias[2 * j + 1]);
          }
          const uint4 v = quad_transpose(w[0], w[1], w[2], w[3], lane % 4);
          const int n = n0 + h * 128 + 8 * (j0 + 4 * t + lane % 4);
          if (m < M && n < N) *reinterpret_cast<uint4*>(row + n) = v;   // N: a multiple of 8
        }
      }
    }
  }
}

}  // namespace

// One kernel per 16-bit output dtype; the arguments after the descriptors are fp8_gemm's C
// parameters (aot/specs/fp8_gemm.py's _PARAMS), those this kernel does not read included.
#define FP8_GEMM_SM90(NAME, T)                                                                          \
  extern "C" __global__ void __launch_bounds__(384, 1) NAME(                                            \
      const __grid_constant__ TensorMap map_a, const __grid_constant__ TensorMap map_b,                 \
      const unsigned char* a, const unsigned char* b, T* c, const float* a_scale, const float* b_scale, \
      const T* bias, i64 stride_am, i64 stride_bn, i64 stride_cm, i64 stride_sa, i64 stride_sb, int M,   \
      int N, int K, int has_bias, int fast_accum, void* scratch, i64 scratch_bytes) {                    \
    fp8_gemm_sm90<T>(&map_a, &map_b, c, a_scale, b_scale, bias, stride_cm, stride_sa, stride_sb, M, N,   \
                     K, has_bias);                                                                       \
  }

FP8_GEMM_SM90(fp8_gemm_sm90_bf16, bf16_t)
FP8_GEMM_SM90(fp8_gemm_sm90_fp16, half_t)
