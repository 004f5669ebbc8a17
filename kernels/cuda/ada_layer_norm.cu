// Adaptive LayerNorm (the DiT / Flux modulation), forward and backward.
//
//   y      = x_hat * (1 + scale) + shift,   x_hat = (x - mean) * rstd,   rstd = 1 / sqrt(var + eps)
//   g      = dy * (1 + scale)
//   dx     = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
//   dscale = sum of dy * x_hat,   dshift = sum of dy   (over the rows that share a scale row)
//
// Layout: x is (M, N), rows stride_x elements apart; row r is token r % S of sample r / S.
// The scale row of row r starts at (r / S) * stride_sb + (r % S) * stride_ss (likewise shift with
// stride_hb, stride_hs): per tensor both strides are 0, per sample stride_ss is 0, per token
// neither is.  Outputs y and dx are contiguous (M, N).
//
// A block normalises one row at a time.  Thread t owns NPT vectors of VEC consecutive columns per
// tile (vector k at column base + (t + k * blockDim.x) * VEC), so a warp reads contiguous 16-byte
// pieces.  Resident variants hold the whole row in registers (one tile; blockDim.x is sized from
// N by the dispatch) and request every input of the row at once, before the first reduction
// waits, so one memory latency is paid per row; looped variants walk the row tile by tile and
// read it again per phase (the re-reads mostly hit L2).  16-bit rows that share scale and shift
// are held on chip whole up to 65536 wide instead (ADA_HELD below).  Mean and variance are
// Chan's merge of per-thread exact two-pass statistics (kernels/cuda/row_stats.cuh), so rows
// with a large mean lose nothing to cancellation.  Every sum is reduced in a fixed order: results are
// deterministic.
//
// scale and shift are stored either like x or in fp32 (flags & 1): separate entry points, so that
// each holds only the registers its own types need.
#include "held_row.cuh"

// ------------------------------------------------------------------ forward
// Resident rows: x, scale and shift are all requested before the block waits on the row's
// statistics, so the three loads' latencies overlap (scale and shift wait in registers as
// stored).  SHARED (rows share their scale and shift: per tensor or per sample): scale and shift
// are read after the statistics instead, from L1 or L2, where every row finds them; registers
// then hold only x, and more rows are in flight per SM, which a row moving only 2N elements
// through DRAM needs.  Looped rows: statistics over every tile, then each tile is read again
// (mostly from L2) with its scale and shift.
template <typename T, typename P, int VEC, int NPT, bool LOOPED, bool SHARED = false>
__device__ __forceinline__ void ada_fwd(const T* __restrict__ x, const P* __restrict__ scale,
                                        const P* __restrict__ shift, T* __restrict__ y, i64 stride_x,
                                        i64 stride_sb, i64 stride_ss, i64 stride_hb, i64 stride_hs, i64 M,
                                        i64 N, i64 S, float eps) {
  __shared__ float shm[3 * MAX_WARPS];
  const i64 tile = (i64)blockDim.x * VEC * NPT;
  for (i64 row = blockIdx.x; row < M; row += gridDim.x) {
    const T* xr = x + row * stride_x;
    const i64 sample = row / S, token = row - sample * S;
    const P* sc = scale + sample * stride_sb + token * stride_ss;
    const P* sh = shift + sample * stride_hb + token * stride_hs;
    float mean, rstd;
    if (!LOOPED) {
      Raw<T, VEC> v[NPT];
      Raw<P, VEC> a[NPT], b[NPT];
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        const i64 c = col_of(0, k, VEC);
        if (c < N) {
          v[k].load(xr + c);
          if (!SHARED) {
            a[k].load(sc + c);
            b[k].load(sh + c);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < NPT; ++k) {  // every load issued before the first use (Raw::hold)
        v[k].hold();
        if (!SHARED) {
          a[k].hold();
          b[k].hold();
        }
      }
      finish_stats(block_stats(tile_stats<VEC, NPT>(v, 0, N), shm), N, eps, mean, rstd);
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        const i64 c = col_of(0, k, VEC);
        if (c >= N) continue;
        if (SHARED) {
          a[k].load(sc + c);
          b[k].load(sh + c);
        }
        float out[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i)
          out[i] = (v[k][i] - mean) * rstd * (1.0f + a[k][i]) + b[k][i];
        store_f32<T, VEC>(y + row * N + c, out);
      }
      continue;
    }
    float v[NPT][VEC];
    row_stats<T, VEC, NPT>(xr, N, eps, v, shm, mean, rstd);
    for (i64 base = 0; base < N; base += tile) {
      load_tile<T, VEC, NPT>(xr, base, N, v);
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        const i64 c = col_of(base, k, VEC);
        if (c >= N) continue;
        float a[VEC], b[VEC], out[VEC];
        load_f32<P, VEC>(sc + c, a);
        load_f32<P, VEC>(sh + c, b);
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = (v[k][i] - mean) * rstd * (1.0f + a[i]) + b[i];
        store_f32<T, VEC>(y + row * N + c, out);
      }
    }
  }
}

