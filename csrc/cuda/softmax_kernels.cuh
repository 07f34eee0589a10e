// CUDA masked softmax and log-softmax, forward and backward.
//
// Register tiers (below, "register tiers"): fp16 and bf16 rows of up to 32K
// keys, fp32 rows of up to 16K (backward: 16K for all; with a mask or bias
// tensor, whose keys must be contiguous: 16K and 8K), are read once into
// registers; without a mask or bias, rows 16-byte aligned are streamed (the
// next row copied into shared memory while this one is computed: "streamed
// tiers").
// Tier D (sm_90, no mask or bias): rows too long for a block, up to 128K
// fp16 / bf16 keys and 64K fp32, or too few to fill the GPU, over the CTAs of
// a thread-block cluster, read once (cluster_plan).
// General kernels, for everything else (fp64, longer rows, strided mask /
// bias keys): THREADS threads share one row, a warp for rows up to 1024 keys
// (several rows per block), a whole block for longer rows; the visible
// interval is read twice (an online max/sum pass, then the normalising pass,
// which mostly hits L2). Everywhere only the visible interval [lo, hi) is read,
// the rest is written as the masked value with 16-byte stores.
//
// This header holds the kernels and the launchers; small .cu files
// instantiate them, a dtype's forward, log-softmax forward, backward and
// mask/bias tiers each in a file of its own (see the end of this header), so
// that the kernels (over a hundred a dtype) compile in parallel; softmax.cu
// holds the entry points.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "maskext/checks.h"
#include "maskext/cuda_utils.cuh"

#include "softmax_launch.h"

namespace maskext {
namespace {


using cuda::exp2_ftz;
using cuda::Vec16;
constexpr int kBlock = 256;     // threads per block, warp-per-row kernels
constexpr int kLongBlock = 512; // threads per block (= per row) for long rows
constexpr int64_t kWarpRowMax = 1024;
// 16-byte chunks per thread in flight in the general and split kernels'
// passes (cuda::vec_loop_ilp).
constexpr int kIlp = 4;

template <typename acc_t>
__device__ __forceinline__ acc_t fast_exp(acc_t v) {
  return exp(v);
}
template <>
__device__ __forceinline__ float fast_exp<float>(float v) {
  return __expf(v);
}

// Running (max, sum of exp(z - max)) of a set of scores. m is never NaN: a NaN
// score makes s NaN (and it stays NaN), also while m is still -inf, so a row
// whose visible scores are all NaN is not taken for a fully masked one
// (that is m == -inf with s == 0).
template <typename acc_t>
struct MaxSum {
  acc_t m, s;
  __device__ __forceinline__ void add(acc_t z) {
    if (z == -std::numeric_limits<acc_t>::infinity()) return;  // masked
    if (z > m) {
      s = s * fast_exp(m - z) + acc_t(1);
      m = z;
    } else {
      s += fast_exp(z - m);  // NaN z: s becomes NaN
    }
  }
  __device__ __forceinline__ void merge(acc_t m2, acc_t s2) {
    const acc_t mm = m > m2 ? m : m2;
    if (mm == -std::numeric_limits<acc_t>::infinity()) {
      s += s2;  // both sums are 0 or NaN: keep a NaN
      return;
    }
    s = s * fast_exp(m - mm) + s2 * fast_exp(m2 - mm);
    m = mm;
  }
};

// The score of an input v: scale * v, then softcap * tanh(. / softcap) when
// softcap > 0 (Gemma 2). One definition for the general and split kernels.
template <typename acc_t>
struct ScoreFn {
  acc_t scale, softcap, inv_cap;
  __device__ __forceinline__ explicit ScoreFn(const SoftmaxArgs& a)
      : scale(static_cast<acc_t>(a.scale)),
        softcap(static_cast<acc_t>(a.softcap)),
        inv_cap(a.softcap > 0 ? static_cast<acc_t>(1.0 / a.softcap) : acc_t(0)) {}
  __device__ __forceinline__ acc_t operator()(acc_t v) const {
    const acc_t z = v * scale;
    return softcap > acc_t(0) ? softcap * tanh(z * inv_cap) : z;
  }
};

// The bias rule, one place for every kernel: a key whose bias is finfo(T).min
// or less (-inf included) is masked; otherwise the bias, in the score's units
// (`unit`: log2(e) for the base-2 tiers), adds to its score.
template <typename acc_t>
__device__ __forceinline__ acc_t add_bias(acc_t z, acc_t bias, acc_t bias_min,
                                          acc_t unit = acc_t(1)) {
  return bias <= bias_min ? -std::numeric_limits<acc_t>::infinity() : z + bias * unit;
}

// Pass 2 of the general and split kernels: the output for a score z from
// the row's (max, sum), sink included. A NaN or +inf score (s NaN or m +inf)
// makes every visible output NaN, as torch.softmax and the CPU kernel; masked
// positions (-inf) keep the masked value (0, or finfo(T).min for LOG).
template <typename T, typename acc_t, bool LOG>
struct FinishFn {
  acc_t m, inv, lse, bias_min;
  __device__ __forceinline__ explicit FinishFn(const MaxSum<acc_t>& ms)
      : m(ms.m), bias_min(static_cast<acc_t>(std::numeric_limits<T>::lowest())) {
    const bool poisoned = ms.m == std::numeric_limits<acc_t>::infinity() || ms.s != ms.s;
    const acc_t qnan = std::numeric_limits<acc_t>::quiet_NaN();
    inv = poisoned ? qnan : acc_t(1) / ms.s;
    lse = poisoned ? qnan : ms.m + log(ms.s);
  }
  __device__ __forceinline__ acc_t operator()(acc_t z) const {
    if constexpr (LOG) {
      if (z == -std::numeric_limits<acc_t>::infinity()) return bias_min;
      const acc_t v = z - lse;  // below finfo.min becomes finfo.min; NaN stays NaN
      return v < bias_min ? bias_min : v;
    } else {
      return z == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : fast_exp(z - m) * inv;
    }
  }
};

// Reduction over the THREADS threads of one row. THREADS == 32: a warp;
// otherwise the whole block (every thread must call it).
template <int THREADS, typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> row_reduce(MaxSum<acc_t> v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    v.merge(__shfl_xor_sync(0xffffffffu, v.m, off), __shfl_xor_sync(0xffffffffu, v.s, off));
  }
  if constexpr (THREADS > 32) {
    __shared__ acc_t sm[THREADS / 32], ss[THREADS / 32];
    const int w = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) { sm[w] = v.m; ss[w] = v.s; }
    __syncthreads();
    v = {sm[0], ss[0]};
    for (int k = 1; k < THREADS / 32; ++k) v.merge(sm[k], ss[k]);
    __syncthreads();  // sm/ss are reused by the next row
  }
  return v;
}

template <int THREADS, typename acc_t>
__device__ __forceinline__ acc_t row_sum(acc_t v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  if constexpr (THREADS > 32) {
    __shared__ acc_t sh[THREADS / 32];
    if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = v;
    __syncthreads();
    v = sh[0];
    for (int k = 1; k < THREADS / 32; ++k) v += sh[k];
    __syncthreads();
  }
  return v;
}

struct RowPos {
  int64_t b, h, i;
};

__device__ __forceinline__ RowPos split_row(const SoftmaxArgs& a, int64_t r) {
  const int64_t t = r / a.Tq;
  return {t / a.H, t % a.H, r % a.Tq};
}

// A row's attention sink joins its (max, sum) as one more score.
template <typename acc_t>
__device__ __forceinline__ void merge_sink(MaxSum<acc_t>& ms, const SoftmaxArgs& a, const RowPos& p) {
  if (a.sinks != nullptr) {
    ms.merge(static_cast<const acc_t*>(a.sinks)[p.b * a.ss[0] + p.h * a.ss[1] + p.i * a.ss[2]],
             acc_t(1));
  }
}

__device__ __forceinline__ bool same_alignment(const void* p, const void* q) {
  return (reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(q)) % 16 == 0;
}

// GENERAL: a mask tensor and/or a bias is present; otherwise pass 1 reads the
// scores in x's own 16-byte alignment. LOG: log-softmax, whose masked
// positions are finfo(dtype).min (exp of them is exactly 0).
// __launch_bounds__(BLOCK, 1) here and in the backward: with (BLOCK) alone
// ptxas kept these kernels at 64 registers and spilled (the log-softmax
// variants of fp16, bf16 and fp32).
template <typename T, int THREADS, int BLOCK, bool GENERAL, bool LOG>
__global__ void __launch_bounds__(BLOCK, 1) softmax_forward_kernel(SoftmaxArgs a) {
  using acc_t = at::opmath_type<T>;
  using Pack = typename Vec16<T>::Pack;
  constexpr int VEC = Vec16<T>::N;
  constexpr int ROWS = BLOCK / THREADS;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const T* x = static_cast<const T*>(a.x);
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const ScoreFn<acc_t> sc(a);
  const acc_t bias_min = static_cast<acc_t>(std::numeric_limits<T>::lowest());
  const T masked = LOG ? std::numeric_limits<T>::lowest() : T(0);
  const int tid = threadIdx.x % THREADS;
  const int64_t rows = a.rows();

  for (int64_t r = static_cast<int64_t>(blockIdx.x) * ROWS + threadIdx.x / THREADS;
       r - threadIdx.x / THREADS < rows; r += static_cast<int64_t>(gridDim.x) * ROWS) {
    // Block-wide rows: every thread of the block stays in the loop together.
    const bool active = r < rows;
    int64_t lo = 0, hi = 0;
    RowPos p{0, 0, 0};
    if (active) {
      p = split_row(a, r);
      row_bounds(a.spec, p.b, p.i, lo, hi);
    }
    T* o = out + r * a.Tk;
    const T* xr = x + p.b * a.xs[0] + p.h * a.xs[1] + p.i * a.xs[2];
    const int64_t mo = p.b * a.ms[0] + p.h * a.ms[1] + p.i * a.ms[2];
    const int64_t bo = p.b * a.bs[0] + p.h * a.bs[1] + p.i * a.bs[2];
    // GENERAL: the mask and bias rule of one key's score z, for the scalar
    // head and tail (score) and the 16-byte chunks (chunk_scores) alike.
    auto join = [&](acc_t z, bool keep, acc_t bv) {
      if (bias != nullptr) z = add_bias(z, bv, bias_min);
      return keep ? z : kNegInf;
    };
    auto score = [&](int64_t j) -> acc_t {
      const acc_t z = sc(static_cast<acc_t>(xr[j]));
      if constexpr (GENERAL) {
        return join(z, a.mask == nullptr || a.mask[mo + j * a.ms[3]],
                    bias != nullptr ? static_cast<acc_t>(bias[bo + j * a.bs[3]]) : acc_t(0));
      }
      return z;
    };
    // The scores of the VEC keys from lo + k, a 16-byte chunk of the output
    // row: x, the bias and the mask each in one vector load where its row is
    // contiguous and shares the output's alignment, key by key otherwise.
    const bool xvec = same_alignment(xr + lo, o + lo);
    const bool bvec = GENERAL && bias != nullptr && a.bs[3] == 1 &&
                      same_alignment(bias + bo + lo, o + lo);
    const bool mvec = GENERAL && a.mask != nullptr && a.ms[3] == 1 &&
                      reinterpret_cast<uintptr_t>(a.mask + mo + lo) % VEC ==
                          reinterpret_cast<uintptr_t>(o + lo) / sizeof(T) % VEC;
    auto chunk_scores = [&](int64_t k, acc_t(&z)[VEC]) {
      const int64_t j = lo + k;
      if (xvec) {
        cuda::unpack16<T>(*reinterpret_cast<const uint4*>(xr + j), z);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) z[e] = static_cast<acc_t>(xr[j + e]);
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) z[e] = sc(z[e]);
      if constexpr (GENERAL) {
        acc_t bv[VEC] = {};
        if (bias != nullptr) {
          if (bvec) {
            cuda::unpack16<T>(*reinterpret_cast<const uint4*>(bias + bo + j), bv);
          } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) bv[e] = static_cast<acc_t>(bias[bo + (j + e) * a.bs[3]]);
          }
        }
        bool keep[VEC];
        if (a.mask == nullptr) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) keep[e] = true;
        } else if (mvec) {
          cuda::load_flags<VEC>(a.mask + mo + j, keep);
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) keep[e] = a.mask[mo + (j + e) * a.ms[3]];
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) z[e] = join(z[e], keep[e], bv[e]);
      }
    };
    if (active) {
      cuda::fill(o, lo, masked, tid, THREADS);
      cuda::fill(o + hi, a.Tk - hi, masked, tid, THREADS);
    }
    const int64_t n = hi - lo;

    // Pass 1: running max and sum.
    MaxSum<acc_t> ms{kNegInf, acc_t(0)};
    using Scores = cuda::Chunk<acc_t, VEC>;
    auto load_scores = [&](int64_t k) {
      Scores z;
      chunk_scores(k, z.v);
      return z;
    };
    if (GENERAL) {  // chunked as the output, as pass 2
      cuda::vec_loop_ilp<kIlp>(
          o + lo, n, tid, THREADS, [&](int64_t k) { ms.add(score(lo + k)); },  // [edge]
          load_scores, [&](int64_t, const Scores& z) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) ms.add(z.v[e]);
          });
    } else {
      cuda::vec_loop_ilp<kIlp>(
          xr + lo, n, tid, THREADS, [&](int64_t k) { ms.add(score(lo + k)); },
          [&](int64_t k) { return *reinterpret_cast<const Pack*>(xr + lo + k); },
          [&](int64_t, const Pack& pk) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) ms.add(sc(static_cast<acc_t>(pk.v[e])));
          });
    }
    ms = row_reduce<THREADS>(ms);
    if (!active || n == 0) continue;
    if (ms.m == kNegInf && ms.s == acc_t(0)) {  // every visible key masked by mask/bias
      cuda::fill(o + lo, n, masked, tid, THREADS);
      continue;
    }
    merge_sink(ms, a, p);
    const FinishFn<T, acc_t, LOG> finish(ms);  // pass 2: normalise
    // Stores follow the output's alignment (128 bits between a scalar head and
    // tail), the loads too where they can (chunk_scores).
    cuda::vec_loop_ilp<kIlp>(
        o + lo, n, tid, THREADS,
        [&](int64_t k) { o[lo + k] = static_cast<T>(finish(score(lo + k))); },  // [edge]
        load_scores, [&](int64_t k, const Scores& z) {
          acc_t res[VEC];
#pragma unroll
          for (int e = 0; e < VEC; ++e) res[e] = finish(z.v[e]);
          cuda::store16<T>(o + lo + k, res);
        });
  }
}

