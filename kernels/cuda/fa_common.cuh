// Shared device helpers for fusedaot's CUDA C++ kernels.
//
// The kernels are compiled by NVRTC with no CUDA headers on the include path, so the
// 16-bit float types are our own 2-byte structs, converted with the PTX cvt
// instructions (bf16 conversion needs sm_80, the lowest architecture we build).
#pragma once

typedef long long i64;

struct half_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16_t v) { return __uint_as_float((unsigned)v.bits << 16); }
__device__ __forceinline__ float to_float(half_t v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
}

// VEC elements moved as one access: 16 bytes when VEC * sizeof(T) == 16.
template <typename T, int VEC>
struct __align__(sizeof(T) * VEC) Vec {
  T v[VEC];
};

// Element i of a vector, as float.  bf16 is the upper half of an fp32, so of two packed in a
// 32-bit word the high one is the word with its low half cleared (one LOP3) and the low one the
// word shifted (one SHF); converting the high 2-byte element on its own cost a PRMT, a SHF and
// often a MOV, which held rows, converting each element up to three times, could not afford on
// an H200 (LayerNorm's bf16 forward ran 6-8 points of copy behind fp16's, issue-bound).
template <typename T, int VEC>
__device__ __forceinline__ float elem_f32(const Vec<T, VEC>& v, int i) { return to_float(v.v[i]); }
template <int VEC>
__device__ __forceinline__ float elem_f32(const Vec<bf16_t, VEC>& v, int i) {
  if constexpr (VEC % 2 == 0) {
    const unsigned w = reinterpret_cast<const unsigned*>(&v)[i / 2];
    return __uint_as_float(i % 2 ? w & 0xffff0000u : w << 16);
  } else {
    return to_float(v.v[i]);
  }
}

template <typename T> __device__ __forceinline__ T from_float(float f);
template <> __device__ __forceinline__ float from_float<float>(float f) { return f; }
template <> __device__ __forceinline__ bf16_t from_float<bf16_t>(float f) {
  bf16_t r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(f));
  return r;
}
template <> __device__ __forceinline__ half_t from_float<half_t>(float f) {
  half_t r;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(f));
  return r;
}

// Loads from global memory go through ld.global.  For a const pointer the compiler may pick the
// read-only path instead (ld.global.nc, LDG.CONSTANT in the SASS), which streamed rows slower on
// an H100: a CUDA C++ RMSNorm at 4096 x 16384 bf16 ran at 79.6% of copy bandwidth with it and
// 93.7% with ld.global; AdaLN and the reductions ran the same either way (docs/benchmarks.md).
// volatile keeps the loads where the code puts them; they still issue back to back.
template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_vec(const T* p) {
  constexpr int BYTES = (int)sizeof(T) * VEC;
  Vec<T, VEC> v;
  unsigned* u = reinterpret_cast<unsigned*>(&v);
  if constexpr (BYTES == 16) {
    asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(u[0]), "=r"(u[1]), "=r"(u[2]), "=r"(u[3]) : "l"(p));
  } else if constexpr (BYTES == 8) {
    asm volatile("ld.global.v2.u32 {%0, %1}, [%2];" : "=r"(u[0]), "=r"(u[1]) : "l"(p));
  } else if constexpr (BYTES == 4) {
    asm volatile("ld.global.u32 %0, [%1];" : "=r"(u[0]) : "l"(p));
  } else {
    v = *reinterpret_cast<const Vec<T, VEC>*>(p);
  }
  return v;
}

// A load of data read once by a kernel that only reads it (a reduction's input): the read-only
// path, no L1 line, and the L2 asked to fetch the 256-byte block around it.  The column
// reductions, whose blocks read 32-256 bytes of each row, were faster with it than with plain
// read-only loads in 143 of 159 tiles and splits compared on an H100 (1.4% in the median, up to
// 17%; docs/benchmarks.md, "Reductions over a leading dimension: narrow tiles").  Other widths
// load as load_vec does.
template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_vec_once(const T* p) {
  if constexpr ((int)sizeof(T) * VEC == 16) {
    Vec<T, VEC> v;
    unsigned* u = reinterpret_cast<unsigned*>(&v);
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(u[0]), "=r"(u[1]), "=r"(u[2]), "=r"(u[3]) : "l"(p));
    return v;
  } else {
    return load_vec<T, VEC>(p);
  }
}

// Stores likewise, one instruction of the vector's width: left to itself the compiler sometimes
// splits a 16-byte vector into 4- or 2-byte stores when its registers are not a quad or its
// 16-bit values were built one by one.
template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, VEC>& v) {
  constexpr int BYTES = (int)sizeof(T) * VEC;
  union {
    Vec<T, VEC> v;
    unsigned u[BYTES >= 4 ? BYTES / 4 : 1];
  } w;
  w.v = v;
  if constexpr (BYTES == 16) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w.u[0]), "r"(w.u[1]), "r"(w.u[2]),
                 "r"(w.u[3]) : "memory");
  } else if constexpr (BYTES == 8) {
    asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(p), "r"(w.u[0]), "r"(w.u[1]) : "memory");
  } else if constexpr (BYTES == 4) {
    asm volatile("st.global.b32 [%0], %1;" ::"l"(p), "r"(w.u[0]) : "memory");
  } else {
    *reinterpret_cast<Vec<T, VEC>*>(p) = v;
  }
}

// ------------------------------------------------------------------ shared memory
// The 32-bit shared-window address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned smem_u32(const void* p) {
  unsigned r;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}

// 16 bytes from global to shared memory without passing through registers (sm80's cp.async,
// bypassing L1); cp_async_wait_all waits for this thread's copies, which it may then read.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