// ------------------------------------------------------------------ backward
// Block (group, part): rows group * R + part + j * J of the R rows that share one scale row
// (R = M per tensor, S per sample, 1 per token).  PER_ROW (R = 1: per token, or one row per scale
// row): dscale and dshift of a row are the row's own and are written directly (in scale's dtype;
// dshift = dy, skipped when null).  Otherwise the block's column sums go to its row of partial
// ((groups, J, 2, N) fp32: [dscale | dshift]), added over J by the caller; a resident block keeps
// them in dynamic shared memory (2 * E * THREADS floats, THREADS >= blockDim.x a compile-time
// stride; each thread only its own columns: registers then hold only the row, so more rows are
// in flight per SM), a looped one in that row of partial, or, for rows up to SMEM_COLS wide,
// in dynamic shared memory as well (read and written every row, the fp32 partial row in global
// memory moved more bytes than x, dy and dx together).  A resident column-sum block requests
// its next row's x and dy before it waits on this row's reductions, so it always has a row in
// flight, and reads the shared scale row after the statistics (from L1/L2, where every row of
// the group finds it).
template <typename T, typename P, int VEC, int NPT, bool LOOPED, bool PER_ROW, int THREADS = 0, bool AHEAD = false,
          int SMEM_COLS = 0>
__device__ __forceinline__ void ada_bwd(const T* __restrict__ dy, const T* __restrict__ x,
                                        const P* __restrict__ scale, T* __restrict__ dx,
                                        P* __restrict__ dscale, P* __restrict__ dshift,
                                        float* __restrict__ partial, i64 stride_dy, i64 stride_x,
                                        i64 stride_sb, i64 stride_ss, i64 N, i64 S, i64 R, float eps, int J) {
  __shared__ float shm[3 * MAX_WARPS];
  extern __shared__ float sums[];  // resident, !PER_ROW: [dscale | dshift][k * VEC + i][thread]
  const i64 tile = (i64)blockDim.x * VEC * NPT;
  const i64 group = blockIdx.x;
  const int part = blockIdx.y;
  constexpr int nt = THREADS;
  float* prow = partial + ((i64)group * J + part) * 2 * N;
  // A thread's e-th column of the row (e = (tile * NPT + k) * VEC + i) has its sums at
  // ds[e * nt], dh[e * nt]: SPAN of them, NPT * VEC resident, SMEM_COLS / nt looped.
  constexpr int SPAN = LOOPED ? SMEM_COLS / (nt > 0 ? nt : 1) : NPT * VEC;
  constexpr bool SUMS_IN_SHARED = !PER_ROW && (!LOOPED || SMEM_COLS > 0);
  float* ds = sums + threadIdx.x;
  float* dh = sums + SPAN * nt + threadIdx.x;
  if (SUMS_IN_SHARED) {
#pragma unroll
    for (int e = 0; e < SPAN; ++e) ds[e * nt] = dh[e * nt] = 0.0f;
  }

  // resident: this row's x and dy (xv, gv); AHEAD (resident column sums only): loaded one row
  // ahead
  static_assert(!AHEAD || (!LOOPED && !PER_ROW), "only resident column-sum forms load ahead");
  Raw<T, VEC> xv[NPT], gv[NPT];
  if (AHEAD && part < R) {
    const i64 row = group * R + part;
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
      const i64 c = col_of(0, k, VEC);
      if (c < N) {
        xv[k].load(x + row * stride_x + c);
        gv[k].load(dy + row * stride_dy + c);
      }
    }
  }

  for (i64 j = part; j < R; j += J) {
    const i64 row = group * R + j;
    const T* xr = x + row * stride_x;
    const T* gr = dy + row * stride_dy;
    const i64 sample = row / S, token = row - sample * S;
    const P* sc = scale + sample * stride_sb + token * stride_ss;
    float mean, rstd;
    if (!LOOPED) {
      // x, dy (and, per row, scale) are all requested before the first reduction waits on x;
      // with column sums, the next row's x and dy too
      Raw<T, VEC> xn[NPT], gn[NPT];
      Raw<P, VEC> av[NPT];
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        const i64 c = col_of(0, k, VEC);
        if (c >= N) continue;
        if (!AHEAD) {
          xv[k].load(xr + c);
          gv[k].load(gr + c);
        } else if (j + J < R) {
          xn[k].load(xr + J * stride_x + c);
          gn[k].load(gr + J * stride_dy + c);
        }
        if (PER_ROW) av[k].load(sc + c);
      }
#pragma unroll
      for (int k = 0; k < NPT; ++k) {  // every load issued before the first use (Raw::hold)
        if (!AHEAD) {
          xv[k].hold();
          gv[k].hold();
        }
        if (PER_ROW) av[k].hold();
      }
      finish_stats(block_stats(tile_stats<VEC, NPT>(xv, 0, N), shm), N, eps, mean, rstd);
      if (!PER_ROW) {
#pragma unroll
        for (int k = 0; k < NPT; ++k) {
          const i64 c = col_of(0, k, VEC);
          if (c < N) av[k].load(sc + c);
        }
      }
      float s1 = 0.0f, s2 = 0.0f;  // sum(g) and sum(g * x_hat)
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        if (col_of(0, k, VEC) >= N) continue;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float g = gv[k][i] * (1.0f + av[k][i]);
          s1 += g;
          s2 += g * (xv[k][i] - mean) * rstd;
        }
      }
      block_sum2(s1, s2, shm);
      const float c1 = s1 / (float)N, c2 = s2 / (float)N;
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        const i64 c = col_of(0, k, VEC);
        if (c >= N) continue;
        float d[VEC], xh[VEC], g[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          g[i] = gv[k][i];
          xh[i] = (xv[k][i] - mean) * rstd;
          d[i] = rstd * (g[i] * (1.0f + av[k][i]) - c1 - xh[i] * c2);
        }
        store_f32<T, VEC>(dx + row * N + c, d);
        if (PER_ROW) {
#pragma unroll
          for (int i = 0; i < VEC; ++i) xh[i] *= g[i];
          store_f32<P, VEC>(dscale + row * N + c, xh);
          if (dshift) store_f32<P, VEC>(dshift + row * N + c, g);  // null: the caller uses dy itself
        } else {
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            ds[(k * VEC + i) * nt] += g[i] * xh[i];
            dh[(k * VEC + i) * nt] += g[i];
          }
        }
      }
      if (AHEAD) {
#pragma unroll
        for (int k = 0; k < NPT; ++k) {
          xv[k] = xn[k];
          gv[k] = gn[k];
        }
      }
      continue;
    }
    // looped: statistics over every tile, then two more passes (the re-reads mostly hit L2)
    float xv[NPT][VEC], gv[NPT][VEC];
    row_stats<T, VEC, NPT>(xr, N, eps, xv, shm, mean, rstd);
    float s1 = 0.0f, s2 = 0.0f;
    for (i64 base = 0; base < N; base += tile) {
      load_tile<T, VEC, NPT>(xr, base, N, xv);
      load_tile<T, VEC, NPT>(gr, base, N, gv);
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        const i64 c = col_of(base, k, VEC);
        if (c >= N) continue;
        float a[VEC];
        load_f32<P, VEC>(sc + c, a);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float g = gv[k][i] * (1.0f + a[i]);
          s1 += g;
          s2 += g * (xv[k][i] - mean) * rstd;
        }
      }
    }
    block_sum2(s1, s2, shm);
    const float c1 = s1 / (float)N, c2 = s2 / (float)N;
    for (i64 base = 0; base < N; base += tile) {
      load_tile<T, VEC, NPT>(xr, base, N, xv);
      load_tile<T, VEC, NPT>(gr, base, N, gv);
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        const i64 c = col_of(base, k, VEC);
        if (c >= N) continue;
        float a[VEC], d[VEC], xh[VEC];
        load_f32<P, VEC>(sc + c, a);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          xh[i] = (xv[k][i] - mean) * rstd;
          d[i] = rstd * (gv[k][i] * (1.0f + a[i]) - c1 - xh[i] * c2);
        }
        store_f32<T, VEC>(dx + row * N + c, d);
        if (PER_ROW) {
#pragma unroll
          for (int i = 0; i < VEC; ++i) xh[i] *= gv[k][i];
          store_f32<P, VEC>(dscale + row * N + c, xh);
          if (dshift) store_f32<P, VEC>(dshift + row * N + c, gv[k]);
        } else if (SMEM_COLS > 0) {
          const int e0 = ((int)(base / tile) * NPT + k) * VEC;
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            ds[(e0 + i) * nt] += gv[k][i] * xh[i];
            dh[(e0 + i) * nt] += gv[k][i];
          }
        } else {
          // this thread owns these columns of prow on every row: no other thread touches them
          float pd[VEC], ph[VEC];
          if (j == part) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) pd[i] = ph[i] = 0.0f;
          } else {
            load_f32<float, VEC>(prow + c, pd);
            load_f32<float, VEC>(prow + N + c, ph);
          }
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            pd[i] += gv[k][i] * xh[i];
            ph[i] += gv[k][i];
          }
          store_f32<float, VEC>(prow + c, pd);
          store_f32<float, VEC>(prow + N + c, ph);
        }
      }
    }
  }
  if (SUMS_IN_SHARED) {
    for (i64 base = 0; base < N; base += tile) {
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        const i64 c = col_of(base, k, VEC);
        if (c >= N) continue;
        const int e0 = ((int)(base / tile) * NPT + k) * VEC;
        float a[VEC], b[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          a[i] = ds[(e0 + i) * nt];
          b[i] = dh[(e0 + i) * nt];
        }
        store_f32<float, VEC>(prow + c, a);
        store_f32<float, VEC>(prow + N + c, b);
      }
    }
  }
}