// Softmax: dx = scale * y * (dy - sum(dy * y)) on [lo, hi); 0 elsewhere.
// LOG (y = log-softmax): dx = scale * (dy - exp(y) * sum(dy)), sum and dx over
// the positions where y != finfo.min. `a.x` is dy.
template <typename T, int THREADS, int BLOCK, bool LOG>
__global__ void __launch_bounds__(BLOCK, 1) softmax_backward_kernel(SoftmaxArgs a) {
  using acc_t = at::opmath_type<T>;
  using Pack = typename Vec16<T>::Pack;
  constexpr int VEC = Vec16<T>::N;
  constexpr int ROWS = BLOCK / THREADS;
  const T* dy = static_cast<const T*>(a.x);
  const T* y = static_cast<const T*>(a.y);
  T* dx = static_cast<T*>(a.out);
  const acc_t scale = static_cast<acc_t>(a.scale);
  const T ymin = std::numeric_limits<T>::lowest();
  const int tid = threadIdx.x % THREADS;
  const int64_t rows = a.rows();
  // One position's share of the row sum, and its gradient.
  auto term = [&](T y, T g) -> acc_t {
    if constexpr (LOG) {
      return y == ymin ? acc_t(0) : static_cast<acc_t>(g);
    } else {
      return static_cast<acc_t>(y) * static_cast<acc_t>(g);
    }
  };

  for (int64_t r = static_cast<int64_t>(blockIdx.x) * ROWS + threadIdx.x / THREADS;
       r - threadIdx.x / THREADS < rows; r += static_cast<int64_t>(gridDim.x) * ROWS) {
    const bool active = r < rows;
    int64_t lo = 0, hi = 0;
    RowPos p{0, 0, 0};
    if (active) {
      p = split_row(a, r);
      row_bounds(a.spec, p.b, p.i, lo, hi);
    }
    T* o = dx + r * a.Tk;
    const T* yr = y + r * a.Tk;
    const T* gr = dy + p.b * a.xs[0] + p.h * a.xs[1] + p.i * a.xs[2];
    if (active) {
      cuda::fill(o, lo, T(0), tid, THREADS);
      cuda::fill(o + hi, a.Tk - hi, T(0), tid, THREADS);
    }
    const int64_t n = hi - lo;
    // Vector loads of y and dy need them to share dx's alignment (y may be a
    // view with an odd offset, dy any strided row).
    const bool vec = same_alignment(gr + lo, o + lo) && same_alignment(yr + lo, o + lo);

    // The chunk [lo + k, lo + k + VEC) of y and dy: 16-byte loads when vec.
    struct YG {
      Pack y, g;
    };
    auto load_yg = [&](int64_t k) {
      YG c;
      if (vec) {
        c.y = *reinterpret_cast<const Pack*>(yr + lo + k);
        c.g = *reinterpret_cast<const Pack*>(gr + lo + k);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          c.y.v[e] = yr[lo + k + e];
          c.g.v[e] = gr[lo + k + e];
        }
      }
      return c;
    };
    acc_t dot = 0;
    auto dot1 = [&](int64_t k) { dot += term(yr[lo + k], gr[lo + k]); };
    if (vec) {
      cuda::vec_loop_ilp<kIlp>(yr + lo, n, tid, THREADS, dot1, load_yg, [&](int64_t, const YG& c) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) dot += term(c.y.v[e], c.g.v[e]);
      });
    } else {
      for (int64_t k = tid; k < n; k += THREADS) dot1(k);
    }
    dot = row_sum<THREADS>(dot);
    if (!active || n == 0) continue;

    auto grad = [&](acc_t yv, acc_t gv) -> acc_t {
      if constexpr (LOG) {
        return yv == static_cast<acc_t>(ymin) ? acc_t(0) : scale * (gv - fast_exp(yv) * dot);
      } else {
        return scale * yv * (gv - dot);
      }
    };
    // Stores follow dx's alignment; y and dy come in 16-byte loads when both
    // share it, one by one otherwise.
    cuda::vec_loop_ilp<kIlp>(
        o + lo, n, tid, THREADS,
        [&](int64_t k) {
          o[lo + k] = static_cast<T>(grad(static_cast<acc_t>(yr[lo + k]),  // [edge]
                                          static_cast<acc_t>(gr[lo + k])));
        },
        load_yg, [&](int64_t k, const YG& c) {
          acc_t res[VEC];
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            res[e] = grad(static_cast<acc_t>(c.y.v[e]), static_cast<acc_t>(c.g.v[e]));
          }
          cuda::store16<T>(o + lo + k, res);
        });
  }
}

// ------------------------------------------------------------ register tiers
//
// Fast path for rows of up to 32K fp16 / bf16 keys (16K fp32), the forward
// with a mask or bias tensor too (GENERAL: half as long, keys contiguous): G
// threads per row (tier A: G < 32, several rows per warp; tier
// B: a warp; tier C: G = 128, 256 or 512, a block), each holding P 16-byte
// chunks of the row in registers, so the row is read once: every 16-byte load
// issued first, then the exact max, one exp per element, the sum, and 128-bit
// stores. Chunks follow the output row's alignment: chunk c of a row covers
// positions [c * VEC - a0, (c + 1) * VEC - a0), a0 = the row's offset from a
// 16-byte boundary, so every chunk inside the row is one aligned STG.E.128 and
// only the row's first and last chunk can be partial (scalar stores, [edge]).
// Loads are 128-bit for chunks inside [lo, hi) when the input row shares the
// output's alignment; the chunks that [lo, hi) cuts, and every chunk of a row
// whose alignment differs (a view such as x[..., 1:]), are loaded element by
// element. Nothing outside [lo, hi) is read.
//
// Threads per block: 128 (several rows) up to G (one row).
template <int G>
constexpr int kTierBlock = G > 128 ? G : 128;
// Blocks per SM that the registers must allow: 128 registers per thread (16
// warps per SM), 168 for 16 chunks per thread (64 fp32 scores and the rest do
// not fit in 128 without spilling).
template <int G, int P>
constexpr int kTierMinBlocks = (P >= 16 ? 3 : 4) * 128 / kTierBlock<G> > 0
                                   ? (P >= 16 ? 3 : 4) * 128 / kTierBlock<G>
                                   : 1;
// The forward holds no dy: its 1-, 2-, 4- and 8-chunk tiers fit 40, 48, 56
// and 96 registers without spilling (48, 40, 36 and 20 warps per SM; blocks
// of 256 or 512 threads: 16), where the compiler left unasked took up to 42,
// 74 and 116 (fewer warps, fewer bytes in flight: the forward tiers are bound
// by the rows in flight per SM, Nsight Compute on the H200 showing padded
// rows of 1K keys, 27 % fewer bytes, in the time of full ones). The 4- and
// 8-chunk budgets were 72 and 128 until the second read of a poisoned row went
// out of line (store_poisoned_row) and the bodies per count of active chunk
// slots went (kernel_report, sm_90, 2026-11-27).
// With a mask or bias tensor (GENERAL) the bias chunks and the mask's flags
// are live with the scores: at those warps per SM ptxas spilled 28-152 bytes
// (kernel_report.py, 2026-11-27). With the flags as bits and a poisoned row
// answered from bits instead of a second read (the ninth session), 48, 64 and
// 80 registers (40, 32 and 24 warps) fit without spill (they were 64, 80 and
// 96) and, for 8 chunks, the 16-chunk budget (168; 128 spilled 28-32 bytes).
template <int P, bool GENERAL>
constexpr int kTierForwardMinWarps = GENERAL ? (P == 1 ? 40 : P == 2 ? 32 : 24)
                                             : (P == 1 ? 48 : P == 2 ? 40 : P == 4 ? 36 : 20);
template <int G, int P, bool GENERAL>
constexpr int kTierForwardMinBlocks =
    (P > 4 && GENERAL) || P > 8
        ? kTierMinBlocks<G, (GENERAL ? 16 : P)>
        : (kTierForwardMinWarps<P, GENERAL> * 32 / kTierBlock<G> > 0
               ? kTierForwardMinWarps<P, GENERAL> * 32 / kTierBlock<G>
               : 1);
// The backward's 4-chunk tiers (4 chunks of y and of dy per thread: every
// dtype's rows of 9-128 chunks, fp16 / bf16 rows up to 16K keys) fit 64
// registers without spilling, at the same SASS length (kernel_report, sm_90,
// 2026-11-27): 32 warps per SM, where the compiler unasked took 66-72 (28
// warps; a 256-thread block per row then ran 3 per SM, and 2048 rows of 8K
// fp16 keys took 5.2 waves of blocks, 0.82-0.87x torch.compile's time on the
// H200). Tier D's CTAs (CLUSTER) spilled 8 bytes at 64: they keep
// kTierMinBlocks.
template <int G, int P, bool CLUSTER>
constexpr int kTierBackwardMinBlocks =
    P == 4 && !CLUSTER ? 32 * 32 / kTierBlock<G> : kTierMinBlocks<G, P>;

// Row r of the (B, H, Tq) rows as (b, h, i) by 32-bit multiply-high divisions
// (the tiers need rows < 2^31).
struct RowDiv {
  cuda::FastDiv tq, h;
};

struct TierRow {
  int64_t b, h, i;
};

__device__ __forceinline__ TierRow tier_row(uint32_t r, const RowDiv& d) {
  const uint32_t t = d.tq.div(r), b = d.h.div(t);
  return {b, t - b * d.h.d, r - t * d.tq.d};
}

// The lanes of this thread's warp that share its row: G consecutive lanes,
// or the whole warp when G >= 32.
template <int G>
__device__ __forceinline__ unsigned group_mask() {
  if constexpr (G >= 32) {
    return 0xffffffffu;
  } else {
    return ((1u << G) - 1u) << (threadIdx.x % 32 / G * G);
  }
}

// op over the G threads of a row, every thread gets the result: shuffles in
// the warp; for a row of several warps (tier C) each warp's result goes
// through `part` (G / 32 floats of shared memory, one array per reduction of
// the kernel) and every warp reduces those with shuffles again (no serial loop).
template <int G, typename Op>
__device__ __forceinline__ float group_reduce(float v, unsigned mask, float* part, Op op) {
#pragma unroll
  for (int off = (G < 32 ? G : 32) / 2; off > 0; off /= 2) {
    v = op(v, __shfl_xor_sync(mask, v, off));
  }
  if constexpr (G > 32) {
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    v = part[threadIdx.x % (G / 32)];
#pragma unroll
    for (int off = G / 64; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  }
  return v;
}

__device__ __forceinline__ float max_op(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ float sum_op(float a, float b) { return a + b; }

// Tier D: the most CTAs in a cluster (the portable limit).
constexpr int kClusterMax = 8;

// Tier D: one exchange of the CTAs' (max, sum) pairs of a row through
// distributed shared memory (sm_90). `mine` is this CTA's pair: its max m (-inf
// when it holds no finite score) and its sum s of 2^(u - m), u in base 2 (s =
// 0 when m = -inf); `slot` is this CTA's pair in shared memory. Returns the
// row's (max, sum of 2^(u - max)), the same in every CTA (the pairs merged in
// rank order everywhere; with m = 0 everywhere, a plain sum); a NaN sum stays
// NaN. The caller must keep its shared memory alive until every CTA has read
// it: cluster_done() before it exits. Every thread of every CTA of the
// cluster must call it.
__device__ __forceinline__ float2 cluster_merge(float2 mine, float2* slot) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  const cg::cluster_group cl = cg::this_cluster();
  if (threadIdx.x == 0) *slot = mine;
  cl.sync();
  const unsigned n = cl.num_blocks();
  float2 w[kClusterMax];  // every load issued before any is used
#pragma unroll
  for (int q = 0; q < kClusterMax; ++q) {
    w[q] = q < n ? *cl.map_shared_rank(slot, q) : make_float2(-INFINITY, 0.f);
  }
  cl.barrier_arrive();  // this CTA is done reading its peers' slots
  float m = w[0].x;
#pragma unroll
  for (int q = 1; q < kClusterMax; ++q) m = fmaxf(m, w[q].x);
  float s = 0.f;
#pragma unroll
  for (int q = 0; q < kClusterMax; ++q) s += w[q].y == 0.f ? 0.f : w[q].y * exp2f(w[q].x - m);
  return make_float2(m, s);
#else
  __trap();  // the host launches tier D only for code built for sm_90 or later
  return mine;
#endif
}

// Tier D: waits until every CTA of the cluster has read this CTA's slot.
__device__ __forceinline__ void cluster_done() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().barrier_wait();
#endif
}

