// GELU + dropout, forward and backward, with the mask regenerated from a counter-based RNG.
//
//   y  = gelu(x) * keep / (1 - p)      gelu(u) = u Phi(u) = 0.5 u (1 + erf(u / sqrt 2))   (erf form;
//                                      evaluated as 0.5 u erfc(-u / sqrt 2), which does not cancel)
//   dx = dy * gelu'(x) * keep / (1 - p)     gelu'(u) = Phi(u) + u phi(u)
//
// x, y, dy, dx are flat (n elements, contiguous).  keep for element e is
//   half e % 2 of word (e % 8) / 2 of
//   Philox4x32-10(counter = (lo(c), hi(c), lo(e / 8), hi(e / 8)), key = (lo(s), hi(s)))
//       >= threshold
// (half 0 = the low 16 bits), with s the seed and c the counter, both 64-bit: the layout of
// curand's Philox state for subsequence e / 8 at offset 4c, which is how torch's own dropout
// consumes its generator.  One Philox call serves 8 elements with a 16-bit uniform each: the
// ten rounds cost as much as the GELU itself, and 16 bits put the keep probability
// 1 - threshold / 2^16 (threshold = round(p * 2^16)) within 2^-17 of 1 - p.
// The backward recomputes the same bits from (s, c) instead of storing a mask.  (s, c) come
// from the kernel arguments, or from rng[0], rng[1] in device memory when rng is not null (the
// form a CUDA graph replays with fresh values).  dropout = 0 makes it plain GELU.  scale_bits
// carries 1 / (1 - p) as the bits of a double (the C ABI has no fp64 argument type), so that
// fp64 outputs get it exactly.
//
// Arithmetic in fp32 (fp64 for fp64); each output is rounded once.
#include "elementwise.cuh"

// --- Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011): ten rounds of two 32x32->64-bit multiplies, the key bumped by the Weyl constants.
struct U4 {
  unsigned x, y, z, w;
};

// The round keys, computed once per thread (they are the same for every counter).
struct PhiloxKeys {
  unsigned k0[10], k1[10];
  __device__ __forceinline__ PhiloxKeys(unsigned a, unsigned b) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
      k0[round] = a + round * 0x9E3779B9u;
      k1[round] = b + round * 0xBB67AE85u;
    }
  }
};

__device__ __forceinline__ U4 philox4x32_10(U4 c, const PhiloxKeys& k) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    // one 32x32 -> 64-bit multiply each (IMAD.WIDE.U32), not separate high and low halves
    const unsigned long long p0 = 0xD2511F53ull * c.x, p1 = 0xCD9E8D57ull * c.z;
    c = U4{(unsigned)(p1 >> 32) ^ c.y ^ k.k0[round], (unsigned)p1, (unsigned)(p0 >> 32) ^ c.w ^ k.k1[round],
           (unsigned)p0};
  }
  return c;
}

struct DropoutParams {
  unsigned k0, k1, c0, c1;  // key and the counter's first two words
  unsigned threshold;
  double scale;             // 1 / (1 - p)
};

__device__ __forceinline__ DropoutParams dropout_params(const i64* rng, i64 seed, i64 counter, i64 threshold,
                                                        i64 scale_bits) {
  if (rng != nullptr) {
    seed = rng[0];
    counter = rng[1];
  }
  DropoutParams d;
  d.k0 = (unsigned)seed;
  d.k1 = (unsigned)((unsigned long long)seed >> 32);
  d.c0 = (unsigned)counter;
  d.c1 = (unsigned)((unsigned long long)counter >> 32);
  d.threshold = (unsigned)threshold;
  d.scale = __longlong_as_double(scale_bits);
  return d;
}

// The random words of elements 8q .. 8q + 7.
__device__ __forceinline__ U4 random_words(const DropoutParams& d, const PhiloxKeys& k, i64 q) {
  return philox4x32_10(U4{d.c0, d.c1, (unsigned)q, (unsigned)((unsigned long long)q >> 32)}, k);
}

