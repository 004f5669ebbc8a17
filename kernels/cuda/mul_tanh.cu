// mul + tanh, forward and backward.
//
//   y  = tanh(a * b)          a: (M, N) rows with row stride stride_a; b: the same with stride_b,
//                             or one (N,) row broadcast over the rows of a (stride_b = 0)
//   t  = tanh(a * b)          recomputed in the backward from a and b (fp32, not the rounded y)
//   da = dy * (1 - t^2) * b
//   db = dy * (1 - t^2) * a   (b of a's shape)
//   db = sum over rows of it  (broadcast b: into db when one row group covers M, else per row
//                             group into db_partial, added by reduce_finish)
//
// Arithmetic in fp32 (fp64 for fp64); each output is rounded once.
#include "elementwise.cuh"

template <typename T>
struct BwdParams {
  const T* dy;
  const T* a;
  const T* b;
  T* da;
  T* db;  // b of a's shape only
  i64 stride_dy, stride_a, stride_b, N;
};

struct MulTanh {
  template <typename A>
  __device__ __forceinline__ static A apply(A a, A b) { return m_tanh(a * b); }
};
template <typename T, int VEC>
using MulTanhFwd = BinaryFwd<T, VEC, MulTanh>;

// dy * (1 - tanh(a b)^2): the common factor of da and db.
template <typename A>
__device__ __forceinline__ A tanh_grad(A dy, A a, A b) {
  const A t = m_tanh(a * b);
  return dy * (1 - t * t);
}

// b of a's shape: da and db.
template <typename T, int VEC>
struct MulTanhBwd {
  typedef BwdParams<T> Params;
  struct Frag {
    Vec<T, VEC> dy, a, b;
    i64 out;
  };
  Params p;
  __device__ __forceinline__ MulTanhBwd(const Params& prm) : p(prm) {}
  __device__ __forceinline__ void load(Frag& f, const Pos& q) const {
    f.dy = load_vec<T, VEC>(p.dy + q.o * p.stride_dy + q.c);
    f.a = load_vec<T, VEC>(p.a + q.o * p.stride_a + q.c);
    f.b = load_vec<T, VEC>(p.b + q.o * p.stride_b + q.c);
    f.out = q.o * p.N + q.c;
  }
  __device__ __forceinline__ void store(const Frag& f) const {
    Vec<T, VEC> da, db;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const typename Acc<T>::type a = to_acc(f.a.v[i]), b = to_acc(f.b.v[i]);
      const typename Acc<T>::type g = tanh_grad(to_acc(f.dy.v[i]), a, b);
      da.v[i] = from_acc<T>(g * b);
      db.v[i] = from_acc<T>(g * a);
    }
    store_vec<T, VEC>(p.da + f.out, da);
    store_vec<T, VEC>(p.db + f.out, db);
  }
};

// Broadcast b: da, and each column's sum of dy (1 - t^2) a over this block's rows.  The thread's
// VEC values of b stay in registers.
template <typename T, int VEC>
struct MulTanhBwdCols {
  typedef BwdParams<T> Params;
  struct Frag {
    Vec<T, VEC> dy, a;
  };
  Params p;
  Vec<T, VEC> b;
  __device__ __forceinline__ MulTanhBwdCols(const Params& prm, i64 col) : p(prm) {
    b = load_vec<T, VEC>(p.b + col);
  }
  __device__ __forceinline__ void load(Frag& f, i64 row, i64 col) const {
    f.dy = load_vec<T, VEC>(p.dy + row * p.stride_dy + col);
    f.a = load_vec<T, VEC>(p.a + row * p.stride_a + col);
  }
  __device__ __forceinline__ void store(const Frag& f, i64 row, i64 col, typename Acc<T>::type* acc) const {
    Vec<T, VEC> da;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const typename Acc<T>::type a = to_acc(f.a.v[i]), bb = to_acc(b.v[i]);
      const typename Acc<T>::type g = tanh_grad(to_acc(f.dy.v[i]), a, bb);
      da.v[i] = from_acc<T>(g * bb);
      acc[i] += g * a;
    }
    store_vec<T, VEC>(p.da + row * p.N + col, da);
  }
};

// One extern "C" entry point per (dtype, vector width): the names the spec table uses.
#define MUL_TANH_INSTANCE(T, NAME, VEC)                                                                        \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS) mul_tanh_fwd_##NAME##_v##VEC(        \
      const T* a, const T* b, T* y, i64 stride_a, i64 stride_b, i64 M, i64 N) {                                \
    const BinaryParams<T> prm = {a, b, y, stride_a, stride_b, N};                                              \
    ew_loop<MulTanhFwd, T, VEC>(prm, M, 1, N);                                                                 \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS) mul_tanh_bwd_##NAME##_v##VEC(        \
      const T* dy, const T* a, const T* b, T* da, T* db, Acc<T>::type* db_partial, i64 stride_dy,              \
      i64 stride_a, i64 stride_b, i64 M, i64 N, int G) {                                                       \
    const BwdParams<T> prm = {dy, a, b, da, db, stride_dy, stride_a, stride_b, N};                             \
    ew_loop<MulTanhBwd, T, VEC>(prm, M, 1, N);                                                                 \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, COLSUM_MIN_BLOCKS) mul_tanh_bwd_cols_##NAME##_v##VEC(   \
      const T* dy, const T* a, const T* b, T* da, T* db, Acc<T>::type* db_partial, i64 stride_dy,              \
      i64 stride_a, i64 stride_b, i64 M, i64 N, int G) {                                                       \
    const BwdParams<T> prm = {dy, a, b, da, db, stride_dy, stride_a, stride_b, N};                             \
    colsum_loop<MulTanhBwdCols, T, VEC>(prm, db, db_partial, M, N, G);                                         \
  }

MUL_TANH_INSTANCE(bf16_t, bf16, 8)
MUL_TANH_INSTANCE(bf16_t, bf16, 1)
MUL_TANH_INSTANCE(half_t, fp16, 8)
MUL_TANH_INSTANCE(half_t, fp16, 1)
MUL_TANH_INSTANCE(float, fp32, 4)
MUL_TANH_INSTANCE(float, fp32, 1)
MUL_TANH_INSTANCE(double, fp64, 2)
MUL_TANH_INSTANCE(double, fp64, 1)