// Tier D: this CTA's rank in its cluster and the cluster's size.
__device__ __forceinline__ unsigned cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().block_rank();
#else
  return 0;
#endif
}

__device__ __forceinline__ unsigned cluster_blocks() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().num_blocks();
#else
  return 1;
#endif
}

// What the outputs of a row need from its max m (0 when every score is -inf)
// and its sum s of exp(z - m): the one place where (max, sum) become the
// normaliser. `sink`, -inf for none, is the row's extra logit (attention
// sink), one more score of the normaliser with no output of its own:
// m' = max(m, sink), s' = s * exp(m - m') + exp(sink - m'). As in the general
// kernels, a row whose every score is -inf (s == 0) keeps its masked outputs.
struct RowNorm {
  float c;        // softmax: y = exp(z - m) * c
  float lse_m;    // log-softmax: y = (z - m) - lse_m (the log-sum-exp less m)
  bool poisoned;  // a NaN or +inf score or sink (s is NaN): visible outputs are NaN
};

__device__ __forceinline__ RowNorm row_norm(float m, float s, float k) {
  // s >= 1 when some score is finite (the max adds exp(0)); s == 0 when every
  // visible score is -inf: all outputs are then the masked value. A sink of
  // -inf adds nothing (the formula below would give the same).
  if (k == -std::numeric_limits<float>::infinity() || s == 0.f) {
    return {s > 0.f ? 1.f / s : 0.f, logf(s), s != s};
  }
  const float mk = k > m ? k : m;  // a NaN sink gives s' NaN below
  const float sk = s * fast_exp(m - mk) + fast_exp(k - mk);
  return {fast_exp(m - mk) / sk, (mk - m) + logf(sk), sk != sk};
}

// P chunks of 16 bytes per lane as raw bits; `full[k]`: chunk k lies inside
// [lo, hi) and came in one 128-bit load. Elements outside [lo, hi) are 0.
template <typename T, int P>
struct RawRow {
  uint32_t w[P][4];
  bool full[P];
};

// Chunks k >= N (a constant: with_active_slots) are known to lie past hi.
template <typename T, int G, int P, int N = P>
__device__ __forceinline__ void load_row(const T* __restrict__ src, int lo, int hi, bool vec,
                                         int lane, int a0, RawRow<T, P>& raw) {
  constexpr int VEC = Vec16<T>::N;
  // All 128-bit loads first, so that P of them are in flight per lane.
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = (lane + G * k) * VEC - a0;
    raw.full[k] = k < N && vec && lo <= p && p + VEC <= hi;
    uint4 u = make_uint4(0, 0, 0, 0);
    if (raw.full[k]) u = __ldg(reinterpret_cast<const uint4*>(src + p));
    raw.w[k][0] = u.x;
    raw.w[k][1] = u.y;
    raw.w[k][2] = u.z;
    raw.w[k][3] = u.w;
  }
  // The chunks that [lo, hi) cuts (or all, when src is not aligned like the
  // output), element by element.
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = (lane + G * k) * VEC - a0;
    if (k < N && !raw.full[k] && p < hi && p + VEC > lo) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (lo <= p + e && p + e < hi) {
          if constexpr (sizeof(T) == 2) {
            const uint32_t bits = *reinterpret_cast<const uint16_t*>(src + p + e);
            raw.w[k][e / 2] |= bits << (16 * (e % 2));
          } else {
            raw.w[k][e] = *reinterpret_cast<const uint32_t*>(src + p + e);
          }
        }
      }
    }
  }
}

// out[k]: the lane's chunk k lies wholly outside [lo, hi) (neither read nor
// computed by the tiers, only written as the masked value); for k >= N, a
// constant (with_active_slots), known at compile time.
template <typename T, int G, int P, int N = P>
__device__ __forceinline__ void outside_chunks(int lo, int hi, int lane, int a0, bool (&out)[P]) {
  constexpr int VEC = Vec16<T>::N;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = (lane + G * k) * VEC - a0;
    out[k] = k >= N || p >= hi || p + VEC <= lo;
  }
}

// The chunk slots k < n of a row's group (lanes lane + G * k) that hold a key
// below hi for some lane; past them every lane's chunk is the masked value.
// Groups narrower than a warp take the warp's largest n, so that n is the same
// in every lane of a warp (in every thread of a block from G = 128 on: a
// block per row).
template <typename T, int G, int P>
__device__ __forceinline__ int active_slots(int hi, int a0) {
  constexpr int VEC = Vec16<T>::N;
  const int num = hi + a0;  // lane 0's chunk k starts at G * k * VEC - a0
  int n = num <= 0 ? 0 : (num + G * VEC - 1) / (G * VEC);
  n = n < P ? n : P;
  if constexpr (G < 32) {
    // Called before any lane of the warp has left (a lane past the last row
    // has hi = 0: n = 0), so that n is the same in every lane.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    n = __reduce_max_sync(0xffffffffu, n);
#else
    n = P;
#endif
  }
  return n;
}

// Calls f.template operator()<N>() with N >= n, N one of at most 4 counts up
// to P (multiples of P / 4), so that the chunk slots from N on, which the
// tiers only write as the masked value, are dropped from the code that runs:
// the compiler predicates a skipped chunk's arithmetic (`if (out[k])`) rather
// than branching around it, and the H200's padded rows (Nsight Compute,
// 2026-11-27: 26 of 32 threads per instruction not predicated off, against 31
// on full rows) issued as many instructions as full ones, in as much time.
template <int P, typename F>
__device__ __forceinline__ void with_active_slots(int n, F&& f) {
  constexpr int S = P >= 4 ? P / 4 : 1;
  if (n <= S) {
    f.template operator()<S>();
  } else if constexpr (2 * S <= P) {
    if (n <= 2 * S || 2 * S == P) {
      f.template operator()<2 * S>();
    } else if constexpr (3 * S <= P) {
      if (n <= 3 * S || 3 * S == P) {
        f.template operator()<3 * S>();
      } else {
        f.template operator()<P>();
      }
    }
  }
}

template <typename T, int P>
__device__ __forceinline__ void unpack_chunk(const RawRow<T, P>& raw, int k,
                                             float (&v)[Vec16<T>::N]) {
  cuda::unpack16<T>(make_uint4(raw.w[k][0], raw.w[k][1], raw.w[k][2], raw.w[k][3]), v);
}

// Bit e set iff byte e of w is non-zero (any non-zero byte of a bool tensor
// is true): the high bit of each non-zero byte, gathered into the top byte by
// one multiply.
__device__ __forceinline__ uint32_t nonzero_bytes(uint64_t w) {
  constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7full;
  const uint64_t nz = (((w & kLow7) + kLow7) | w) & 0x8080808080808080ull;
  return static_cast<uint32_t>(((nz >> 7) * 0x0102040810204080ull) >> 56);
}

// The mask's flags for the P chunks of a lane, one bit each: bit k * VEC + e
// for key e of chunk k (set: visible), 0 outside [lo, hi), in two steps so
// that the mask's loads are in flight with x's (load_scores): load_keep issues
// one VEC-byte load per chunk inside [lo, hi) when the mask row (contiguous
// keys) is aligned like the output row (vec); keep_bits reads the rest byte by
// byte and makes the bits. As bits the flags take one or two registers (as
// bytes, P or 2P; as bools, P * VEC, which spilled).
template <typename T, int G, int P>
__device__ __forceinline__ void load_keep(const bool* __restrict__ src, int lo, int hi, bool vec,
                                          int lane, int a0, uint64_t (&w)[P]) {
  constexpr int VEC = Vec16<T>::N;
  static_assert((VEC == 4 || VEC == 8) && P * VEC <= 64, "load_keep: 4 or 8 flags per chunk");
  using Word = std::conditional_t<VEC == 8, unsigned long long, uint32_t>;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = (lane + G * k) * VEC - a0;
    w[k] = vec && lo <= p && p + VEC <= hi ? __ldg(reinterpret_cast<const Word*>(src + p)) : 0;
  }
}

template <typename T, int G, int P>
__device__ __forceinline__ uint64_t keep_bits(const bool* __restrict__ src, int lo, int hi,
                                              bool vec, int lane, int a0, uint64_t (&w)[P]) {
  constexpr int VEC = Vec16<T>::N;
  uint64_t keep = 0;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = (lane + G * k) * VEC - a0;
    if (!(vec && lo <= p && p + VEC <= hi)) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (lo <= p + e && p + e < hi && src[p + e]) w[k] |= uint64_t(1) << (8 * e);
      }
    }
    keep |= uint64_t(nonzero_bytes(w[k])) << (k * VEC);
  }
  return keep;
}

// One element of a row's scalar head or tail, converted by the caller: the
// store keeps this [edge] line in the line table (converted on the store's
// line, the store was charged to cuda_fp16.hpp's conversion).
template <typename T>
__device__ __forceinline__ void store_edge(T* p, T v) {
  *p = v;  // [edge]
}

// Writes v (P chunks per lane) to the output row o[0, Tk): one 128-bit store
// per chunk inside the row, scalar stores for the partial first and last. The
// chunks with out[k] set (wholly outside [lo, hi), their v never computed) are
// written as `masked`.
template <typename T, int G, int P>
__device__ __forceinline__ void store_row(T* __restrict__ o, int Tk, int lane, int a0,
                                          const float (&v)[P][Vec16<T>::N], const bool (&out)[P],
                                          float masked) {
  constexpr int VEC = Vec16<T>::N;
  const T fill = static_cast<T>(masked);
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = (lane + G * k) * VEC - a0;
    if (p >= 0 && p + VEC <= Tk) {
      if (out[k]) {
        cuda::st_global_128(o + p, cuda::splat16<T>(fill));
      } else {
        cuda::store16<T>(o + p, v[k]);
      }
    } else if (p < Tk && p + VEC > 0) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (p + e >= 0 && p + e < Tk) store_edge(o + p + e, out[k] ? fill : static_cast<T>(v[k][e]));
      }
    }
  }
}

// store_row with every chunk computed (the flags fold away when inlined).
template <typename T, int G, int P>
__device__ __forceinline__ void store_row(T* __restrict__ o, int Tk, int lane, int a0,
                                          const float (&v)[P][Vec16<T>::N]) {
  const bool none[P] = {};
  store_row<T, G, P>(o, Tk, lane, a0, v, none, 0.f);
}

// A fully masked row: `masked` everywhere, nothing read.
template <typename T, int G, int P>
__device__ __forceinline__ void store_masked_row(T* __restrict__ o, int Tk, int lane, int a0,
                                                 float masked) {
  float v[P][Vec16<T>::N];
#pragma unroll
  for (int k = 0; k < P; ++k) {
#pragma unroll
    for (int e = 0; e < Vec16<T>::N; ++e) v[k][e] = masked;
  }
  store_row<T, G, P>(o, Tk, lane, a0, v);
}

// The scores of x's raw chunks in base-2 units, u = log2(e) * scale * x
// (softcapped), -inf outside [lo, hi); chunks out[k] untouched.
template <typename T, int G, int P>
__device__ __forceinline__ void x_scores(const RawRow<T, P>& raw, int lo, int hi, int lane, int a0,
                                         double scale, double softcap, const bool (&out)[P],
                                         float (&v)[P][Vec16<T>::N]) {
  constexpr int VEC = Vec16<T>::N;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr double kLog2e = 1.4426950408889634;
  const float scale2 = static_cast<float>(scale * kLog2e);
#pragma unroll
  for (int k = 0; k < P; ++k) {
    if (out[k]) continue;
    const int p = (lane + G * k) * VEC - a0;
    unpack_chunk(raw, k, v[k]);
    if (raw.full[k]) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[k][e] *= scale2;
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        v[k][e] = lo <= p + e && p + e < hi ? v[k][e] * scale2 : kNegInf;
      }
    }
  }
  if (softcap > 0) {  // softcap * tanh(z / softcap) on the visible scores, in base 2
    const float cap2 = static_cast<float>(softcap * kLog2e), inv_cap2 = 1.f / cap2;
#pragma unroll
    for (int k = 0; k < P; ++k) {
      if (out[k]) continue;
      const int p = (lane + G * k) * VEC - a0;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (lo <= p + e && p + e < hi) v[k][e] = cap2 * tanhf(v[k][e] * inv_cap2);
      }
    }
  }
}

// The softmax of a poisoned row (a NaN or +inf visible score or sink) from its
// raw chunks: 0 where the score is -inf, NaN at the other visible positions;
// chunks out[k] untouched.
template <typename T, int G, int P>
__device__ __forceinline__ void poisoned_outputs(const RawRow<T, P>& raw, int lo, int hi, int lane,
                                                 int a0, double scale, double softcap,
                                                 const bool (&out)[P],
                                                 float (&v)[P][Vec16<T>::N]) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  x_scores<T, G, P>(raw, lo, hi, lane, a0, scale, softcap, out, v);
