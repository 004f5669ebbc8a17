// Shared machinery of the elementwise CUDA C++ kernels (add_relu, mul_tanh, gelu_dropout,
// reduce's backward): the fp32/fp64 arithmetic type, 16-byte stores, and two loops.
//
// An elementwise kernel visits an index space (D0, D1, D2) in row-major order, VEC consecutive
// elements of the last dimension at a time: one 16-byte access in the aligned variants, one
// element (VEC = 1) in the unaligned ones.  The grid has a thread for every group, so thread t
// visits group t and is done (Inductor's shape; a grid-stride loop of two groups a trip over at
// most 32 blocks an SM ran 2-8% slower at 16M-256M bf16 elements on an H100, and 2x slower
// with a broadcast (N,) operand of 1024; docs/benchmarks.md).  The loop that remains covers a
// grid capped by CUDA's limits.  Coordinates are 64-bit and advanced by a step decomposed once
// per thread.
#pragma once
#include "fa_common.cuh"

#define EW_THREADS 256
#define EW_UNROLL 4  // rows in flight per thread in colsum_loop
// At least 4 blocks (1024 threads) per SM: 64 registers a thread, which holds a trip's loads
// without spilling, and enough warps to hide the memory latency.
#define EW_MIN_BLOCKS 4

// The arithmetic type: fp32 for fp16, bf16 and fp32 data; fp64 for fp64 data.
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type to_acc(T v) { return to_float(v); }
template <> __device__ __forceinline__ double to_acc<double>(double v) { return v; }
template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v) { return from_float<T>(v); }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

// fp32 and fp64 forms of the math the kernels use (NVRTC has no <cmath> overloads).
__device__ __forceinline__ float m_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double m_tanh(double v) { return tanh(v); }

// A position (o, r, c) in a (D0, D1, D2) space.
struct Pos {
  i64 o, r, c;
};

// Positions in a (D0, D1, D2) space: at(e) decomposes a flat index e once, with 32-bit division
// where the whole space fits 32 bits (the common case; 64-bit division is a long dependent chain
// ahead of the first load).  advance() moves a Pos forward by a fixed `step`, decomposed once
// into (so, sr, sc) unless no thread ever advances (step >= the space): c + sc < 2 D2 and
// r + sr + 1 < 2 D1, so one conditional subtraction per level suffices.  One flat row
// (D0 = D1 = 1) and two levels (D1 = 1) skip the divisions they do not need.
struct Stepper {
  i64 D1, D2, so, sr, sc;
  bool flat, narrow;

  __device__ __forceinline__ Stepper(i64 d0, i64 d1, i64 d2, i64 step)
      : D1(d1), D2(d2), so(0), sr(0), sc(step), flat(d0 == 1 && d1 == 1),
        narrow(d0 * d1 * d2 <= 0xFFFFFFFFll) {
    if (flat || step >= d0 * d1 * d2) return;
    sc = step % D2;
    const i64 q = step / D2;
    if (D1 == 1) {
      so = q;
    } else {
      sr = q % D1;
      so = q / D1;
    }
  }

  __device__ __forceinline__ Pos at(i64 e) const {
    Pos p = {0, 0, e};
    if (flat) return p;
    if (narrow) {
      const unsigned u = (unsigned)e, d2 = (unsigned)D2, d1 = (unsigned)D1, q = u / d2;
      p.c = u - q * d2;
      p.r = D1 == 1 ? 0 : q % d1;
      p.o = D1 == 1 ? q : q / d1;
      return p;
    }
    p.c = e % D2;
    const i64 q = e / D2;
    if (D1 == 1) {
      p.o = q;
    } else {
      p.r = q % D1;
      p.o = q / D1;
    }
    return p;
  }

  __device__ __forceinline__ void advance(Pos& p) const {
    p.c += sc;
    if (flat) return;
    const i64 cc = p.c >= D2;
    p.c -= cc * D2;
    p.r += sr + cc;
    const i64 rc = p.r >= D1;
    p.r -= rc * D1;
    p.o += so + rc;
  }
};

// Runs Body<T, VEC> over every VEC-group of a (D0, D1, D2) space, one group a thread where the
// grid has a thread for each (see the top of this file).  Requires D2 % VEC == 0, or
// D0 * D1 == 1 (one flat row), where the last D2 % VEC elements go through Body<T, 1>.
//
// Body<T, W>(params) provides a fragment type `Frag` and
//   load(Frag&, const Pos&)  issue the loads of the W elements at the position (and keep in
//                            the fragment what store needs, e.g. the output offset)
//   store(const Frag&)       compute and store them
template <template <typename, int> class Body, typename T, int VEC, typename Params>
__device__ __forceinline__ void ew_loop(const Params& prm, i64 D0, i64 D1, i64 D2) {
  const i64 groups = D0 * D1 * (D2 / VEC);
  const i64 T_ = (i64)gridDim.x * blockDim.x;
  const i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const Body<T, VEC> body(prm);
  const Stepper st(D0, D1, D2, T_ * VEC);
  Pos p = st.at(tid * VEC);
  for (i64 g = tid; g < groups; g += T_) {
    typename Body<T, VEC>::Frag f;
    body.load(f, p);
    body.store(f);
    if (g + T_ < groups) st.advance(p);
  }
  if (VEC > 1 && D2 % VEC != 0) {  // the tail of a single flat row
    const Body<T, 1> tail(prm);
    for (i64 c = groups * VEC + tid; c < D2; c += T_) {
      typename Body<T, 1>::Frag f;
      const Pos q = {0, 0, c};
      tail.load(f, q);
      tail.store(f);
    }
  }
}

