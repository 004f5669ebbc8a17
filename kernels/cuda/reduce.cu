// Sum of squares and mean of absolute values over one dimension, forward and backward.
//
//   kind 0: out = sum_r x[o, r, i]^2            dx = 2 x dy[o, i]
//   kind 1: out = sum_r |x[o, r, i]| / R        dx = sign(x) dy[o, i] / R
//
// x is viewed as (M, R, N) = (outer, reduced, inner) with element strides (stride_o, stride_r, 1).
// Accumulation is fp32 (fp64 for fp64) in a fixed order, so results are deterministic.
//
// Forward, two shapes of kernel:
// - reduce_rows (N = 1, the reduced dimension is contiguous): L lanes of a warp (L a power of
//   two <= 32) reduce one row chunk, VEC elements per load, then combine by shuffles.
// - reduce_cols (N > 1): a block of RED_COLS_THREADS threads is L lanes along the inner
//   dimension (16 L bytes of each row: L vectors, or 16 L / sizeof(T) elements in the one-element
//   variants) by RED_COLS_THREADS / lanes along the reduced one; each thread sums its columns
//   over its rows, RED_COLS_UNROLL rows' loads in flight, then the block adds its rows' sums in
//   shared memory, a fixed tree.
// Either splits the reduced dimension into S chunks when that is what fills the GPU or bounds
// the length of a sequential sum: with S = 1 the kernel writes out itself; otherwise it writes
// per-chunk partial sums (S, outputs) and reduce_finish adds them in a fixed order.
#include "elementwise.cuh"

#define RED_UNROLL 4  // loads in flight per thread in reduce_rows
// reduce_cols: small blocks over narrow column tiles, 8 rows' loads in flight a thread; the
// tiles and splits the caller picks (ops/reduce._cols_launch) were measured with these
// (docs/benchmarks.md, "Reductions over a leading dimension: narrow tiles").
#define RED_COLS_THREADS 128
#define RED_COLS_UNROLL 8

template <int KIND, typename A>
__device__ __forceinline__ A term(A v) {
  return KIND == 0 ? v * v : (v < 0 ? -v : v);
}

template <int KIND, typename A>
__device__ __forceinline__ A finalize(A sum, i64 R) {
  return KIND == 0 ? sum : sum / (A)R;
}