#pragma unroll
  for (int k = 0; k < P; ++k) {
    if (out[k]) continue;
#pragma unroll
    for (int e = 0; e < Vec16<T>::N; ++e) {
      v[k][e] = v[k][e] == kNegInf ? 0.f : std::numeric_limits<float>::quiet_NaN();
    }
  }
}

// The softmax of a poisoned row without a mask or bias tensor (rare: a NaN or
// +inf visible score or sink): 0 where the score is -inf, NaN at the other
// visible positions, 0 outside. The exps no longer tell a -inf score
// from an underflow, so x is read again; out of line, because inlined, that
// second read kept x's row pointer and the scores' constants live through the
// whole kernel (kernel_report, sm_90, 2026-11-27: the fp16 8-chunk softmax
// tiers 116 registers, 89 without it).
template <typename T, int G, int P>
__device__ __noinline__ void store_poisoned_row(const T* __restrict__ xr, T* __restrict__ o, int lo,
                                                int hi, int Tk, int lane, int a0, double scale,
                                                double softcap) {
  constexpr int VEC = Vec16<T>::N;
  bool out[P];
  outside_chunks<T, G, P>(lo, hi, lane, a0, out);
  RawRow<T, P> raw;
  load_row<T, G, P>(xr, lo, hi, same_alignment(xr, o), lane, a0, raw);
  float v[P][VEC];
  poisoned_outputs<T, G, P>(raw, lo, hi, lane, a0, scale, softcap, out, v);
  store_row<T, G, P>(o, Tk, lane, a0, v, out, 0.f);
}

// Copies the chunks of row `src` that [lo, hi) touches into this thread's
// slots `dst` (stride: the block's threads).
template <typename T, int G, int P>
__device__ __forceinline__ void copy_row_async(const T* __restrict__ src, int lo, int hi, int lane,
                                               uint4* dst) {
  constexpr int VEC = Vec16<T>::N;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = (lane + G * k) * VEC;
    if (p < hi && p + VEC > lo) cuda::copy_async_16(dst + k * kTierBlock<G>, src + p);
  }
}

// The chunks k < N that copy_row_async copied, from this thread's slots `src`
// into raw, with load_row's meaning: full[k] for chunks inside [lo, hi), 0
// outside [lo, hi).
template <typename T, int G, int P, int N = P>
__device__ __forceinline__ void read_row_slots(const uint4* src, int lo, int hi, int lane,
                                               RawRow<T, P>& raw) {
  constexpr int VEC = Vec16<T>::N;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = (lane + G * k) * VEC;
    raw.full[k] = k < N && lo <= p && p + VEC <= hi;
    uint4 u = make_uint4(0, 0, 0, 0);
    if (k < N && p < hi && p + VEC > lo) u = src[k * kTierBlock<G>];
    raw.w[k][0] = u.x;
    raw.w[k][1] = u.y;
    raw.w[k][2] = u.z;
    raw.w[k][3] = u.w;
    if (k < N && !raw.full[k]) {  // a chunk that [lo, hi) cuts: its keys outside are 0
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (!(lo <= p + e && p + e < hi)) {
          if constexpr (sizeof(T) == 2) {
            raw.w[k][e / 2] &= ~(0xffffu << (16 * (e % 2)));
          } else {
            raw.w[k][e] = 0;
          }
        }
      }
    }
  }
}

// The rest of a forward tier's row once v holds its scores u in base 2 units
// (softcapped, masked, biased; -inf outside [lo, hi); chunks out[k], wholly
// outside, untouched): the exact max, one exp per element, the sum, the
// normaliser, 128-bit stores. neg_inf (GENERAL): bit k * VEC + e set where
// the score is -inf, for a poisoned row; without a mask or bias such a row
// reads x again (xr, scale, softcap: store_poisoned_row), or (SLOTS: the
// streamed tiers) its raw chunks still in this thread's shared-memory slots,
// inline: in the streamed tiers' row loop the call kept the loop's registers
// live across it and ptxas spilled 140-300 bytes (sm_90). part_max, part_sum:
// tier C's shared arrays of the two reductions; cluster_slot: tier D's. The
// caller ends tier D's CTA with cluster_done().
template <typename T, int G, int P, bool LOG, bool GENERAL, bool CLUSTER, bool SLOTS = false>
__device__ __forceinline__ void finish_forward_row(float (&v)[P][Vec16<T>::N], const bool (&out)[P],
                                                   uint64_t neg_inf, float sink, unsigned mask,
                                                   float* part_max, float* part_sum,
                                                   float2* cluster_slot, const T* __restrict__ xr,
                                                   T* __restrict__ o, int lo, int hi, int Tk,
                                                   int lane, int a0, double scale, double softcap,
                                                   const uint4* slots = nullptr) {
  constexpr int VEC = Vec16<T>::N;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr float kLn2 = 0.693147180559945309f;
  const float masked = LOG ? static_cast<float>(std::numeric_limits<T>::lowest()) : 0.f;
  // Max and sum by chunk, then across chunks: P short dependency chains
  // instead of one of P * VEC.
  float part_m[P];  // fmaxf skips NaN: a NaN score shows up in the sum
#pragma unroll
  for (int k = 0; k < P; ++k) {
    part_m[k] = kNegInf;
    if (out[k]) continue;
#pragma unroll
    for (int e = 0; e < VEC; ++e) part_m[k] = fmaxf(part_m[k], v[k][e]);
  }
  float m = part_m[0];
#pragma unroll
  for (int k = 1; k < P; ++k) m = fmaxf(m, part_m[k]);
  m = group_reduce<G>(m, mask, part_max, max_op);
  const float m_block = m;  // tier D: this CTA's max, -inf when it has no finite score
  if (m == kNegInf) m = 0.f;  // every score -inf: 2^(-inf - 0) = 0, no NaN
  float part_s[P];
  // The row's sum of 2^(u - m) and, in tier D, the row's max m and the factor
  // 2^(m_block - m) that turns this CTA's exps into the row's.
  float block_factor = 1.f;
  auto row_sum = [&] {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < P; ++k) s += part_s[k];
    s = group_reduce<G>(s, mask, part_sum, sum_op);
    if constexpr (CLUSTER) {
      const float2 row = cluster_merge(make_float2(m_block, s), cluster_slot);
      block_factor = s == 0.f ? 0.f : exp2f(m - row.x);  // s == 0: every exp here is 0
      m = row.x == kNegInf ? 0.f : row.x;
      s = row.y;
    }
    return s;
  };
  if constexpr (LOG) {
#pragma unroll
    for (int k = 0; k < P; ++k) {
      part_s[k] = 0.f;
      if (out[k]) continue;
#pragma unroll
      for (int e = 0; e < VEC; ++e) part_s[k] += exp2_ftz(v[k][e] - m);
    }
    const float s = row_sum();
    const RowNorm n = row_norm(m * kLn2, s, sink);
#pragma unroll
    for (int k = 0; k < P; ++k) {
      if (out[k]) continue;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        // (u - m) ln 2 = z - max z to the rounding of the subtraction, as in base e
        const float y = (v[k][e] - m) * kLn2 - n.lse_m;  // below finfo.min: finfo.min; NaN stays
        v[k][e] = v[k][e] == kNegInf || y < masked ? masked : y;
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < P; ++k) {
      part_s[k] = 0.f;
      if (out[k]) continue;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        v[k][e] = exp2_ftz(v[k][e] - m);  // the one exp of each element
        part_s[k] += v[k][e];
      }
    }
    const float s = row_sum();
    const RowNorm n = row_norm(m * kLn2, s, sink);
    if (n.poisoned) {
      // Rare: NaN at every visible position but those whose score is -inf,
      // which the exps no longer tell apart: from the row's slots (SLOTS), the
      // bits kept above (GENERAL), or x read again, out of line.
      if constexpr (SLOTS) {
        RawRow<T, P> raw;
        read_row_slots<T, G, P>(slots, lo, hi, lane, raw);
        poisoned_outputs<T, G, P>(raw, lo, hi, lane, a0, scale, softcap, out, v);
      } else if constexpr (!GENERAL) {
        store_poisoned_row<T, G, P>(xr, o, lo, hi, Tk, lane, a0, scale, softcap);
        return;
      } else {
#pragma unroll
        for (int k = 0; k < P; ++k) {
          if (out[k]) continue;
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const bool is_neg_inf = (neg_inf >> (k * VEC + e)) & 1;
            v[k][e] = is_neg_inf ? 0.f : std::numeric_limits<float>::quiet_NaN();
          }
        }
      }
    } else {
      const float c = n.c * block_factor;
#pragma unroll
      for (int k = 0; k < P; ++k) {
        if (out[k]) continue;
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[k][e] *= c;
      }
    }
  }
  store_row<T, G, P>(o, Tk, lane, a0, v, out, masked);
}

// GENERAL: a mask and/or bias tensor (contiguous keys, tier_chunks) joins
// the scores as they are loaded, by the rule of the general kernel's `score`.
// CLUSTER (tier D, sm_90): a row over the CTAs of a thread-block cluster, CTA q
// of the cluster holding the row's chunks [q * G * P, (q + 1) * G * P) as a
// block of G threads holds a row of G * P chunks; the CTAs' (max, sum) pairs
// meet once in distributed shared memory (cluster_merge).
// Tier D's register budget is the 8-chunk one (2 CTAs per SM) at every P up
// to 8 (at 5 CTAs per SM, 48 registers, the 2-chunk kernel spilled the
// merge's pairs).
template <typename T, int G, int P, bool LOG, bool GENERAL, bool CLUSTER = false>
__global__ void __launch_bounds__(kTierBlock<G>, (CLUSTER ? kTierMinBlocks<G, 8>
                                                          : kTierForwardMinBlocks<G, P, GENERAL>))
    softmax_tier_forward_kernel(SoftmaxArgs a, RowDiv d) {
  static_assert(!CLUSTER || (G == kTierBlock<G> && !GENERAL), "tier D: a block per CTA, no mask");
  constexpr int VEC = Vec16<T>::N;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  __shared__ float part[2][G > 32 ? G / 32 : 1];  // tier C: the max, then the sum
  __shared__ float2 cluster_slot[1];  // tier D: this CTA's (max, sum)
  const uint32_t r = CLUSTER ? blockIdx.x / cluster_blocks()
                             : blockIdx.x * (kTierBlock<G> / G) + threadIdx.x / G;
  // No with_active_slots here, unlike the backward: the forward's bodies per
  // count of active chunk slots measured no faster on the H200 (2026-11-27,
  // 52d7cad against 3202c84: padded and causal rows of 1K-16K keys -10 % to
  // +7 %, within the runs' spread; 128-key causal rows 10-13 % slower in every
  // dtype) and doubled the tier kernels' code.
  const bool has_row = r < a.rows();  // always in tier D (its grid: rows x C CTAs)
  // The thread's first chunk in the row (its chunks are lane + G * k).
  const int lane = CLUSTER ? cluster_rank() * G * P + threadIdx.x : threadIdx.x % G;
  const unsigned mask = group_mask<G>();
  const TierRow pos = tier_row(r, d);
  int64_t lo64 = 0, hi64 = 0;
  if (has_row) row_bounds(a.spec, pos.b, pos.i, lo64, hi64);
  const int lo = static_cast<int>(lo64), hi = static_cast<int>(hi64), Tk = static_cast<int>(a.Tk);
  T* __restrict__ o = static_cast<T*>(a.out) + static_cast<int64_t>(r) * a.Tk;
  const T* __restrict__ xr = static_cast<const T*>(a.x) + pos.b * a.xs[0] + pos.h * a.xs[1] +
                             pos.i * a.xs[2];
  const int a0 = static_cast<int>(reinterpret_cast<uintptr_t>(o) / sizeof(T) % VEC);
  if (!has_row) return;
  const float masked = LOG ? static_cast<float>(std::numeric_limits<T>::lowest()) : 0.f;
  const float bias_min = static_cast<float>(std::numeric_limits<T>::lowest());
  if (lo >= hi) {  // fully masked row: its masked values, nothing read
    store_masked_row<T, G, P>(o, Tk, lane, a0, masked);
    return;
  }
  float v[P][VEC];

  // The scores in base-2 units, u = log2(e) * z, so that exp(z - m) = 2^(u - max u)
  // is one FADD and one MUFU.EX2 (Nsight Compute on the H200: this kernel issued
  // an instruction on ~70 % of cycles, so instructions per element set its pace
  // as much as DRAM). Chunks wholly outside [lo, hi) are neither read nor
  // computed: a padded or causal row costs fewer instructions, not only fewer bytes.
  constexpr double kLog2e = 1.4426950408889634;
  // The sink's value, not its address, is what stays live (one register, not two).
  const float sink = a.sinks == nullptr ? kNegInf
                                        : static_cast<const float*>(a.sinks)[pos.b * a.ss[0] +
                                                                             pos.h * a.ss[1] +
                                                                             pos.i * a.ss[2]];
  const bool vec = same_alignment(xr, o);
  bool out[P];
  outside_chunks<T, G, P>(lo, hi, lane, a0, out);
  // v = the scores u (softcapped, masked, biased), -inf outside [lo, hi);
  // chunks out[k] untouched.
  {
    RawRow<T, P> raw;
    load_row<T, G, P>(xr, lo, hi, vec, lane, a0, raw);
    // The bias's and the mask's loads now, in flight with x's: one round trip
    // to memory rather than three in a row (they came after x's unpack).
    const bool* mr = nullptr;
    bool mvec = false;
    uint64_t mw[GENERAL ? P : 1];
    RawRow<T, GENERAL ? P : 1> braw;
    if constexpr (GENERAL) {
      if (a.bias != nullptr) {
        const T* br = static_cast<const T*>(a.bias) + pos.b * a.bs[0] + pos.h * a.bs[1] +
                      pos.i * a.bs[2];
        load_row<T, G, P>(br, lo, hi, same_alignment(br, o), lane, a0, braw);
      }
      if (a.mask != nullptr) {
        mr = a.mask + pos.b * a.ms[0] + pos.h * a.ms[1] + pos.i * a.ms[2];
        mvec = reinterpret_cast<uintptr_t>(mr) % VEC == a0;
        load_keep<T, G, P>(mr, lo, hi, mvec, lane, a0, mw);
      }
    }
    x_scores<T, G, P>(raw, lo, hi, lane, a0, a.scale, a.softcap, out, v);
    if constexpr (GENERAL) {
      // Outside [lo, hi) the bias reads as 0 and the flags as false: -inf stays.
      if (a.bias != nullptr) {  // z + bias, -inf where bias <= finfo.min
#pragma unroll
        for (int k = 0; k < P; ++k) {
          if (out[k]) continue;
          float bv[VEC];
          unpack_chunk(braw, k, bv);
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            v[k][e] = add_bias(v[k][e], bv[e], bias_min, static_cast<float>(kLog2e));
          }
        }
      }
      if (a.mask != nullptr) {
        const uint64_t keep = keep_bits<T, G, P>(mr, lo, hi, mvec, lane, a0, mw);
#pragma unroll
        for (int k = 0; k < P; ++k) {
          if (out[k]) continue;
#pragma unroll
          for (int e = 0; e < VEC; ++e) v[k][e] = (keep >> (k * VEC + e)) & 1 ? v[k][e] : kNegInf;
        }
      }
    }
  }
  // GENERAL: bit k * VEC + e set where the score is -inf (x, mask or bias), for
  // a poisoned row (below), which then needs neither x, mask nor bias again: the
  // pointers and flags that a second read keeps live cost the 4-chunk mask /
  // bias tiers 52 bytes of spill at 80 registers (24 warps per SM).
  uint64_t neg_inf = 0;
  if constexpr (GENERAL) {
    static_assert(P * VEC <= 64, "one bit per score");
#pragma unroll
    for (int k = 0; k < P; ++k) {
      if (out[k]) continue;
#pragma unroll
      for (int e = 0; e < VEC; ++e) neg_inf |= uint64_t(v[k][e] == kNegInf) << (k * VEC + e);
    }
  }

  finish_forward_row<T, G, P, LOG, GENERAL, CLUSTER>(v, out, neg_inf, sink, mask, part[0],
                                                     part[1], cluster_slot, xr, o, lo, hi, Tk,
                                                     lane, a0, a.scale, a.softcap);
  if constexpr (CLUSTER) cluster_done();
}