// ------------------------------------------------------------------ entry points
// One per (direction, x dtype, scale dtype, vector width, elements per thread E = VEC * NPT, or
// loop): the names the spec table (aot/specs/ada_layer_norm.py) uses; "_pf32" marks scale and
// shift stored in fp32 with 16-bit x (flags & 1, which the dispatch reads; the kernels take flags
// only to keep one parameter list).  Launch bounds match the largest block the dispatch picks,
// 512 threads (up to 128 registers a thread).
#define ADA_FWD(T, P, NAME, VEC, NPT, LOOPED, SHARED, TAG)                                             \
  extern "C" __global__ void __launch_bounds__(512) ada_layer_norm_fwd_##NAME##_v##VEC##_##TAG(       \
      const T* x, const P* scale, const P* shift, T* y, i64 stride_x, i64 stride_sb, i64 stride_ss,    \
      i64 stride_hb, i64 stride_hs, i64 M, i64 N, i64 S, float eps, int flags) {                       \
    ada_fwd<T, P, VEC, NPT, LOOPED, SHARED>(x, scale, shift, y, stride_x, stride_sb, stride_ss,        \
                                            stride_hb, stride_hs, M, N, S, eps);                       \
  }

// M only sizes the grid (M / R groups of rows).  ATTR: the launch bounds, or for the forms that
// load a row ahead a register cap that keeps two 384-thread blocks on an SM (their x, dy, next x,
// next dy and scale in registers: 90 registers uncapped, one block).
#define ADA_BWD(T, P, NAME, VEC, NPT, LOOPED, PER_ROW, THREADS, AHEAD, ATTR, TAG)                       \
  ADA_BWD_COLS(T, P, NAME, VEC, NPT, LOOPED, PER_ROW, THREADS, AHEAD, 0, ATTR, TAG)