template <typename T, int VEC, int KIND>
__device__ __forceinline__ void reduce_rows(const T* __restrict__ x, T* __restrict__ out,
                                            typename Acc<T>::type* __restrict__ partial, i64 stride_x, i64 M,
                                            i64 N, i64 S, i64 chunk, int L) {
  typedef typename Acc<T>::type A;
  const i64 thread = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const i64 item = thread / L;  // (row, chunk) pair; L divides 32, so a group never straddles warps
  const int lane = (int)(thread % L);
  const bool valid = item < M * S;
  const i64 row = S == 1 ? item : item / S, s = S == 1 ? 0 : item % S;
  A acc[RED_UNROLL];
#pragma unroll
  for (int k = 0; k < RED_UNROLL; ++k) acc[k] = 0;
  if (valid) {
    const T* p = x + row * stride_x;
    const i64 start = s * chunk, end = start + chunk < N ? start + chunk : N;  // start % VEC == 0
    const i64 v1 = end / VEC;
    for (i64 v = start / VEC + lane; v < v1; v += (i64)L * RED_UNROLL) {
      Vec<T, VEC> in[RED_UNROLL];
#pragma unroll
      for (int k = 0; k < RED_UNROLL; ++k)
        if (v + k * L < v1) in[k] = load_vec<T, VEC>(p + (v + k * L) * VEC);
#pragma unroll
      for (int k = 0; k < RED_UNROLL; ++k) {
        if (v + k * L >= v1) break;
        A sum = 0;
#pragma unroll
        for (int i = 0; i < VEC; ++i) sum += term<KIND>(to_acc(in[k].v[i]));
        acc[k] += sum;
      }
    }
    for (i64 e = v1 * VEC + lane; e < end; e += L) acc[0] += term<KIND>(to_acc(p[e]));  // row tail
  }
  A total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  for (int off = L / 2; off > 0; off >>= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
  if (valid && lane == 0) {
    if (S == 1) out[row] = from_acc<T>(finalize<KIND>(total, N));
    else partial[s * M + row] = total;
  }
}

template <typename T, int VEC, int KIND>
__device__ __forceinline__ void reduce_cols(const T* __restrict__ x, T* __restrict__ out,
                                            typename Acc<T>::type* __restrict__ partial,
                                            typename Acc<T>::type* rows_sum,  // shared, RED_COLS_THREADS * VEC
                                            i64 stride_o, i64 stride_r, i64 M, i64 R, i64 N, i64 chunk, int L) {
  typedef typename Acc<T>::type A;
  const int lanes = L * (16 / (int)sizeof(T)) / VEC, TY = RED_COLS_THREADS / lanes;
  const int tx = threadIdx.x % lanes, ty = threadIdx.x / lanes;
  const i64 tiles = (N + (i64)lanes * VEC - 1) / ((i64)lanes * VEC);
  const i64 o = blockIdx.x / tiles, col = ((blockIdx.x % tiles) * lanes + tx) * VEC;
  const i64 r0 = blockIdx.y * chunk + ty, r1 = r0 - ty + chunk < R ? r0 - ty + chunk : R;
  A acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0;
  auto add = [&](const Vec<T, VEC>& v) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] += term<KIND>(to_acc(v.v[i]));
  };
  if (col < N) {  // vector variants have N % VEC == 0: the whole vector is in range
    // this thread's rows are r0, r0 + TY, ...: trips of U = RED_COLS_UNROLL rows, the next
    // trip's loads issued before the previous trip's rows are added (so U loads are in flight
    // whatever order the compiler gives the additions), then a tail of fewer than U rows
    constexpr int U = RED_COLS_UNROLL;
    const T* p = x + o * stride_o + r0 * stride_r + col;
    const i64 step = TY * stride_r;
    i64 left = r1 > r0 ? (r1 - r0 + TY - 1) / TY : 0;
    if (left >= U) {
      Vec<T, VEC> cur[U];
#pragma unroll
      for (int k = 0; k < U; ++k) cur[k] = load_vec_once<T, VEC>(p + k * step);
      for (left -= U, p += U * step; left >= U; left -= U, p += U * step) {
        Vec<T, VEC> next[U];
#pragma unroll
        for (int k = 0; k < U; ++k) next[k] = load_vec_once<T, VEC>(p + k * step);
#pragma unroll
        for (int k = 0; k < U; ++k) {
          add(cur[k]);
          cur[k] = next[k];
        }
      }
#pragma unroll
      for (int k = 0; k < U; ++k) add(cur[k]);
    }
    Vec<T, VEC> tail[U - 1];
#pragma unroll
    for (int k = 0; k < U - 1; ++k)
      if (k < left) tail[k] = load_vec_once<T, VEC>(p + k * step);
#pragma unroll
    for (int k = 0; k < U - 1; ++k)
      if (k < left) add(tail[k]);
  }
  // the block's TY row sums of each column, added by a fixed tree
#pragma unroll
  for (int i = 0; i < VEC; ++i) rows_sum[threadIdx.x * VEC + i] = acc[i];
  __syncthreads();
  for (int h = TY / 2; h > 0; h >>= 1) {
    if (ty < h) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) rows_sum[threadIdx.x * VEC + i] += rows_sum[(threadIdx.x + h * lanes) * VEC + i];
    }
    __syncthreads();
  }
  if (ty == 0 && col < N) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const A total = rows_sum[tx * VEC + i];
      if (gridDim.y == 1) out[o * N + col + i] = from_acc<T>(finalize<KIND>(total, R));
      else partial[(blockIdx.y * M + o) * N + col + i] = total;
    }
  }
}

// out[j] = finalize(sum over s of partial[s, j]).  A block is FINISH_COLS outputs by
// FINISH_GROUPS groups of chunks: group g adds chunks s = g, g + FINISH_GROUPS, ... in order, and
// the group sums are added by a fixed tree, so the order never depends on timing.  The groups
// keep S / 8 loads a thread instead of S: at 16384 x 1024 (S = 66 chunks, 1024 outputs) one
// thread an output left the GPU waiting on chains of 66 loads.
#define FINISH_COLS 32
#define FINISH_GROUPS (EW_THREADS / FINISH_COLS)
template <typename T, int KIND>
__device__ __forceinline__ void reduce_finish(const typename Acc<T>::type* __restrict__ partial, T* __restrict__ out,
                                              typename Acc<T>::type (*sums)[FINISH_COLS + 1], i64 M, i64 S, i64 R) {
  typedef typename Acc<T>::type A;
  const int tx = threadIdx.x % FINISH_COLS, g = threadIdx.x / FINISH_COLS;
  const i64 j = (i64)blockIdx.x * FINISH_COLS + tx;
  A acc = 0;
  if (j < M) {
#pragma unroll 4
    for (i64 s = g; s < S; s += FINISH_GROUPS) acc += partial[s * M + j];
  }
  sums[g][tx] = acc;
  __syncthreads();
  for (int h = FINISH_GROUPS / 2; h > 0; h >>= 1) {
    if (g < h) sums[g][tx] += sums[g + h][tx];
    __syncthreads();
  }
  if (g == 0 && j < M) out[j] = from_acc<T>(finalize<KIND>(sums[0][tx], R));
}

