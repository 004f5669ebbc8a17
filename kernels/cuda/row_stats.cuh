// Helpers for kernels where a block normalises one row at a time (kernels/cuda/ada_layer_norm.cu):
// VEC-element loads and stores as fp32, a thread's tile of a row (vector k of thread t at column
// base + (t + k * blockDim.x) * VEC), values held as stored until used (Raw), and deterministic
// block reductions: Chan's merge of per-thread exact two-pass statistics (mean and sum of
// squared deviations: no cancellation for rows with a large mean), and plain sums, each a warp
// tree then the warps in order, so every thread holds the same value.
#pragma once
#include "fa_common.cuh"

#define MAX_WARPS 32

// ------------------------------------------------------------------ VEC elements as fp32
// Accesses are at most 16 bytes, so a vector of 8 fp32 values is two accesses.
template <typename P, int VEC>
__device__ __forceinline__ void load_f32(const P* __restrict__ p, float (&out)[VEC]) {
  constexpr int C = (16 / (int)sizeof(P)) < VEC ? (16 / (int)sizeof(P)) : VEC;
#pragma unroll
  for (int c = 0; c < VEC / C; ++c) {
    const Vec<P, C> v = load_vec<P, C>(p + c * C);
#pragma unroll
    for (int i = 0; i < C; ++i) out[c * C + i] = elem_f32(v, i);
  }
}

template <typename P, int VEC>
__device__ __forceinline__ void store_f32(P* __restrict__ p, const float (&in)[VEC]) {
  constexpr int C = (16 / (int)sizeof(P)) < VEC ? (16 / (int)sizeof(P)) : VEC;
#pragma unroll
  for (int c = 0; c < VEC / C; ++c) {
    Vec<P, C> v;
#pragma unroll
    for (int i = 0; i < C; ++i) v.v[i] = from_float<P>(in[c * C + i]);
    store_vec<P, C>(p + c * C, v);
  }
}

// ------------------------------------------------------------------ tiles
// Column of this thread's vector k in the tile starting at `base`.  Aligned variants have
// N % VEC == 0, so a vector is either wholly inside the row or wholly outside.
__device__ __forceinline__ i64 col_of(i64 base, int k, int vec) {
  return base + ((i64)threadIdx.x + (i64)k * blockDim.x) * vec;
}

template <typename T, int VEC, int NPT>
__device__ __forceinline__ void load_tile(const T* __restrict__ row, i64 base, i64 N, float (&v)[NPT][VEC]) {
#pragma unroll
  for (int k = 0; k < NPT; ++k) {
    const i64 c = col_of(base, k, VEC);
    if (c < N) {
      load_f32<T, VEC>(row + c, v[k]);
    } else {
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[k][i] = 0.0f;
    }
  }
}

// VEC elements as stored, in 16-byte pieces, converted where they are used: resident rows hold
// x, dy, scale and shift this way (half the registers of fp32 for 16-bit types), so that more
// rows are in flight per SM.
template <typename P, int VEC>
struct Raw {
  static constexpr int C = (16 / (int)sizeof(P)) < VEC ? (16 / (int)sizeof(P)) : VEC;
  Vec<P, C> part[VEC / C];
  __device__ __forceinline__ void load(const P* __restrict__ p) {
#pragma unroll
    for (int c = 0; c < VEC / C; ++c) part[c] = load_vec<P, C>(p + c * C);
  }
  __device__ __forceinline__ float operator[](int i) const { return elem_f32(part[i / C], i % C); }
  // An empty asm that stands for a change to the registers: what reads them comes after it.
  // Called on each vector once the last load of a row is issued, it keeps every load in flight
  // before the first use; left alone, the compiler may convert each vector right after its own
  // load, and each load's latency is then paid in turn (LayerNorm's 3072-16384-wide rows ran
  // at 64-83% of copy that way, 91-99% held; docs/benchmarks.md).
  __device__ __forceinline__ void hold() {
    unsigned* u = reinterpret_cast<unsigned*>(part);
#pragma unroll
    for (int j = 0; j < (int)sizeof(part) / 4; ++j) asm volatile("" : "+r"(u[j]));
  }
};

// ------------------------------------------------------------------ reductions
struct Stats {  // count, mean and sum of squared deviations of a set of values
  float n, mean, m2;
};

// Chan et al.'s pairwise update: exact in exact arithmetic, no cancellation in floating point.
// Empty sets are {0, 0, 0}; then f is 0 or 1 and the update returns the other operand exactly,
// without a branch.  (__fdividef: 2 ulp, far below what the statistics need.)
__device__ __forceinline__ Stats merge(Stats a, Stats b) {
  const float n = a.n + b.n;
  const float d = b.mean - a.mean, f = __fdividef(b.n, fmaxf(n, 1.0f));
  // d * (d * (a.n * f)): with either side empty the product is 0 even where d * d overflows
  return {n, a.mean + d * f, a.m2 + b.m2 + d * (d * (a.n * f))};
}