#define ADA_BWD_COLS(T, P, NAME, VEC, NPT, LOOPED, PER_ROW, THREADS, AHEAD, COLS, ATTR, TAG)            \
  extern "C" __global__ void ATTR ada_layer_norm_bwd_##NAME##_v##VEC##_##TAG(                          \
      const T* dy, const T* x, const P* scale, T* dx, P* dscale, P* dshift, float* partial,            \
      i64 stride_dy, i64 stride_x, i64 stride_sb, i64 stride_ss, i64 M, i64 N, i64 S, i64 R,           \
      float eps, int flags, int J) {                                                                   \
    ada_bwd<T, P, VEC, NPT, LOOPED, PER_ROW, THREADS, AHEAD, COLS>(dy, x, scale, dx, dscale, dshift,   \
                                                                   partial, stride_dy, stride_x,       \
                                                                   stride_sb, stride_ss, N, S, R, eps, \
                                                                   J);                                 \
  }
#define ADA_BOUNDS __launch_bounds__(512)
// The looped forms' block (aot/specs/ada_layer_norm.py: ADA_LOOP_THREADS) and the widest row whose
// column sums the looped backward keeps in shared memory (ADA_BWD_LOOP_SMEM_COLS).
#define ADA_LOOP_THREADS 512
#define ADA_LOOP_SMEM_COLS 16384
#define ADA_AHEAD_REGS __maxnreg__(80)