// Column sums of a row-major (M, N) computation for a broadcast operand.  A block is a tile of
// COLSUM_LANES(VEC) threads across (VEC columns each: 128 bytes of a row when the access is 16
// bytes) by ROWS = EW_THREADS / COLSUM_LANES(VEC) threads down.  Row group blockIdx.y takes rows
// blockIdx.y * ROWS + ty + k * G * ROWS (EW_UNROLL rows' loads in flight a thread); each
// column's sum over the group's rows is added in shared memory in a fixed order
// (deterministic), then lands in out[col] rounded to T where one group covers M (G == 1: no
// second launch), else in partial[blockIdx.y, col] (G x N in Acc<T>, which the caller adds in
// a fixed order).  The caller gives each thread one trip (ops/_common.row_groups).  Against a
// thread a column vector walking its group's rows alone (whose sums always took a second
// launch, a cast at least), forward + backward at 1-128 rows took 0.5-0.7x the time; at
// 16M-235M elements bias_gelu's took 0.84-0.93x, add_relu's and mul_tanh's 0.91-1.00x (H100;
// docs/benchmarks.md).
//
// Body<T, VEC>(params, col) provides `Frag`, load(Frag&, row, col) and
// store(Frag&, row, col, acc[VEC]) which stores the elementwise outputs and adds each
// column's contribution to acc.
#define COLSUM_LANES(VEC) ((VEC) > 1 ? 8 : 16)
// The column-sum kernels' launch bounds: 3 blocks an SM (85 registers), where their rows' loads,
// the body's math and the column sums fit without spilling (at 4, 64 registers, bias_gelu's
// and mul_tanh's 16-byte forms spilled 16-32 bytes a thread).
#define COLSUM_MIN_BLOCKS 3
template <template <typename, int> class Body, typename T, int VEC, typename Params>
__device__ __forceinline__ void colsum_loop(const Params& prm, T* __restrict__ out,
                                            typename Acc<T>::type* __restrict__ partial, i64 M, i64 N,
                                            int G) {
  typedef typename Acc<T>::type A;
  constexpr int LANES = COLSUM_LANES(VEC), ROWS = EW_THREADS / LANES, COLS = LANES * VEC;
  __shared__ A sums[ROWS][COLS];
  const int tx = threadIdx.x % LANES, ty = threadIdx.x / LANES;
  const i64 col0 = (i64)blockIdx.x * COLS, col = col0 + (i64)tx * VEC;
  A acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0;
  if (col < N) {  // vector variants have N % VEC == 0: a whole vector is in range
    Body<T, VEC> body(prm, col);
    const i64 step = (i64)G * ROWS, trip = step * EW_UNROLL;
    for (i64 row0 = (i64)blockIdx.y * ROWS + ty; row0 < M; row0 += trip) {
      typename Body<T, VEC>::Frag f[EW_UNROLL];
#pragma unroll
      for (int k = 0; k < EW_UNROLL; ++k) {
        const i64 row = row0 + k * step;
        if (row < M) body.load(f[k], row, col);
      }
#pragma unroll
      for (int k = 0; k < EW_UNROLL; ++k) {
        const i64 row = row0 + k * step;
        if (row < M) body.store(f[k], row, col, acc);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) sums[ty][tx * VEC + i] = acc[i];
  __syncthreads();
  // one thread a column adds the ROWS lanes' sums, top to bottom
  if (threadIdx.x < COLS && col0 + threadIdx.x < N) {
    A s = sums[0][threadIdx.x];
#pragma unroll
    for (int r = 1; r < ROWS; ++r) s += sums[r][threadIdx.x];
    if (G == 1)
      out[col0 + threadIdx.x] = from_acc<T>(s);
    else
      partial[(i64)blockIdx.y * N + col0 + threadIdx.x] = s;
  }
}

// ------------------------------------------------------------------ binary forward
// y = F(a, b) elementwise over (M, N) rows: a with row stride stride_a, b with stride_b (0: one
// (N,) row broadcast over the rows), y contiguous.  F::apply(a, b) computes in Acc<T> (fp32, or
// fp64 for fp64) and y is rounded once.  add_relu.cu and mul_tanh.cu instantiate it through an
// alias template (`template <typename T, int VEC> using AddReluFwd = BinaryFwd<T, VEC, AddRelu>`).
template <typename T>
struct BinaryParams {
  const T* a;
  const T* b;
  T* y;
  i64 stride_a, stride_b, N;
};

template <typename T, int VEC, typename F>
struct BinaryFwd {
  typedef BinaryParams<T> Params;
  struct Frag {
    Vec<T, VEC> a, b;
    i64 out;
  };
  Params p;
  __device__ __forceinline__ BinaryFwd(const Params& prm) : p(prm) {}
  __device__ __forceinline__ void load(Frag& f, const Pos& q) const {
    f.a = load_vec<T, VEC>(p.a + q.o * p.stride_a + q.c);
    f.b = load_vec<T, VEC>(p.b + q.o * p.stride_b + q.c);
    f.out = q.o * p.N + q.c;
  }
  __device__ __forceinline__ void store(const Frag& f) const {
    Vec<T, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) out.v[i] = from_acc<T>(F::apply(to_acc(f.a.v[i]), to_acc(f.b.v[i])));
    store_vec<T, VEC>(p.y + f.out, out);
  }
};