// v[k][i]: element i of this thread's vector k, as float (a float[VEC] or a Raw<T, VEC>).
template <int VEC, int NPT, typename V>
__device__ __forceinline__ Stats tile_stats(const V (&v)[NPT], i64 base, i64 N) {
  float sum = 0.0f, n = 0.0f;
#pragma unroll
  for (int k = 0; k < NPT; ++k)
    if (col_of(base, k, VEC) < N) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum += v[k][i];
      n += VEC;
    }
  if (n == 0.0f) return {0.0f, 0.0f, 0.0f};
  const float mean = __fdividef(sum, n);
  float m2 = 0.0f;
#pragma unroll
  for (int k = 0; k < NPT; ++k)
    if (col_of(base, k, VEC) < N) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) m2 += (v[k][i] - mean) * (v[k][i] - mean);
    }
  return {n, mean, m2};
}

// The block's merged Stats, in every thread: a tree within each warp, then warp 0 merges the
// warps' results in a shuffle tree and shares its lane 0's through shared memory (a fixed order:
// one deterministic answer).  Every thread merging the warps' results one after another cost 15
// merges a thread in a 512-thread block, about 180 instructions a row, which the held rows could
// not afford on an H200 (issue-bound at 16384 wide).
__device__ __forceinline__ Stats shfl_down(Stats s, int o) {
  return {__shfl_down_sync(0xffffffffu, s.n, o), __shfl_down_sync(0xffffffffu, s.mean, o),
          __shfl_down_sync(0xffffffffu, s.m2, o)};
}

__device__ __forceinline__ Stats block_stats(Stats s, float* shm) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s = merge(s, shfl_down(s, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) {
    shm[warp] = s.n;
    shm[MAX_WARPS + warp] = s.mean;
    shm[2 * MAX_WARPS + warp] = s.m2;
  }
  __syncthreads();
  if (warp == 0) {
    Stats r = {0.0f, 0.0f, 0.0f};
    if (lane < warps) r = {shm[lane], shm[MAX_WARPS + lane], shm[2 * MAX_WARPS + lane]};
#pragma unroll 1
    for (int o = 16; o > 0; o >>= 1)
      if (o < warps) r = merge(r, shfl_down(r, o));
    if (lane == 0) {
      shm[0] = r.n;   // every lane of warp 0 has read its slots: its shuffles came after
      shm[MAX_WARPS] = r.mean;
      shm[2 * MAX_WARPS] = r.m2;
    }
  }
  __syncthreads();
  const Stats r = {shm[0], shm[MAX_WARPS], shm[2 * MAX_WARPS]};
  __syncthreads();  // shm is reused by the next reduction
  return r;
}

// K sums over the block, in every thread (a warp tree, then the warps in order).
template <int K>
__device__ __forceinline__ void block_sums(float (&v)[K], float* shm) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += __shfl_down_sync(0xffffffffu, v[k], o);
  }
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) shm[k * MAX_WARPS + warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = shm[k * MAX_WARPS];
  for (int w = 1; w < warps; ++w) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += shm[k * MAX_WARPS + w];
  }
  __syncthreads();  // shm is reused by the next reduction
}

__device__ __forceinline__ void block_sum2(float& a, float& b, float* shm) {
  float v[2] = {a, b};
  block_sums<2>(v, shm);
  a = v[0];
  b = v[1];
}

// mean and rstd of a row from its merged Stats.
__device__ __forceinline__ void finish_stats(Stats s, i64 N, float eps, float& mean, float& rstd) {
  mean = s.mean;
  rstd = rsqrtf(fmaxf(s.m2, 0.0f) / (float)N + eps);
}

// Row statistics (mean, rstd) of a row walked tile by tile (v holds the last tile afterwards).
// Resident rows use tile_stats and block_stats on the row they hold.
template <typename T, int VEC, int NPT>
__device__ __forceinline__ void row_stats(const T* __restrict__ xr, i64 N, float eps, float (&v)[NPT][VEC],
                                          float* shm, float& mean, float& rstd) {
  const i64 tile = (i64)blockDim.x * VEC * NPT;
  Stats s = {0.0f, 0.0f, 0.0f};
  for (i64 base = 0; base < N; base += tile) {
    load_tile<T, VEC, NPT>(xr, base, N, v);
    s = merge(s, tile_stats<VEC, NPT>(v, base, N));
  }
  finish_stats(block_stats(s, shm), N, eps, mean, rstd);
}