// 16-byte vectors (V elements): forward E = 8, 16, 32 resident (up to 512 threads), E = 16, 32,
// 64 resident with shared scale and shift (s16, s32, s64), and looped with E = 16 a tile;
// backward E = 16 resident (up to 512 threads) and looped with E = 16.  Single elements (any
// alignment): E = 8 resident forward, 16 backward, and looped with E = 4 a tile.  The backward's
// resident column-sum forms come once per block size bucket (t128, t256, t384, t512: up to that
// many threads), each with its own shared-memory size in the spec table; with 16-bit x (AH =
// true) those up to 384 threads load a row ahead.  A looped column-sum form keeps its sums in
// 128 KiB of shared memory for rows up to 16384 wide (sum_loop_c16384; 512 threads; the spec
// table picks it from 12288 columns).
#define ADA_BWD_FORMS(T, P, NAME, V, E, LE, AH)                                                 \
  ADA_BWD(T, P, NAME, V, E / V, false, true, 0, false, ADA_BOUNDS, row_e##E)                      \
  ADA_BWD(T, P, NAME, V, LE / V, true, true, 0, false, ADA_BOUNDS, row_loop)                      \
  ADA_BWD(T, P, NAME, V, E / V, false, false, 128, AH, ADA_SUM_ATTR(AH), sum_e##E##_t128)         \
  ADA_BWD(T, P, NAME, V, E / V, false, false, 256, AH, ADA_SUM_ATTR(AH), sum_e##E##_t256)         \
  ADA_BWD(T, P, NAME, V, E / V, false, false, 384, AH, ADA_SUM_ATTR(AH), sum_e##E##_t384)         \
  ADA_BWD(T, P, NAME, V, E / V, false, false, 512, false, ADA_BOUNDS, sum_e##E##_t512)            \
  ADA_BWD_COLS(T, P, NAME, V, LE / V, true, false, ADA_LOOP_THREADS, false, ADA_LOOP_SMEM_COLS,     \
               ADA_BOUNDS, sum_loop_c16384)                                                       \
  ADA_BWD(T, P, NAME, V, LE / V, true, false, 0, false, ADA_BOUNDS, sum_loop)
#define ADA_SUM_ATTR(AH) ADA_SUM_ATTR_##AH
#define ADA_SUM_ATTR_true ADA_AHEAD_REGS
#define ADA_SUM_ATTR_false ADA_BOUNDS

// Rows sharing their scale and shift (per tensor or per sample), 16-bit, aligned, 16384 < N <=
// 65536: one block of ADA_HELD_THREADS a row holding it on chip (kernels/cuda/held_row.cuh:
// NPT vectors a thread in registers, SNPT in shared memory), so x is read once; the looped form
// above read it twice and ran at 47-70% of copy at 32768-65536 wide on an H100.  The scale and
// shift rows come from L2 after the statistics, which the per-token form cannot afford (its rows
// come from DRAM): per token these widths keep the loop.  M only sizes the grid (a block a row).
#define ADA_HELD_THREADS 512
#define ADA_HELD(T, P, NAME, TAG, NPT, SNPT)                                                              \
  extern "C" __global__ void __launch_bounds__(ADA_HELD_THREADS, 2) ada_layer_norm_fwd_##NAME##_v8_##TAG( \
      const T* x, const P* scale, const P* shift, T* y, i64 stride_x, i64 stride_sb, i64 stride_ss,      \
      i64 stride_hb, i64 stride_hs, i64 M, i64 N, i64 S, float eps, int flags) {                         \
    const i64 row = blockIdx.x, sample = row / S;                                                          \
    int both = 3; /* scale and shift; opaque, or the compiler's schedule of the fixed flags spills */    \
    asm("" : "+r"(both));                                                                                  \
    held_row_fwd<T, P, ADA_HELD_THREADS, NPT, SNPT, Norm::ADA>(x + row * stride_x, y + row * N,               \
                                                          scale + sample * stride_sb,                     \
                                                          shift + sample * stride_hb, (int)N, eps, both); \
  }

#define ADA_FORMS(T, P, NAME, V, AH)                 \
  ADA_FWD(T, P, NAME, V, 8 / V, false, false, e8)    \
  ADA_FWD(T, P, NAME, V, 16 / V, false, false, e16)  \
  ADA_FWD(T, P, NAME, V, 32 / V, false, false, e32)  \
  ADA_FWD(T, P, NAME, V, 16 / V, false, true, s16)   \
  ADA_FWD(T, P, NAME, V, 32 / V, false, true, s32)   \
  ADA_FWD(T, P, NAME, V, 64 / V, false, true, s64)   \
  ADA_FWD(T, P, NAME, V, 16 / V, true, false, loop)  \
  ADA_FWD(T, P, NAME, 1, 8, false, false, e8)        \
  ADA_FWD(T, P, NAME, 1, 4, true, false, loop)       \
  ADA_BWD_FORMS(T, P, NAME, V, 16, 16, AH)           \
  ADA_BWD_FORMS(T, P, NAME, 1, 16, 4, false)

#define ADA_HELD_FORMS(T, P, NAME)      \
  ADA_HELD(T, P, NAME, h32768, 4, 4) \
  ADA_HELD(T, P, NAME, h65536, 8, 8)

ADA_FORMS(bf16_t, bf16_t, bf16, 8, true)
ADA_FORMS(bf16_t, float, bf16_pf32, 8, true)
ADA_FORMS(half_t, half_t, fp16, 8, true)
ADA_FORMS(half_t, float, fp16_pf32, 8, true)
ADA_FORMS(float, float, fp32, 4, false)
ADA_HELD_FORMS(bf16_t, bf16_t, bf16)
ADA_HELD_FORMS(bf16_t, float, bf16_pf32)
ADA_HELD_FORMS(half_t, half_t, fp16)
ADA_HELD_FORMS(half_t, float, fp16_pf32)