// The 16-bit uniform of element 8q + i.
__device__ __forceinline__ unsigned uniform16(const U4& r, int i) {
  const unsigned w = (i >> 1) == 0 ? r.x : (i >> 1) == 1 ? r.y : (i >> 1) == 2 ? r.z : r.w;
  return (i & 1) ? w >> 16 : w & 0xFFFFu;
}

// The standard normal CDF's tail in fp32: Phi(-|u|) = erfc(z) / 2 with z = |u| / sqrt 2 as
//   erfc(z) / 2 = t exp(-z^2 + P(s)),  t = 1 / (1 + z / 2),  s = 2t - 1 in [-1, 1]
// with P fitted (Chebyshev, in s; minimax in P's error, which is the relative error of the
// tail) to ln(erfc(z) / (2t)) + z^2 over z in [0, inf), evaluated in base 2 (P and z^2 scaled
// by log2 e) so that exp is one ex2.approx.  One reciprocal and one exp2 instead of erff's two
// polynomials selected per element.  SHORT (fp16 and bf16 results) takes P of degree 5, else 9:
//   degree 9: |gelu error| <= 2.1e-7 |u| (fp32 evaluation, against a 40-digit reference over
//             u in [-9, 6]), the tail's relative error <= 2e-5 for u < 0 down to u = -13 (w^2
//             rounds by 2^-24 w^2 in the exponent), where 0.5 (1 + erff(u / sqrt 2)) cancels;
//   degree 5: |gelu error| <= 9.1e-6 |u|, the tail's relative error <= 2.4e-5: 1/50 of fp16's
//             rounding (2^-11) and 1/400 of bf16's, for four fewer FMAs an element, which the
//             16-bit forward, bound by instructions (Philox and GELU for 16 bytes of x), needs.
__device__ __forceinline__ float rcp_approx(float v) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
__device__ __forceinline__ float exp2_approx(float v) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}

// Phi(-|u|), fp32.
template <bool SHORT>
__device__ __forceinline__ float normal_tail(float a) {
  const float t = rcp_approx(fmaf(0.35355339059327376f, a, 1.0f));  // 1 / (1 + z / 2)
  const float s = fmaf(2.0f, t, -1.0f);
  const float w = a * 0.84932180028801907f;                         // z sqrt(log2 e)
  float p;                                                           // P(s) log2 e
  if (SHORT) {
    p = 9.545361632e-03f;
    p = fmaf(p, s, -1.181169082e-02f);
    p = fmaf(p, s, -6.659858404e-02f);
    p = fmaf(p, s, 6.769432364e-02f);
    p = fmaf(p, s, 9.703169497e-01f);
    p = fmaf(p, s, -1.969172140e+00f);
  } else {
    p = 5.129600759e-04f;
    p = fmaf(p, s, -3.011551453e-04f);
    p = fmaf(p, s, -3.026998835e-03f);
    p = fmaf(p, s, 2.565498231e-03f);
    p = fmaf(p, s, 1.261089370e-02f);
    p = fmaf(p, s, -1.424641442e-02f);
    p = fmaf(p, s, -6.764134020e-02f);
    p = fmaf(p, s, 6.830199063e-02f);
    p = fmaf(p, s, 9.704187512e-01f);
    p = fmaf(p, s, -1.969193935e+00f);
  }
  return t * exp2_approx(fmaf(-w, w, p));
}

// gelu(u) = u Phi(u) = relu(u) - |u| Phi(-|u|): for u >= 0, u (1 - Phi(-u)); for u < 0, u Phi(u).
// |u| is capped at FLT_MAX in the product so that gelu(inf) = inf (inf * 0 would be NaN);
// gelu(-inf) = 0, the limit (torch's 0.5 u (1 + erf) gives NaN there).
template <bool SHORT>
__device__ __forceinline__ float gelu(float u) {
  const float a = fabsf(u);
  return fmaf(-fminf(a, 3.402823466e38f), normal_tail<SHORT>(a), fmaxf(u, 0.0f));
}
template <bool SHORT>
__device__ __forceinline__ double gelu(double u) { return 0.5 * u * erfc(-u * 0.7071067811865476); }