// The rest of a backward tier's row once yraw and graw hold its y and dy (0
// outside [lo, hi); chunk slots k >= N lie past hi): the sum, dx, 128-bit
// stores. part: tier C's shared array of the sum; cluster_slot: tier D's.
template <typename T, int G, int P, int N, bool LOG, bool CLUSTER>
__device__ __forceinline__ void finish_backward_row(const RawRow<T, P>& yraw,
                                                    const RawRow<T, P>& graw, unsigned mask,
                                                    float* part, float2* cluster_slot,
                                                    T* __restrict__ o, int lo, int hi, int Tk,
                                                    int lane, int a0, double scale) {
  constexpr int VEC = Vec16<T>::N;
  float v[P][VEC];
  // Chunks wholly outside [lo, hi), as in the forward: neither read (load_row)
  // nor computed, only written as 0 (the padded backward ran at the full
  // row's time on the H200 while reading 25 % less: instructions per element).
  bool out[P];
  outside_chunks<T, G, P, N>(lo, hi, lane, a0, out);
  const float ymin = static_cast<float>(std::numeric_limits<T>::lowest());
  float dot = 0.f;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    if (out[k]) continue;
    float yv[VEC], gv[VEC];
    unpack_chunk(yraw, k, yv);
    unpack_chunk(graw, k, gv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) dot += LOG ? (yv[e] == ymin ? 0.f : gv[e]) : yv[e] * gv[e];
  }
  dot = group_reduce<G>(dot, mask, part, sum_op);
  // tier D: with m = 0 the merge is a plain sum
  if constexpr (CLUSTER) dot = cluster_merge(make_float2(0.f, dot), cluster_slot).y;
  const float fscale = static_cast<float>(scale);
#pragma unroll
  for (int k = 0; k < P; ++k) {
    if (out[k]) continue;
    const int p = (lane + G * k) * VEC - a0;
    float gv[VEC];
    unpack_chunk(yraw, k, v[k]);
    unpack_chunk(graw, k, gv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float yv = v[k][e];
      if constexpr (LOG) {
        v[k][e] = yv == ymin ? 0.f : fscale * (gv[e] - fast_exp(yv) * dot);
      } else {
        v[k][e] = fscale * yv * (gv[e] - dot);
      }
      // dx is 0 outside [lo, hi), whatever dot is (NaN in a NaN row)
      if (!yraw.full[k] && !(lo <= p + e && p + e < hi)) v[k][e] = 0.f;
    }
  }
  store_row<T, G, P>(o, Tk, lane, a0, v, out, 0.f);
}

// Backward of the tiers: y and dy held in registers as raw bits (read once),
// converted on use. Softmax: dx = scale * y * (dy - sum(dy * y)); LOG: dx =
// scale * (dy - exp(y) * sum(dy)) where y != finfo.min; 0 outside [lo, hi).
// CLUSTER: tier D, as in the forward (the CTAs' sums meet in cluster_merge).
template <typename T, int G, int P, bool LOG, bool CLUSTER = false>
__global__ void __launch_bounds__(kTierBlock<G>, (kTierBackwardMinBlocks<G, P, CLUSTER>))
    softmax_tier_backward_kernel(SoftmaxArgs a, RowDiv d) {
  static_assert(!CLUSTER || G == kTierBlock<G>, "tier D: a block per CTA");
  constexpr int VEC = Vec16<T>::N;
  __shared__ float part[G > 32 ? G / 32 : 1];  // tier C: the sum
  __shared__ float2 cluster_slot[1];            // tier D: this CTA's sum
  const uint32_t r = CLUSTER ? blockIdx.x / cluster_blocks()
                             : blockIdx.x * (kTierBlock<G> / G) + threadIdx.x / G;
  const bool has_row = r < a.rows();  // as in the forward
  const int lane = CLUSTER ? cluster_rank() * G * P + threadIdx.x : threadIdx.x % G;
  const unsigned mask = group_mask<G>();
  const TierRow pos = tier_row(r, d);
  int64_t lo64 = 0, hi64 = 0;
  if (has_row) row_bounds(a.spec, pos.b, pos.i, lo64, hi64);
  const int lo = static_cast<int>(lo64), hi = static_cast<int>(hi64), Tk = static_cast<int>(a.Tk);
  T* __restrict__ o = static_cast<T*>(a.out) + static_cast<int64_t>(r) * a.Tk;
  const T* __restrict__ yr = static_cast<const T*>(a.y) + static_cast<int64_t>(r) * a.Tk;
  const T* __restrict__ gr = static_cast<const T*>(a.x) + pos.b * a.xs[0] + pos.h * a.xs[1] +
                             pos.i * a.xs[2];
  const int a0 = static_cast<int>(reinterpret_cast<uintptr_t>(o) / sizeof(T) % VEC);
  const int slots = CLUSTER ? P : active_slots<T, G, P>(hi, a0);
  if (!has_row) return;
  if (lo >= hi) {
    store_masked_row<T, G, P>(o, Tk, lane, a0, 0.f);
    return;
  }
  // The rest, for the chunk slots k < N that hold visible keys (as in the forward).
  auto body = [&]<int N>() {
    const bool vec = same_alignment(yr, o) && same_alignment(gr, o);
    RawRow<T, P> yraw, graw;  // 0 outside [lo, hi): adds nothing to the sums below
    load_row<T, G, P, N>(yr, lo, hi, vec, lane, a0, yraw);
    load_row<T, G, P, N>(gr, lo, hi, vec, lane, a0, graw);
    finish_backward_row<T, G, P, N, LOG, CLUSTER>(yraw, graw, mask, part, cluster_slot, o, lo, hi,
                                                  Tk, lane, a0, a.scale);
  };
  if constexpr (CLUSTER) {
    body.template operator()<P>();
    cluster_done();
  } else {
    with_active_slots<P>(slots, body);
  }
}

// ------------------------------------------------------------ streamed tiers
//
// The register tiers' rows without a mask or bias tensor (tiers A, B and C),
// streamed: a grid of one round of blocks (as many as the SMs hold at once),
// each taking its row groups g, g + gridDim.x, ... in turn and copying the
// next group's rows into shared memory (cp.async) while it computes the
// current one from registers. A block per row group, as the tier kernels
// above run, has bytes in flight only while its warps wait for their loads;
// then come the reductions, exps and stores with nothing in flight (Nsight
// Compute, H200, 2026-11-27: the forward tiers bound by the rows in flight
// per SM, padded rows of 1K keys, 27 % fewer bytes, in the time of full ones;
// torch.compile's looped backward, two reads of each row, 1.22x faster than
// the block-per-row tier at 2048 rows of 8K keys). Two stages of P 16-byte
// chunks per thread (per tensor: x, or y and dy): the one being read into
// registers and the one landing. Each thread copies and reads only its own
// slots, so no barrier guards them.
// For rows whose chunks are all 16-byte aligned in every tensor
// (stream_prefetch): a chunk that [lo, hi) cuts lies inside the row and is
// copied whole, its keys outside [lo, hi) masked in registers (as load_row
// leaves them). Other rows (views whose rows are not aligned, Tk not a
// multiple of the vector), GPUs before sm_80 (no cp.async), and all rows
// under MASKEXT_STREAM=0 take the tier kernels above (launch_tier).

// Warps per SM that the streamed tiers' registers must allow, by chunks per
// thread and direction: fewer than the tier kernels' (the row loop's state
// and the next row's copies take registers through the row's math; ptxas
// spilled 16-160 bytes at the tier kernels' budgets, none at these: sm_90,
// 2026-11-27). The bytes in flight are the stages' in shared memory.
// Log-softmax holds a little more (its forward 4- and 16-chunk tiers spilled
// 32-40 bytes at 28 and 12 warps, its backward 2-chunk tier 4 at 36).
template <int P, bool BACKWARD, bool LOG>
constexpr int kStreamMinWarps =
    BACKWARD ? (P == 1 ? 40 : P == 2 ? (LOG ? 32 : 36) : P == 4 ? 20 : 12)
             : (P == 1 ? 40 : P == 2 ? 36 : P == 4 ? (LOG ? 24 : 28) : P == 8 ? 16 : LOG ? 8 : 12);
// The tiers that are streamed: all but fp32's backward of 512 threads per row
// and 8 chunks of y and dy per thread, which 128 registers per thread (the
// most for 512 threads) do not hold without spilling.
template <int G, int P, bool BACKWARD>
constexpr bool kStreamed = !(BACKWARD && G == 512 && P == 8);
template <int G, int P, bool BACKWARD, bool LOG>
constexpr int kStreamMinBlocks = kStreamMinWarps<P, BACKWARD, LOG> * 32 / kTierBlock<G> > 0
                                     ? kStreamMinWarps<P, BACKWARD, LOG> * 32 / kTierBlock<G>
                                     : 1;

// A row of a streamed block: r = rows() for none (past the last row, or past
// the last group), and its visible interval. (A sink is loaded with the row:
// it is needed only after the row's max and sum.)
struct StreamRow {
  uint32_t r;
  int lo, hi;
};

// A streamed block's shared memory: 2 stages of [C chunks][kB threads] uint4
// slots (C = P, or 2P for y and dy), each followed by [kB threads] slots of
// the stage's row bounds. Each thread writes its row's (lo, hi) to its slot
// when it copies the row and reads them back a row later: its own slot, no
// barrier. (Held in registers through the current row's math, the next row's
// bounds made ptxas spill; found again, they cost row_bounds twice a row,
// segment_ids' binary searches included. A bounds slot at a fixed offset from
// the thread's chunk slots adds no address register: an array of its own made
// the log-softmax's 8-chunk tier C kernels spill their loop counters.)
constexpr int stream_stage(int chunks, int kB) { return (chunks + 1) * kB; }  // uint4 slots
constexpr int stream_smem(int chunks, int kB) { return 2 * stream_stage(chunks, kB) * 16; }