// Backward: dx over (D0, D1, D2) = (M, R, N) for a non-last reduced dimension, or (M, 1, R) for
// the last one; dy[o * stride_go + c * gcol] (gcol = 1: dy follows the inner dimension, 0: one dy
// per row).  dx is contiguous.
template <typename T>
struct BwdParams {
  const T* dy;
  const T* x;
  T* dx;
  i64 stride_o, stride_r, stride_go, gcol, D1, D2;
  typename Acc<T>::type scale;  // 2, or 1 / R
  int kind;
};

template <typename T>
__device__ __forceinline__ BwdParams<T> bwd_params(const T* dy, const T* x, T* dx, i64 stride_o, i64 stride_r,
                                                   i64 stride_go, i64 gcol, i64 R, i64 N, i64 count, int kind) {
  typedef typename Acc<T>::type A;
  return {dy, x, dx, stride_o, stride_r, stride_go, gcol, R, N, kind ? A(1) / (A)count : A(2), kind};
}

// dx's element from x's and dy's: 2 x dy (kind 0, scale 2) or sign(x) dy / count (kind 1, scale 1 / count)
template <typename A>
__device__ __forceinline__ A bwd_value(A v, A g, int kind) {
  return kind == 0 ? v * g : (v > 0 ? g : v < 0 ? -g : A(0));
}

template <typename T, int VEC>
struct ReduceBwd {
  typedef typename Acc<T>::type A;
  struct Frag {
    Vec<T, VEC> x, g;
    i64 out;
  };
  BwdParams<T> p;
  __device__ __forceinline__ ReduceBwd(const BwdParams<T>& prm) : p(prm) {}
  __device__ __forceinline__ void load(Frag& f, const Pos& q) const {
    f.x = load_vec<T, VEC>(p.x + q.o * p.stride_o + q.r * p.stride_r + q.c);
    if (p.gcol) {
      f.g = load_vec<T, VEC>(p.dy + q.o * p.stride_go + q.c);
    } else {
      const T g = p.dy[q.o * p.stride_go];
#pragma unroll
      for (int i = 0; i < VEC; ++i) f.g.v[i] = g;
    }
    f.out = (q.o * p.D1 + q.r) * p.D2 + q.c;
  }
  __device__ __forceinline__ void store(const Frag& f) const {
    Vec<T, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) out.v[i] = from_acc<T>(bwd_value(to_acc(f.x.v[i]), to_acc(f.g.v[i]) * p.scale, p.kind));
    store_vec<T, VEC>(p.dx + f.out, out);
  }
};

// The backward over a non-last dimension with dy following the inner one (gcol = 1) and at least
// RED_BWD_LANES vectors a row: a block is RED_BWD_LANES threads across (a vector each) by
// EW_THREADS / RED_BWD_LANES rows of r, grid (column tiles, row tiles, o); a thread's position
// comes from the grid without division, and it loads its dy vector once.  Row tiles past 65535
// and o past 65535 (CUDA's grid limits) are walked by a loop.  ew_loop's flat index took two
// divisions a thread and 48 registers (this: 36; the swept form, kind fixed, 24): on an H100, bf16, 29.6 us
// against 27.1 at 4096x4096 (torch.compile's kernel 26.9), 397 against 359 at 65536x4096
// (docs/benchmarks.md, the reductions' backward in section "gelu_dropout: four chunks a trip; ...").
#define RED_BWD_LANES 32
template <typename T, int VEC>
__device__ __forceinline__ void reduce_bwd_cols(const BwdParams<T>& p, i64 M, i64 R, i64 N) {
  constexpr int ROWS = EW_THREADS / RED_BWD_LANES;
  const i64 c = ((i64)blockIdx.x * RED_BWD_LANES + threadIdx.x % RED_BWD_LANES) * VEC;
  if (c >= N) return;
  for (i64 o = blockIdx.z; o < M; o += gridDim.z) {
    const Vec<T, VEC> g = load_vec<T, VEC>(p.dy + o * p.stride_go + c);
    for (i64 r = (i64)blockIdx.y * ROWS + threadIdx.x / RED_BWD_LANES; r < R; r += (i64)gridDim.y * ROWS) {
      const Vec<T, VEC> x = load_vec<T, VEC>(p.x + o * p.stride_o + r * p.stride_r + c);
      Vec<T, VEC> out;
#pragma unroll
      for (int i = 0; i < VEC; ++i) out.v[i] = from_acc<T>(bwd_value(to_acc(x.v[i]), to_acc(g.v[i]) * p.scale, p.kind));
      store_vec<T, VEC>(p.dx + (o * R + r) * N + c, out);
    }
  }
}

