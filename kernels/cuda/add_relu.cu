// add + ReLU, forward and backward.
//
//   y  = relu(a + b)          a: (M, N) rows with row stride stride_a; b: the same with stride_b,
//                             or one (N,) row broadcast over the rows of a (stride_b = 0)
//   da = dy * [y > 0]         (ReLU's gradient from its output, as torch's threshold_backward:
//                             0 where y <= 0, dy elsewhere, NaN y included)
//   db = da                   (b of a's shape: the caller reuses da)
//   db = sum over rows of da  (broadcast b: into db when one row group covers M, else per row
//                             group into db_partial, added by reduce_finish)
//
// Arithmetic in fp32 (fp64 for fp64); y is rounded once.  NaN propagates (a NaN sum is not <= 0).
#include "elementwise.cuh"

template <typename T>
struct BwdParams {
  const T* dy;
  const T* y;
  T* da;
  i64 stride_dy, stride_y, N;
};

// relu(a + b); a NaN sum is not <= 0 and propagates.
struct AddRelu {
  template <typename A>
  __device__ __forceinline__ static A apply(A a, A b) {
    const A s = a + b;
    return s <= 0 ? 0 : s;
  }
};
template <typename T, int VEC>
using AddReluFwd = BinaryFwd<T, VEC, AddRelu>;

// b of a's shape: da only (the caller hands the same tensor to a and b).
template <typename T, int VEC>
struct AddReluBwd {
  typedef BwdParams<T> Params;
  struct Frag {
    Vec<T, VEC> dy, y;
    i64 out;
  };
  Params p;
  __device__ __forceinline__ AddReluBwd(const Params& prm) : p(prm) {}
  __device__ __forceinline__ void load(Frag& f, const Pos& q) const {
    f.dy = load_vec<T, VEC>(p.dy + q.o * p.stride_dy + q.c);
    f.y = load_vec<T, VEC>(p.y + q.o * p.stride_y + q.c);
    f.out = q.o * p.N + q.c;
  }
  __device__ __forceinline__ void store(const Frag& f) const {
    Vec<T, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) out.v[i] = from_acc<T>(to_acc(f.y.v[i]) <= 0 ? 0 : to_acc(f.dy.v[i]));
    store_vec<T, VEC>(p.da + f.out, out);
  }
};

// Broadcast b: da, and each column's sum of da over this block's rows.
template <typename T, int VEC>
struct AddReluBwdCols {
  typedef BwdParams<T> Params;
  struct Frag {
    Vec<T, VEC> dy, y;
  };
  Params p;
  __device__ __forceinline__ AddReluBwdCols(const Params& prm, i64) : p(prm) {}
  __device__ __forceinline__ void load(Frag& f, i64 row, i64 col) const {
    f.dy = load_vec<T, VEC>(p.dy + row * p.stride_dy + col);
    f.y = load_vec<T, VEC>(p.y + row * p.stride_y + col);
  }
  __device__ __forceinline__ void store(const Frag& f, i64 row, i64 col, typename Acc<T>::type* acc) const {
    Vec<T, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const typename Acc<T>::type g = to_acc(f.y.v[i]) <= 0 ? 0 : to_acc(f.dy.v[i]);
      out.v[i] = from_acc<T>(g);  // exact: g is dy or 0
      acc[i] += g;
    }
    store_vec<T, VEC>(p.da + row * p.N + col, out);
  }
};

// One extern "C" entry point per (dtype, vector width): the names the spec table uses.
#define ADD_RELU_INSTANCE(T, NAME, VEC)                                                             \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS) add_relu_fwd_##NAME##_v##VEC( \
      const T* a, const T* b, T* y, i64 stride_a, i64 stride_b, i64 M, i64 N) {                     \
    const BinaryParams<T> prm = {a, b, y, stride_a, stride_b, N};                                   \
    ew_loop<AddReluFwd, T, VEC>(prm, M, 1, N);                                                      \
  }                                                                                                 \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS) add_relu_bwd_##NAME##_v##VEC( \
      const T* dy, const T* y, T* da, T* db, Acc<T>::type* db_partial, i64 stride_dy, i64 stride_y, \
      i64 M, i64 N, int G) {                                                                        \
    const BwdParams<T> prm = {dy, y, da, stride_dy, stride_y, N};                                   \
    ew_loop<AddReluBwd, T, VEC>(prm, M, 1, N);                                                      \
  }                                                                                                 \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, COLSUM_MIN_BLOCKS) add_relu_bwd_cols_##NAME##_v##VEC( \
      const T* dy, const T* y, T* da, T* db, Acc<T>::type* db_partial, i64 stride_dy, i64 stride_y, \
      i64 M, i64 N, int G) {                                                                        \
    const BwdParams<T> prm = {dy, y, da, stride_dy, stride_y, N};                                   \
    colsum_loop<AddReluBwdCols, T, VEC>(prm, db, db_partial, M, N, G);                              \
  }

ADD_RELU_INSTANCE(bf16_t, bf16, 8)
ADD_RELU_INSTANCE(bf16_t, bf16, 1)
ADD_RELU_INSTANCE(half_t, fp16, 8)
ADD_RELU_INSTANCE(half_t, fp16, 1)
ADD_RELU_INSTANCE(float, fp32, 4)
ADD_RELU_INSTANCE(float, fp32, 1)
ADD_RELU_INSTANCE(double, fp64, 2)
ADD_RELU_INSTANCE(double, fp64, 1)