// gelu'(u) = Phi(u) + u phi(u),  phi(u) = exp(-u^2 / 2) / sqrt(2 pi).
template <bool SHORT>
__device__ __forceinline__ float gelu_grad(float u) {
  const float tail = normal_tail<SHORT>(fabsf(u));
  const float cdf = u < 0.0f ? tail : 1.0f - tail;
  return fmaf(u * 0.3989422804014327f, exp2_approx(-0.7213475204444817f * u * u), cdf);  // e^x = 2^(x log2 e)
}
template <bool SHORT>
__device__ __forceinline__ double gelu_grad(double u) {
  return 0.5 * erfc(-u * 0.7071067811865476) + u * 0.3989422804014327 * exp(-0.5 * u * u);
}

// VEC consecutive elements starting at a multiple of 4: one 16-byte access per 16 bytes when
// VECTOR, else one element per access (misaligned x).
template <typename T, int VEC, bool VECTOR>
struct Chunk {
  T v[VEC];
  __device__ __forceinline__ void load(const T* p) {
    constexpr int W = VECTOR ? 16 / sizeof(T) : 1;
#pragma unroll
    for (int i = 0; i < VEC; i += W) {
      const Vec<T, W> w = load_vec<T, W>(p + i);
#pragma unroll
      for (int j = 0; j < W; ++j) v[i + j] = w.v[j];
    }
  }
  __device__ __forceinline__ void store(T* p) const {
    constexpr int W = VECTOR ? 16 / sizeof(T) : 1;
#pragma unroll
    for (int i = 0; i < VEC; i += W) {
      Vec<T, W> w;
#pragma unroll
      for (int j = 0; j < W; ++j) w.v[j] = v[i + j];
      store_vec<T, W>(p + i, w);
    }
  }
};

// The factor each element is multiplied by: scale where kept, 0 where dropped (VEC % 8 == 0,
// e = the chunk's first element, a multiple of 8).
template <typename A, int VEC>
__device__ __forceinline__ void keep_factors(const DropoutParams& d, const PhiloxKeys& k, i64 e, A (&f)[VEC]) {
  const A scale = (A)d.scale;
#pragma unroll
  for (int q = 0; q < VEC / 8; ++q) {
    const U4 r = random_words(d, k, e / 8 + q);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[8 * q + i] = uniform16(r, i) >= d.threshold ? scale : A(0);
  }
}