// One extern "C" entry point per (dtype, vector width): the names the spec table uses.  The
// kind flag picks one of two separately compiled bodies.
#define REDUCE_INSTANCE(T, NAME, VEC)                                                                          \
  extern "C" __global__ void __launch_bounds__(EW_THREADS) reduce_rows_##NAME##_v##VEC(                        \
      const T* x, T* out, Acc<T>::type* partial, i64 stride_x, i64 M, i64 N, i64 S, i64 chunk, int L,          \
      int kind) {                                                                                              \
    if (kind) reduce_rows<T, VEC, 1>(x, out, partial, stride_x, M, N, S, chunk, L);                           \
    else reduce_rows<T, VEC, 0>(x, out, partial, stride_x, M, N, S, chunk, L);                                \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(RED_COLS_THREADS) reduce_cols_##NAME##_v##VEC(                  \
      const T* x, T* out, Acc<T>::type* partial, i64 stride_o, i64 stride_r, i64 M, i64 R, i64 N, i64 S,       \
      i64 chunk, int L, int kind) {                                                                            \
    __shared__ Acc<T>::type rows_sum[RED_COLS_THREADS * VEC];                                                  \
    if (kind) reduce_cols<T, VEC, 1>(x, out, partial, rows_sum, stride_o, stride_r, M, R, N, chunk, L);       \
    else reduce_cols<T, VEC, 0>(x, out, partial, rows_sum, stride_o, stride_r, M, R, N, chunk, L);            \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS) reduce_bwd_##NAME##_v##VEC(          \
      const T* dy, const T* x, T* dx, i64 stride_o, i64 stride_r, i64 stride_go, i64 gcol, i64 M, i64 R,       \
      i64 N, i64 count, int kind) {                                                                            \
    const BwdParams<T> prm = bwd_params(dy, x, dx, stride_o, stride_r, stride_go, gcol, R, N, count, kind);     \
    ew_loop<ReduceBwd, T, VEC>(prm, M, R, N);                                                                  \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(EW_THREADS) reduce_bwd_cols_##NAME##_v##VEC(                    \
      const T* dy, const T* x, T* dx, i64 stride_o, i64 stride_r, i64 stride_go, i64 gcol, i64 M, i64 R,       \
      i64 N, i64 count, int kind) {                                                                            \
    const BwdParams<T> prm = bwd_params(dy, x, dx, stride_o, stride_r, stride_go, gcol, R, N, count, kind);     \
    reduce_bwd_cols<T, VEC>(prm, M, R, N);                                                                     \
  }

#define REDUCE_FINISH_INSTANCE(T, NAME)                                                                        \
  extern "C" __global__ void __launch_bounds__(EW_THREADS) reduce_finish_##NAME(                               \
      const Acc<T>::type* partial, T* out, i64 M, i64 S, i64 R, int kind) {                                    \
    __shared__ Acc<T>::type sums[FINISH_GROUPS][FINISH_COLS + 1];                                              \
    if (kind) reduce_finish<T, 1>(partial, out, sums, M, S, R);                                                \
    else reduce_finish<T, 0>(partial, out, sums, M, S, R);                                                     \
  }

REDUCE_INSTANCE(bf16_t, bf16, 8)
REDUCE_INSTANCE(bf16_t, bf16, 1)
REDUCE_INSTANCE(half_t, fp16, 8)
REDUCE_INSTANCE(half_t, fp16, 1)
REDUCE_INSTANCE(float, fp32, 4)
REDUCE_INSTANCE(float, fp32, 1)
REDUCE_INSTANCE(double, fp64, 2)
REDUCE_INSTANCE(double, fp64, 1)
REDUCE_FINISH_INSTANCE(bf16_t, bf16)
REDUCE_FINISH_INSTANCE(half_t, fp16)
REDUCE_FINISH_INSTANCE(float, fp32)
REDUCE_FINISH_INSTANCE(double, fp64)