// The row of this thread's group in row group g (kRows rows per group), its
// bounds also written to `bounds`, this thread's bounds slot of the stage.
template <int G, int kRows>
__device__ __forceinline__ StreamRow stream_row(const SoftmaxArgs& a, const RowDiv& d, int64_t g,
                                                uint4* bounds) {
  const int64_t r = g * kRows + threadIdx.x / G;
  StreamRow s{static_cast<uint32_t>(a.rows()), 0, 0};
  if (r < a.rows()) {
    s.r = static_cast<uint32_t>(r);
    const TierRow pos = tier_row(s.r, d);
    int64_t lo = 0, hi = 0;
    row_bounds(a.spec, pos.b, pos.i, lo, hi);
    s.lo = static_cast<int>(lo);
    s.hi = static_cast<int>(hi);
  }
  *reinterpret_cast<int2*>(bounds) = make_int2(s.lo, s.hi);
  return s;
}

// stream_row's row of group g again, its bounds read back from the slot.
template <int G, int kRows>
__device__ __forceinline__ StreamRow stream_row_again(const SoftmaxArgs& a, int64_t g,
                                                      const uint4* bounds) {
  const int64_t r = g * kRows + threadIdx.x / G;
  const int2 b = *reinterpret_cast<const int2*>(bounds);
  return {static_cast<uint32_t>(r < a.rows() ? r : a.rows()), b.x, b.y};
}

// Row r of x (the scores, or dy), by its strides.
template <typename T>
__device__ __forceinline__ const T* x_row(const SoftmaxArgs& a, const RowDiv& d, uint32_t r) {
  const TierRow pos = tier_row(r, d);
  return static_cast<const T*>(a.x) + pos.b * a.xs[0] + pos.h * a.xs[1] + pos.i * a.xs[2];
}

// A streamed block's row loop: its row groups g = blockIdx.x + it * gridDim.x
// in turn, group g's copies in stage it % 2 (`mine`: this thread's first slot
// of stage 0), the next group's copies in flight while row(g, slots, it % 2)
// computes g from `slots`. copy(g, slots) copies group g's rows into `slots`
// and commits them (every thread, row or none). One counter is live through
// the row: a stage index beside g made the log-softmax's 8-chunk tier C
// kernels spill it, and the stage's slots found before the next group's
// bounds (row_bounds) spilled in the 2-chunk ones (sm_90).
template <int kStage, typename Copy, typename Row>
__device__ __forceinline__ void stream_rows(int groups, uint4* mine, Copy&& copy, Row&& row) {
  copy(int64_t(blockIdx.x), mine);
  for (int it = 0; blockIdx.x + it * gridDim.x < groups; ++it) {  // the same trips in the block
    const int g = blockIdx.x + it * gridDim.x;
    // The next group's copies, into the stage read one row ago.
    copy(g + int64_t(gridDim.x), mine + ((it + 1) & 1) * kStage);
    cuda::wait_async<1>();  // this group's copies have landed
    row(g, mine + (it & 1) * kStage, it & 1);
  }
}

// The forward of the streamed tiers (see above); the row math is the tier
// kernel's (x_scores, finish_forward_row).
template <typename T, int G, int P, bool LOG>
__global__ void __launch_bounds__(kTierBlock<G>, (kStreamMinBlocks<G, P, false, LOG>))
    softmax_stream_forward_kernel(SoftmaxArgs a, RowDiv d) {
  constexpr int VEC = Vec16<T>::N, kB = kTierBlock<G>, kRows = kB / G;
  constexpr int kStage = stream_stage(P, kB);
  extern __shared__ uint4 stream_slots[];  // 2 stages: [P chunks][kB threads], bounds
  __shared__ float part[2][G > 32 ? G / 32 : 1];  // tier C: the max, then the sum
  const int lane = threadIdx.x % G;
  const unsigned mask = group_mask<G>();
  const int Tk = static_cast<int>(a.Tk);
  const int groups = static_cast<int>((a.rows() + kRows - 1) / kRows);  // rows < 2^31
  // Two barriers per row (the max's, the sum's) keep part[] safe from one row
  // to the next: a warp writes part[0] again only after every warp has passed
  // the sum's barrier, so has read part[0].
  auto row = [&](int g, const uint4* slots, int) {
    const StreamRow s = stream_row_again<G, kRows>(a, g, slots + P * kB);
    if (s.r >= a.rows()) return;
    T* __restrict__ o = static_cast<T*>(a.out) + static_cast<int64_t>(s.r) * a.Tk;
    const TierRow pos = tier_row(s.r, d);
    const float sink = a.sinks == nullptr ? -std::numeric_limits<float>::infinity()
                                          : static_cast<const float*>(a.sinks)[pos.b * a.ss[0] +
                                                                               pos.h * a.ss[1] +
                                                                               pos.i * a.ss[2]];
    constexpr int a0 = 0;  // every row starts 16-byte aligned (stream_prefetch)
    if (s.lo >= s.hi) {  // fully masked row: its masked values, nothing read
      store_masked_row<T, G, P>(o, Tk, lane, a0,
                                LOG ? static_cast<float>(std::numeric_limits<T>::lowest()) : 0.f);
      return;
    }
    float v[P][VEC];
    RawRow<T, P> raw;
    read_row_slots<T, G, P>(slots, s.lo, s.hi, lane, raw);
    bool out[P];
    outside_chunks<T, G, P>(s.lo, s.hi, lane, a0, out);
    x_scores<T, G, P>(raw, s.lo, s.hi, lane, a0, a.scale, a.softcap, out, v);
    finish_forward_row<T, G, P, LOG, false, false, true>(v, out, 0, sink, mask, part[0],
                                                         part[1], nullptr, nullptr, o, s.lo, s.hi,
                                                         Tk, lane, a0, a.scale, a.softcap, slots);
  };
  stream_rows<kStage>(
      groups, stream_slots + threadIdx.x,
      [&](int64_t g, uint4* slots) {
        const StreamRow s = stream_row<G, kRows>(a, d, g, slots + P * kB);
        if (s.r < a.rows()) copy_row_async<T, G, P>(x_row<T>(a, d, s.r), s.lo, s.hi, lane, slots);
        cuda::commit_async();
      },
      row);
}

// The backward of the streamed tiers: y and dy through the stages (y's P
// chunks, then dy's), the row math the tier kernel's (finish_backward_row),
// by the count of active chunk slots as there.
template <typename T, int G, int P, bool LOG>
__global__ void __launch_bounds__(kTierBlock<G>, (kStreamMinBlocks<G, P, true, LOG>))
    softmax_stream_backward_kernel(SoftmaxArgs a, RowDiv d) {
  constexpr int kB = kTierBlock<G>, kRows = kB / G, kStage = stream_stage(2 * P, kB);
  extern __shared__ uint4 stream_slots[];  // 2 stages: [y, dy][P chunks][kB threads], bounds
  // tier C: the sum, one array per row parity (one barrier per row: a warp
  // writes the next row's sum while another may still read this row's)
  __shared__ float part[2][G > 32 ? G / 32 : 1];
  const int lane = threadIdx.x % G;
  const unsigned mask = group_mask<G>();
  const int Tk = static_cast<int>(a.Tk);
  const int groups = static_cast<int>((a.rows() + kRows - 1) / kRows);  // rows < 2^31
  // Every lane of a warp calls it (active_slots' warp reduction for G < 32).
  auto row = [&](int g, const uint4* slots, int parity) {
    const StreamRow s = stream_row_again<G, kRows>(a, g, slots + 2 * P * kB);
    const bool has = s.r < a.rows();
    T* __restrict__ o = static_cast<T*>(a.out) + static_cast<int64_t>(has ? s.r : 0) * a.Tk;
    constexpr int a0 = 0;  // every row starts 16-byte aligned (stream_prefetch)
    const int n = active_slots<T, G, P>(has ? s.hi : 0, a0);
    if (!has) return;
    if (s.lo >= s.hi) {
      store_masked_row<T, G, P>(o, Tk, lane, a0, 0.f);
      return;
    }
    with_active_slots<P>(n, [&]<int N>() {
      RawRow<T, P> yraw, graw;  // 0 outside [lo, hi): adds nothing to the sums
      read_row_slots<T, G, P, N>(slots, s.lo, s.hi, lane, yraw);
      read_row_slots<T, G, P, N>(slots + P * kB, s.lo, s.hi, lane, graw);
      finish_backward_row<T, G, P, N, LOG, false>(yraw, graw, mask, part[parity], nullptr, o,
                                                  s.lo, s.hi, Tk, lane, a0, a.scale);
    });
  };
  stream_rows<kStage>(
      groups, stream_slots + threadIdx.x,
      [&](int64_t g, uint4* slots) {
        const StreamRow s = stream_row<G, kRows>(a, d, g, slots + 2 * P * kB);
        if (s.r < a.rows()) {
          copy_row_async<T, G, P>(static_cast<const T*>(a.y) + static_cast<int64_t>(s.r) * a.Tk,
                                  s.lo, s.hi, lane, slots);
          copy_row_async<T, G, P>(x_row<T>(a, d, s.r), s.lo, s.hi, lane, slots + P * kB);
        }
        cuda::commit_async();
      },
      row);
}

// Which tier holds rows of `a`, as the number of 16-byte chunks a row needs
// (0: none; the general kernels take the problem). The output is contiguous
// and 16-byte aligned, so row r starts (r * Tk) % VEC elements past a 16-byte
// boundary: Tk / VEC chunks when VEC divides Tk, else up to one more.
template <typename T>
int64_t tier_chunks(const SoftmaxArgs& a, int64_t max_chunks) {
  constexpr int VEC = Vec16<T>::N;
  if ((a.mask != nullptr && a.ms[3] != 1) || (a.bias != nullptr && a.bs[3] != 1) ||
      a.rows() >= (int64_t(1) << 31) || reinterpret_cast<uintptr_t>(a.out) % 16 != 0) {
    return 0;
  }
  const int64_t chunks = a.Tk % VEC == 0 ? a.Tk / VEC : (a.Tk + 2 * VEC - 2) / VEC;
  return chunks <= max_chunks ? chunks : 0;
}

// Rows of up to 128 chunks, forward and backward (the rule explained at
// with_forward_tier): 4 lanes of 1, 2 or 4 chunks up to 16 chunks, then twice
// the lanes per doubling up to a warp of 4 chunks each. False: a longer row.
template <typename F>
bool with_short_tier(int64_t chunks, F&& f) {
  if (chunks <= 4) {
    f.template operator()<4, 1>();
  } else if (chunks <= 8) {
    f.template operator()<4, 2>();
  } else if (chunks <= 16) {
    f.template operator()<4, 4>();
  } else if (chunks <= 32) {
    f.template operator()<8, 4>();
  } else if (chunks <= 64) {
    f.template operator()<16, 4>();
  } else if (chunks <= 128) {
    f.template operator()<32, 4>();
  } else {
    return false;
  }
  return true;
}

// The backward's tier: calls f.template operator()<G, P>() for rows of
// `chunks` 16-byte chunks, 0 < chunks <= kTierMaxChunks<MAXP> (MAXP = 4 or
// 8: the most chunks of y and of dy per thread). The same rule as the
// forward's below: 4 chunks of each per thread where the row has them (the
// H200 run of 2026-11-26: 1024 fp16 keys on a warp of 4 + 4 chunks, 96
// registers, 1.43x the copy's time, which moves 2/3 of the backward's bytes;
// 128 keys on 16 lanes of 1 + 1 chunks, 1.87x), then MAXP per thread.
template <int MAXP>
constexpr int64_t kTierMaxChunks = 512 * MAXP;

template <int MAXP, typename F>
void with_tier(int64_t chunks, F&& f) {
  static_assert(MAXP == 4 || MAXP == 8, "with_tier: 4 or 8 chunks per thread");
  if (with_short_tier(chunks, f)) {
    return;
  }
  if (MAXP == 8 && chunks <= 256) {
    f.template operator()<32, MAXP>();
  } else if (chunks <= 128 * MAXP) {
    f.template operator()<128, MAXP>();
  } else if (chunks <= 256 * MAXP) {
    f.template operator()<256, MAXP>();
  } else {
    f.template operator()<512, MAXP>();
  }
}

// The forward's tier for rows of `chunks` 16-byte chunks, 0 < chunks <=
// kForwardTierMaxChunks (fp16 / bf16 rows of up to 32K keys, fp32 of 16K):
// calls f.template operator()<G, P>(). MAXP: the most chunks per thread,
// 8 for fp16 / bf16 (64 scores), 16 for fp32 (64 scores).
//
// Why these: measured on an H200 (2026-11-26), a row's time is set by the
// bytes each SM has in flight, and a thread's registers are mostly its
// chunks' (raw bits and scores), with a fixed overhead that more chunks per
// thread share: at 1 chunk per lane (tier A, 128 fp16 keys on 16 lanes, 40
// registers, 48 warps/SM) an SM holds 24 KB of loads in flight and ran at
// 1.64x the copy's time; at 4 per lane (a warp per 1024 keys, 72 registers,
// 28 warps) 56 KB and 1.15x; tier C with half its chunks idle (4096 fp16 keys
// on 128 x 8) 32 KB and 2.45x; fp32 rows of 8192 keys on 128 x 16 (168
// registers, 12 warps) 96 KB and 1.27-1.36x. So: at least 4 chunks per
// thread when the row has them (4 lanes up to 16 chunks, twice the lanes per
// doubling up to a warp), then 8 per lane, then blocks of 128-512 threads,
// never with half their chunks idle, and 16 chunks per thread for long fp32
// rows.
constexpr int64_t kForwardTierMaxChunks = 4096;
// With a mask or bias tensor, rows of up to 2048 chunks (16K fp16 / bf16
// keys, 8K fp32) at 8 chunks per thread at most: the 16-chunk tiers and the
// 512-thread one (128 registers at most) spilled 28-244 bytes; longer rows
// take the general kernels.
constexpr int64_t kGeneralTierMaxChunks = 2048;