// Runs the elementwise map y = op(inputs) over n flat elements, VEC (a multiple of 8) per chunk,
// U chunks per trip with their loads issued first; the last n % VEC elements one by one.
// BWD: y = dy * gelu'(x) * factor, else y = gelu(x) * factor.
template <typename T, int VEC, bool VECTOR, bool DROP, bool BWD>
__device__ __forceinline__ void gelu_dropout_map(const T* __restrict__ dy, const T* __restrict__ x,
                                                 T* __restrict__ out, i64 n, const DropoutParams& d) {
  typedef typename Acc<T>::type A;
  constexpr bool SHORT = sizeof(T) == 2;   // the shorter tail fit (normal_tail)
  // chunks per trip (aot/specs/gelu_dropout.py, chunks_per_trip, sizes the grid by them): the
  // 16-bit forward keeps 64 bytes of x in flight (16-byte accesses; 32 with one-element ones),
  // the backward and 32-byte chunks one chunk
  constexpr int U = (BWD || VEC * sizeof(T) > 16) ? 1 : VECTOR ? 4 : 2;
  const i64 chunks = n / VEC;
  const i64 T_ = (i64)gridDim.x * blockDim.x;
  const i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const PhiloxKeys keys(d.k0, d.k1);
  for (i64 g0 = tid; g0 < chunks; g0 += U * T_) {
    Chunk<T, VEC, VECTOR> xs[U], gs[U];
#pragma unroll
    for (int k = 0; k < U; ++k) {
      const i64 g = g0 + k * T_;
      if (g < chunks) {
        xs[k].load(x + g * VEC);
        if (BWD) gs[k].load(dy + g * VEC);
      }
    }
#pragma unroll
    for (int k = 0; k < U; ++k) {
      const i64 g = g0 + k * T_;
      if (g >= chunks) break;
      A f[VEC];
      if (DROP) {
        keep_factors<A, VEC>(d, keys, g * VEC, f);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) f[i] = A(1);
      }
      Chunk<T, VEC, VECTOR> o;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const A u = to_acc(xs[k].v[i]);
        o.v[i] = from_acc<T>(BWD ? to_acc(gs[k].v[i]) * gelu_grad<SHORT>(u) * f[i] : gelu<SHORT>(u) * f[i]);
      }
      o.store(out + g * VEC);
    }
  }
  for (i64 e = chunks * VEC + tid; e < n; e += T_) {  // the tail: fewer than VEC elements
    A f = A(1);
    if (DROP) f = uniform16(random_words(d, keys, e / 8), (int)(e % 8)) >= d.threshold ? (A)d.scale : A(0);
    const A u = to_acc(x[e]);
    out[e] = from_acc<T>(BWD ? to_acc(dy[e]) * gelu_grad<SHORT>(u) * f : gelu<SHORT>(u) * f);
  }
}

// One extern "C" entry point per (dtype, access width): the names the spec table uses.  VEC is
// 16 bytes' worth of elements but at least 8 (one Philox call per 8 elements); the unaligned
// entry points take 8 elements per chunk with one access each.  The dropout flag picks one of
// two separately compiled bodies, so plain GELU pays nothing for the RNG.
#define GELU_DROPOUT_INSTANCE(T, NAME, VEC, VECTOR, SUFFIX)                                                \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS) gelu_dropout_fwd_##NAME##_##SUFFIX( \
      const T* x, T* y, const i64* rng, i64 n, i64 seed, i64 counter, i64 threshold, i64 scale_bits,       \
      int dropout) {                                                                                       \
    const DropoutParams d = dropout_params(dropout ? rng : nullptr, seed, counter, threshold, scale_bits);  \
    if (dropout) gelu_dropout_map<T, VEC, VECTOR, true, false>(nullptr, x, y, n, d);                      \
    else gelu_dropout_map<T, VEC, VECTOR, false, false>(nullptr, x, y, n, d);                             \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(EW_THREADS, EW_MIN_BLOCKS) gelu_dropout_bwd_##NAME##_##SUFFIX( \
      const T* dy, const T* x, T* dx, const i64* rng, i64 n, i64 seed, i64 counter, i64 threshold,         \
      i64 scale_bits, int dropout) {                                                                       \
    const DropoutParams d = dropout_params(dropout ? rng : nullptr, seed, counter, threshold, scale_bits);  \
    if (dropout) gelu_dropout_map<T, VEC, VECTOR, true, true>(dy, x, dx, n, d);                           \
    else gelu_dropout_map<T, VEC, VECTOR, false, true>(dy, x, dx, n, d);                                  \
  }

GELU_DROPOUT_INSTANCE(bf16_t, bf16, 8, true, v8)
GELU_DROPOUT_INSTANCE(bf16_t, bf16, 8, false, s8)
GELU_DROPOUT_INSTANCE(half_t, fp16, 8, true, v8)
GELU_DROPOUT_INSTANCE(half_t, fp16, 8, false, s8)
GELU_DROPOUT_INSTANCE(float, fp32, 8, true, v8)
GELU_DROPOUT_INSTANCE(float, fp32, 8, false, s8)
GELU_DROPOUT_INSTANCE(double, fp64, 8, true, v8)
GELU_DROPOUT_INSTANCE(double, fp64, 8, false, s8)