template <int MAXP, typename F>
void with_forward_tier(int64_t chunks, F&& f) {
  static_assert(MAXP == 8 || MAXP == 16, "with_forward_tier: 8 or 16 chunks per thread");
  if (with_short_tier(chunks, f)) {
    return;
  }
  if (chunks <= 256) {
    f.template operator()<32, 8>();
  } else if (chunks <= 512) {
    f.template operator()<128, 4>();
  } else if (chunks <= 1024) {
    f.template operator()<128, 8>();
  } else if constexpr (MAXP == 16) {
    if (chunks <= 2048) {
      f.template operator()<128, 16>();
    } else {
      f.template operator()<256, 16>();
    }
  } else if (chunks <= 2048) {
    f.template operator()<256, 8>();
  } else {
    f.template operator()<512, 8>();
  }
}

}  // namespace

// Split rows: rows too long for the tiers and too few to fill the GPU (a
// decode step: 128 rows of 64K keys ran one block per row on 128 of 132 SMs,
// at 9 % of DRAM bandwidth on the H200). Each row is cut into S segments of
// seg_len keys (a multiple of 16: every segment starts with the row's
// alignment) over S blocks; the first launch writes each segment's (max, sum)
// to `part` (rows x S), the second merges the S pairs of its row and writes
// its segment: outputs, and the masked value outside [lo, hi). No mask or bias
// tensor; fp16, bf16, fp32.
constexpr int kSplitBlock = 512;

struct SplitSeg {
  int64_t lo, hi;  // the row's visible interval
  int64_t s0, s1;  // this block's segment of [0, Tk)
};

__device__ __forceinline__ SplitSeg split_seg(const SoftmaxArgs& a, const RowPos& p,
                                              int64_t seg_len) {
  int64_t lo, hi;
  row_bounds(a.spec, p.b, p.i, lo, hi);
  const int64_t s0 = static_cast<int64_t>(blockIdx.y) * seg_len;
  return {lo, hi, s0, s0 + seg_len < a.Tk ? s0 + seg_len : a.Tk};
}

template <typename T>
__global__ void __launch_bounds__(kSplitBlock, 2) softmax_split_stats_kernel(SoftmaxArgs a,
                                                                            float2* part,
                                                                            int64_t seg_len) {
  using Pack = typename Vec16<T>::Pack;
  constexpr int VEC = Vec16<T>::N;
  const int64_t r = blockIdx.x;
  const RowPos p = split_row(a, r);
  const SplitSeg g = split_seg(a, p, seg_len);
  const int64_t j0 = g.lo > g.s0 ? g.lo : g.s0, j1 = g.hi < g.s1 ? g.hi : g.s1;
  const T* xr = static_cast<const T*>(a.x) + p.b * a.xs[0] + p.h * a.xs[1] + p.i * a.xs[2];
  const ScoreFn<float> score(a);
  MaxSum<float> ms{-std::numeric_limits<float>::infinity(), 0.f};
  if (j1 > j0) {
    cuda::vec_loop_ilp<kIlp>(
        xr + j0, j1 - j0, threadIdx.x, kSplitBlock,
        [&](int64_t k) { ms.add(score(static_cast<float>(xr[j0 + k]))); },
        [&](int64_t k) { return *reinterpret_cast<const Pack*>(xr + j0 + k); },
        [&](int64_t, const Pack& pk) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) ms.add(score(static_cast<float>(pk.v[e])));
        });
  }
  ms = row_reduce<kSplitBlock>(ms);
  if (threadIdx.x == 0) {
    part[r * gridDim.y + blockIdx.y] = make_float2(ms.m, ms.s);  // [edge]: one pair per block
  }
}

template <typename T, bool LOG>
__global__ void __launch_bounds__(kSplitBlock, 2) softmax_split_write_kernel(SoftmaxArgs a,
                                                                            const float2* part,
                                                                            int64_t seg_len) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x;
  const RowPos p = split_row(a, r);
  const SplitSeg g = split_seg(a, p, seg_len);
  T* o = static_cast<T*>(a.out) + r * a.Tk;
  const T* xr = static_cast<const T*>(a.x) + p.b * a.xs[0] + p.h * a.xs[1] + p.i * a.xs[2];
  const T masked = LOG ? std::numeric_limits<T>::lowest() : T(0);
  // The segment's masked keys: [s0, lo) and [hi, s1), where not empty.
  const int64_t j0 = g.lo > g.s0 ? g.lo : g.s0, j1 = g.hi < g.s1 ? g.hi : g.s1;
  const int64_t head_end = g.lo < g.s1 ? g.lo : g.s1, tail_start = g.hi > g.s0 ? g.hi : g.s0;
  if (head_end > g.s0) cuda::fill(o + g.s0, head_end - g.s0, masked, tid, kSplitBlock);
  if (g.s1 > tail_start) cuda::fill(o + tail_start, g.s1 - tail_start, masked, tid, kSplitBlock);
  if (j1 <= j0) return;  // the whole block leaves: no barrier below
  // Every thread merges the row's S pairs (a few L2 loads, the same address per warp).
  MaxSum<float> ms{kNegInf, 0.f};
  for (unsigned q = 0; q < gridDim.y; ++q) {
    const float2 f = part[r * gridDim.y + q];
    ms.merge(f.x, f.y);
  }
  if (ms.m == kNegInf && ms.s == 0.f) {  // every visible score -inf
    cuda::fill(o + j0, j1 - j0, masked, tid, kSplitBlock);
    return;
  }
  merge_sink(ms, a, p);
  const ScoreFn<float> score(a);
  const FinishFn<T, float, LOG> finish(ms);
  auto out = [&](float v) { return finish(score(v)); };
  const bool xvec = same_alignment(xr + j0, o + j0);
  using Pack = typename Vec16<T>::Pack;  // raw: half the registers of floats for fp16
  // 2 chunks in flight: at 4, 64 registers (2 blocks per SM) spilled 28 bytes.
  cuda::vec_loop_ilp<2>(
      o + j0, j1 - j0, tid, kSplitBlock,
      [&](int64_t k) { o[j0 + k] = static_cast<T>(out(static_cast<float>(xr[j0 + k]))); },  // [edge]
      [&](int64_t k) {
        Pack pk;
        if (xvec) {
          pk = *reinterpret_cast<const Pack*>(xr + j0 + k);
        } else {
#pragma unroll
          for (int e = 0; e < Vec16<T>::N; ++e) pk.v[e] = xr[j0 + k + e];
        }
        return pk;
      },
      [&](int64_t k, const Pack& pk) {
        float res[Vec16<T>::N];
#pragma unroll
        for (int e = 0; e < Vec16<T>::N; ++e) res[e] = out(static_cast<float>(pk.v[e]));
        cuda::store16<T>(o + j0 + k, res);
      });
}

// Blocks of the split kernels that one SM runs at once: the fewer of the two
// kernels' (the write kernel's 62 registers allow 2 of 512 threads). Asked of
// the runtime once per dtype and LOG (for the first device used: one
// architecture per process).
template <typename T, bool LOG>
int split_blocks_per_sm() {
  static const int n = [] {
    int stats = 0, write = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &stats, softmax_split_stats_kernel<T>, kSplitBlock, 0));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &write, softmax_split_write_kernel<T, LOG>, kSplitBlock, 0));
    return std::max(1, std::min(stats, write));
  }();
  return n;
}

// Segments per row for the split kernels, 0 for none: as many as one wave of
// blocks holds (rows * S <= blocks per SM * SMs), segments of at least 4096
// keys, at least 2 (else the general kernel's block per row). A partial
// second wave doubles the time: S = ceil(4 * SMs / rows) = 5 for 128 rows of
// 64K fp16 keys put 640 blocks on 264 slots, and ran at 3.3x the copy's time
// on the H200 (2026-11-27), slower than a block per row (2.4x).
template <typename T, bool LOG>
int split_count(const SoftmaxArgs& a) {
  const int64_t rows = a.rows();
  if (a.Tk < 8192 || rows == 0 || rows > 65535) return 0;
  int64_t S = split_blocks_per_sm<T, LOG>() * static_cast<int64_t>(cuda::sm_count()) / rows;
  if (S > a.Tk / 4096) S = a.Tk / 4096;
  return S >= 2 ? static_cast<int>(S) : 0;
}

template <typename T, bool LOG>
void launch_split_forward(const SoftmaxArgs& a, int S, cudaStream_t stream) {
  int64_t seg_len = (a.Tk + S - 1) / S;
  seg_len = (seg_len + 15) / 16 * 16;
  const int64_t rows = a.rows();
  at::DataPtr part = c10::cuda::CUDACachingAllocator::get()->allocate(
      static_cast<size_t>(rows * S) * sizeof(float2));
  float2* pp = static_cast<float2*>(part.get());
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(S));
  softmax_split_stats_kernel<T><<<grid, kSplitBlock, 0, stream>>>(a, pp, seg_len);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  softmax_split_write_kernel<T, LOG><<<grid, kSplitBlock, 0, stream>>>(a, pp, seg_len);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Most 16-byte chunks per thread in the forward tiers (0: no tiers): 64
// scores; the backward holds y and dy, half as many of each.
template <typename T>
constexpr int kTierMaxP = std::is_same_v<T, double> ? 0 : (sizeof(T) == 4 ? 16 : 8);

// The mask/bias tier kernel for rows of `chunks` chunks: at most 8 chunks
// per thread.
template <typename T, bool LOG>
void launch_tier_forward_general(const SoftmaxArgs& a, int64_t chunks, cudaStream_t stream) {
  const RowDiv d{cuda::FastDiv(a.Tq), cuda::FastDiv(a.H)};
  with_forward_tier<8>(chunks, [&]<int G, int P>() {
    if constexpr (G * P <= kGeneralTierMaxChunks) {  // else never picked
      constexpr int kRows = kTierBlock<G> / G;  // rows per block
      const int64_t grid = (a.rows() + kRows - 1) / kRows;
      softmax_tier_forward_kernel<T, G, P, LOG, true>
          <<<static_cast<unsigned>(grid), kTierBlock<G>, 0, stream>>>(a, d);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether the streamed tiers take the rows of `a` (see there): Tk a multiple
// of the vector and the rows of x (and y) 16-byte aligned, as out's are; a
// GPU with cp.async (sm_80 or later); and not turned off by MASKEXT_STREAM=0
// (then the tier kernels: the two measured against each other).
template <typename T>
bool stream_prefetch(const SoftmaxArgs& a) {
  constexpr int VEC = Vec16<T>::N;
  const char* env = std::getenv("MASKEXT_STREAM");
  if ((env != nullptr && std::strcmp(env, "0") == 0) || cuda::compute_major() < 8) return false;
  if (a.Tk % VEC != 0 || reinterpret_cast<uintptr_t>(a.x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(a.y) % 16 != 0) {
    return false;
  }
  const int64_t sizes[3] = {a.B, a.H, a.Tq};
  for (int i = 0; i < 3; ++i) {
    if (sizes[i] > 1 && a.xs[i] % VEC != 0) return false;
  }
  return true;
}

// The register tier of G threads per row and P chunks per thread, forward
// or BACKWARD: streamed (one round of blocks: the occupancy API, with the
// stages' shared memory) where stream_prefetch allows and the stages fit; else
// the tier kernels, a block per row group.
template <typename T, bool LOG, bool BACKWARD, int G, int P>
void launch_tier(const SoftmaxArgs& a, cudaStream_t stream) {
  constexpr int kB = kTierBlock<G>, kRows = kB / G;
  const RowDiv d{cuda::FastDiv(a.Tq), cuda::FastDiv(a.H)};
  const int64_t groups = (a.rows() + kRows - 1) / kRows;
  if constexpr (kStreamed<G, P, BACKWARD>) {
    if (stream_prefetch<T>(a)) {
      const auto kernel = [] {
        if constexpr (BACKWARD) {
          return softmax_stream_backward_kernel<T, G, P, LOG>;
        } else {
          return softmax_stream_forward_kernel<T, G, P, LOG>;
        }
      }();
      const int smem = stream_smem((BACKWARD ? 2 : 1) * P, kB);
      if (const int per_sm = cuda::blocks_per_sm(kernel, kB, smem)) {
        const int64_t grid = std::min<int64_t>(groups, int64_t(per_sm) * cuda::sm_count());
        kernel<<<static_cast<unsigned>(grid), kB, smem, stream>>>(a, d);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
    }
  }
  if constexpr (BACKWARD) {
    softmax_tier_backward_kernel<T, G, P, LOG>
        <<<static_cast<unsigned>(groups), kB, 0, stream>>>(a, d);
  } else {
    softmax_tier_forward_kernel<T, G, P, LOG, false>
        <<<static_cast<unsigned>(groups), kB, 0, stream>>>(a, d);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------ tier D
//
// Rows too long for one block's registers, or too few to fill the GPU with a
// block each (a decode step: 128 rows of 64K fp16 keys; 16 rows of 32K on 132
// SMs), held in the registers of a thread-block cluster (sm_90): C CTAs of
// kClusterBlock threads (or C / 2 of kClusterWideBlock: launch_tier_d), P
// chunks per thread, one read of the row and one exchange of (max, sum) pairs
// in distributed shared memory (cluster_merge).
// The forward and the backward (which holds y and dy: half the chunks per
// thread). The split kernels (forward) and the general kernels, which read
// the visible keys twice, remain for longer rows and for GPUs or builds
// without clusters.
constexpr int kClusterBlock = 256;
// Chunks per thread at most: the forward's 8 (64 fp16 scores; fp32's 16
// would allow one CTA per SM), the backward's tiers' (y and dy).
template <typename T, bool BACKWARD>
constexpr int kTierDMaxP = BACKWARD ? kTierMaxP<T> / 2 : 8;
// The longest rows, in chunks: 128K fp16 / bf16 keys and 64K fp32 forward,
// 64K keys backward.
template <typename T, bool BACKWARD>
constexpr int64_t kTierDMaxChunks = int64_t(kClusterMax) * kClusterBlock * kTierDMaxP<T, BACKWARD>;
struct ClusterPlan {
  int C = 0, P = 0;  // CTAs per row, chunks per thread; C = 0: not tier D
};

// The forward's CTAs of twice the threads (launch_tier_d): the same chunks
// per thread, clusters of half the CTAs.
constexpr int kClusterWideBlock = 2 * kClusterBlock;

// The plan for `rows` rows of `chunks` chunks on `sms` SMs, at most max_p
// chunks per thread, where tier D replaces the block tiers for rows longer
// than block_max chunks: those (up to 8 CTAs of max_p chunks per thread) take
// the fewest CTAs of max_p chunks per thread that hold them; fewer rows than
// SMs, with more than 1024 chunks, spread over twice the CTAs (half the chunks
// per thread, at least 2) until they cover the SMs or reach 8 CTAs. Otherwise
// the block tiers (C = 0).
inline ClusterPlan cluster_plan(int64_t rows, int64_t chunks, int64_t sms, int max_p,
                                int64_t block_max) {
  if (chunks <= 1024 || chunks > int64_t(kClusterMax) * kClusterBlock * max_p ||
      (chunks <= block_max && rows >= sms) || rows * kClusterMax >= (int64_t(1) << 31)) {
    return {};
  }
  int C = 1;
  while (int64_t(C) * kClusterBlock * max_p < chunks) C *= 2;
  while (C < kClusterMax && rows * C < sms && chunks > int64_t(C) * kClusterBlock * 2) C *= 2;
  int P = 2;
  while (int64_t(C) * kClusterBlock * P < chunks) P *= 2;
  return {C, P};
}

// The launch configuration of tier D: rows x C CTAs of `threads` threads in
// clusters of C.
struct ClusterLaunch {
  cudaLaunchConfig_t cfg{};
  cudaLaunchAttribute cluster{};
  ClusterLaunch(const ClusterLaunch&) = delete;  // cfg points to cluster
  ClusterLaunch(int64_t rows, int C, int threads, cudaStream_t stream) {
    cfg.gridDim = dim3(static_cast<unsigned>(rows * C));
    cfg.blockDim = dim3(threads);
    cfg.stream = stream;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = C;
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    cfg.attrs = &cluster;
    cfg.numAttrs = 1;
  }
};

// How many clusters of C CTAs of `kernel` (`threads` threads each) the GPU
// holds at once, 0 where it cannot run them: the device launches no clusters,
// the kernel's code was built before sm_90 (a build for sm_80 only, run from
// its PTX, has no cluster code: cluster_merge traps), or a cluster of C does
// not fit. Asked once per kernel and C (cuda::once_per_kernel).
template <typename Kernel>
int cluster_capacity(Kernel kernel, int C, int threads) {
  return cuda::once_per_kernel(kernel, C, [&] {
    int dev = 0, launch = 0, n = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&launch, cudaDevAttrClusterLaunch, dev));
    cudaFuncAttributes attr{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    if (launch != 0 && attr.ptxVersion >= 90) {
      ClusterLaunch l(1, C, threads, nullptr);
      C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, kernel, &l.cfg));
    }
    return n;
  });
}

// Tier D's kernel of G threads per CTA and P chunks per thread.
template <typename T, bool LOG, bool BACKWARD, int G, int P>
auto tier_d_kernel() {
  if constexpr (BACKWARD) {
    return softmax_tier_backward_kernel<T, G, P, LOG, true>;
  } else {
    return softmax_tier_forward_kernel<T, G, P, LOG, false, true>;
  }
}

// Launches tier D (forward, or BACKWARD) for the rows of `a` when
// cluster_plan picks it and the GPU runs it; false: another kernel must.
//
// The forward's plans of the most chunks per thread (the decode step: 128
// rows of 64K fp16 keys, clusters of 4 CTAs of 256 threads, 2 CTAs per SM)
// take CTAs of 512 threads in clusters of 2 instead where the GPU then holds
// the rows in fewer rounds of clusters: a cluster's CTAs share a GPC, and the
// H200 held 62 clusters of 4 at once, not 66 (three rounds of rows, 62 + 62 +
// 4, each latency-bound: 1.77-1.79x the copy, 2026-11-27), but 66 clusters of
// 2 at one CTA per SM. The same chunks per thread and bytes per SM: only the
// rounds change. (Clusters of 2 CTAs of 256 threads and 16 chunks per thread,
// at 215 registers and 8 warps per SM, were no faster: half their cycles
// waited on instruction fetch.)
template <typename T, bool LOG, bool BACKWARD>
bool launch_tier_d(const SoftmaxArgs& a, int64_t chunks, cudaStream_t stream) {
  constexpr int kMaxP = kTierDMaxP<T, BACKWARD>;
  // Rows that a block holds take the block tiers when they fill the GPU: the
  // backward's 512-thread blocks of 4 chunks run two per SM at 64 registers
  // (32 warps) where tier D's 256-thread CTAs run three (72 registers, 24).
  constexpr int64_t kBlockMax = BACKWARD ? kTierMaxChunks<kMaxP> : kForwardTierMaxChunks;
  const ClusterPlan plan = cluster_plan(a.rows(), chunks, cuda::sm_count(), kMaxP, kBlockMax);
  const int64_t rows = a.rows();
  auto launch = [&]<int G, int P>(int C) {
    ClusterLaunch l(rows, C, G, stream);
    const RowDiv d{cuda::FastDiv(a.Tq), cuda::FastDiv(a.H)};
    C10_CUDA_CHECK(cudaLaunchKernelEx(&l.cfg, tier_d_kernel<T, LOG, BACKWARD, G, P>(), a, d));
  };
  bool launched = false;
  auto try_p = [&]<int P>() {
    if constexpr (P <= kMaxP) {
      if (plan.P != P) return;
      const int n = cluster_capacity(tier_d_kernel<T, LOG, BACKWARD, kClusterBlock, P>(), plan.C,
                                     kClusterBlock);
      if (n == 0) return;
      if constexpr (!BACKWARD && P == kMaxP) {
        if (plan.C >= 4) {
          const int wide = cluster_capacity(
              tier_d_kernel<T, LOG, BACKWARD, kClusterWideBlock, P>(), plan.C / 2,
              kClusterWideBlock);
          if (wide > 0 && (rows + wide - 1) / wide < (rows + n - 1) / n) {
            launch.template operator()<kClusterWideBlock, P>(plan.C / 2);
            launched = true;
            return;
          }
        }
      }
      launch.template operator()<kClusterBlock, P>(plan.C);
      launched = true;
    }
  };
  if (plan.C != 0) {
    try_p.template operator()<2>();
    try_p.template operator()<4>();
    try_p.template operator()<8>();
  }
  return launched;
}

// The mask/bias tiers, compiled in their own translation units
// (softmax_masked_<dtype>.cu: the sm_90 build of a dtype's file went from 75
// to 126 s when they joined it, and the files compile in parallel).
template <typename T, bool LOG>
void launch_masked_tier_forward(const SoftmaxArgs& a, int64_t chunks, cudaStream_t stream) {
  launch_tier_forward_general<T, LOG>(a, chunks, stream);
}

// The one place that picks a kernel: without a mask or bias tensor, tier D
// (cluster_plan) where it applies and the GPU runs clusters; the register
// tiers for the fp16, bf16 and fp32 rows they hold (a mask or bias only with
// contiguous keys); else the split rows for longer rows too few to fill the
// GPU (no mask or bias); else a warp per row up to kWarpRowMax keys, else a
// block per row.
template <typename T, bool LOG>
void launch_softmax_forward(const SoftmaxArgs& a, cudaStream_t stream) {
  if constexpr (kTierMaxP<T> > 0) {
    const bool general = a.mask != nullptr || a.bias != nullptr;
    if (!general) {
      const int64_t chunks = tier_chunks<T>(a, kTierDMaxChunks<T, false>);
      if (chunks != 0 && launch_tier_d<T, LOG, false>(a, chunks, stream)) return;
    }
    if (const int64_t chunks =
            tier_chunks<T>(a, general ? kGeneralTierMaxChunks : kForwardTierMaxChunks)) {
      if (general) {
        launch_masked_tier_forward<T, LOG>(a, chunks, stream);
      } else {
        with_forward_tier<kTierMaxP<T>>(
            chunks, [&]<int G, int P>() { launch_tier<T, LOG, false, G, P>(a, stream); });
      }
      return;
    }
  }
  if constexpr (!std::is_same_v<T, double>) {
    if (a.mask == nullptr && a.bias == nullptr) {
      if (const int S = split_count<T, LOG>(a)) {
        launch_split_forward<T, LOG>(a, S, stream);
        return;
      }
    }
  }
  auto general = [&]<int THREADS, int BLOCK>() {
    const unsigned grid = cuda::grid_for(a.rows(), BLOCK / THREADS, 2048 / BLOCK);
    if (a.mask != nullptr || a.bias != nullptr) {
      softmax_forward_kernel<T, THREADS, BLOCK, true, LOG><<<grid, BLOCK, 0, stream>>>(a);
    } else {
      softmax_forward_kernel<T, THREADS, BLOCK, false, LOG><<<grid, BLOCK, 0, stream>>>(a);
    }
  };
  if (a.Tk <= kWarpRowMax) {
    general.template operator()<32, kBlock>();
  } else {
    general.template operator()<kLongBlock, kLongBlock>();
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// As launch_softmax_forward; the tiers hold y and dy, so half the chunks per
// thread (rows of up to 16K keys in a block, 64K in tier D, every dtype).
template <typename T, bool LOG>
void launch_softmax_backward(const SoftmaxArgs& a, cudaStream_t stream) {
  if constexpr (kTierMaxP<T> > 0) {
    const int64_t long_chunks = tier_chunks<T>(a, kTierDMaxChunks<T, true>);
    if (long_chunks != 0 && launch_tier_d<T, LOG, true>(a, long_chunks, stream)) return;
    if (const int64_t chunks = tier_chunks<T>(a, kTierMaxChunks<kTierMaxP<T> / 2>)) {
      with_tier<kTierMaxP<T> / 2>(
          chunks, [&]<int G, int P>() { launch_tier<T, LOG, true, G, P>(a, stream); });
      return;
    }
  }
  auto general = [&]<int THREADS, int BLOCK>() {
    const unsigned grid = cuda::grid_for(a.rows(), BLOCK / THREADS, 2048 / BLOCK);
    softmax_backward_kernel<T, THREADS, BLOCK, LOG><<<grid, BLOCK, 0, stream>>>(a);
  };
  if (a.Tk <= kWarpRowMax) {
    general.template operator()<32, kBlock>();
  } else {
    general.template operator()<kLongBlock, kLongBlock>();
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Explicit instantiations, a dtype's launchers spread over translation units
// that compile in parallel (the build's longest step is its largest unit):
// the forward of softmax or of log-softmax (LOG) in softmax_forward_<dtype>.cu
// and softmax_log_forward_<dtype>.cu, whose mask/bias tiers are left to
// MASKEXT_SOFTMAX_MASKED_INSTANTIATE in softmax_masked_<dtype>.cu, and the
// backward of both in softmax_backward_<dtype>.cu.
#define MASKEXT_SOFTMAX_FORWARD_INSTANTIATE(T, LOG)                                              \
  extern template void launch_masked_tier_forward<T, LOG>(const SoftmaxArgs&, int64_t,        \
                                                         cudaStream_t);                       \
  template void launch_softmax_forward<T, LOG>(const SoftmaxArgs&, cudaStream_t);

#define MASKEXT_SOFTMAX_BACKWARD_INSTANTIATE(T)                                       \
  template void launch_softmax_backward<T, false>(const SoftmaxArgs&, cudaStream_t); \
  template void launch_softmax_backward<T, true>(const SoftmaxArgs&, cudaStream_t);

#define MASKEXT_SOFTMAX_MASKED_INSTANTIATE(T)                                                      \
  template void launch_masked_tier_forward<T, false>(const SoftmaxArgs&, int64_t, cudaStream_t); \
  template void launch_masked_tier_forward<T, true>(const SoftmaxArgs&, int64_t, cudaStream_t);

}  // namespace maskext
