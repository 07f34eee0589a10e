// CUDA masked softmax and log-softmax, forward and backward.
//
// THREADS threads share one row: a warp for rows up to 1024 keys (several rows
// per block), a whole block for longer rows. Only the visible interval
// [lo, hi) is read; it is read twice (an online max/sum pass, then the
// normalising pass, which mostly hits L2). Positions outside it are written
// as 0 with 16-byte stores; empty rows only write their zeros.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "maskext/checks.h"
#include "maskext/cuda_utils.cuh"

namespace maskext {
namespace {

using cuda::Vec16;
constexpr int kBlock = 256;     // threads per block, warp-per-row kernels
constexpr int kLongBlock = 512; // threads per block (= per row) for long rows
constexpr int64_t kWarpRowMax = 1024;

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

__device__ __forceinline__ bool same_alignment(const void* p, const void* q) {
  return (reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(q)) % 16 == 0;
}

// GENERAL: a mask tensor and/or a bias is present (scalar loads); otherwise
// the scores are read with 16-byte loads. LOG: log-softmax, whose masked
// positions are finfo(dtype).min (exp of them is exactly 0).
template <typename T, int THREADS, int BLOCK, bool GENERAL, bool LOG>
__global__ void __launch_bounds__(BLOCK) softmax_forward_kernel(SoftmaxArgs a) {
  using acc_t = at::opmath_type<T>;
  using Pack = typename Vec16<T>::Pack;
  constexpr int VEC = Vec16<T>::N;
  constexpr int ROWS = BLOCK / THREADS;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const T* x = static_cast<const T*>(a.x);
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const acc_t scale = static_cast<acc_t>(a.scale);
  const acc_t softcap = static_cast<acc_t>(a.softcap);
  const acc_t inv_cap = a.softcap > 0 ? static_cast<acc_t>(1.0 / a.softcap) : acc_t(0);
  // The score of a scaled input: softcap * tanh(v / softcap) when softcap > 0.
  auto cap = [&](acc_t v) -> acc_t { return softcap > acc_t(0) ? softcap * tanh(v * inv_cap) : v; };
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
    auto score = [&](int64_t j) -> acc_t {
      acc_t z = cap(static_cast<acc_t>(xr[j]) * scale);
      if constexpr (GENERAL) {
        if (a.mask != nullptr && !a.mask[mo + j * a.ms[3]]) return kNegInf;
        if (bias != nullptr) {
          const acc_t bv = static_cast<acc_t>(bias[bo + j * a.bs[3]]);
          z = bv <= bias_min ? kNegInf : z + bv;
        }
      }
      return z;
    };
    if (active) {
      cuda::fill(o, lo, masked, tid, THREADS);
      cuda::fill(o + hi, a.Tk - hi, masked, tid, THREADS);
    }
    const int64_t n = hi - lo;

    // Pass 1: running max and sum.
    MaxSum<acc_t> ms{kNegInf, acc_t(0)};
    if (GENERAL) {
      for (int64_t j = lo + tid; j < hi; j += THREADS) ms.add(score(j));
    } else {
      cuda::vec_loop(xr + lo, n, tid, THREADS, [&](int64_t k) { ms.add(score(lo + k)); },
                     [&](int64_t k) {
                       const Pack pk = *reinterpret_cast<const Pack*>(xr + lo + k);
#pragma unroll
                       for (int e = 0; e < VEC; ++e) ms.add(cap(static_cast<acc_t>(pk.v[e]) * scale));
                     });
    }
    ms = row_reduce<THREADS>(ms);
    if (!active || n == 0) continue;
    if (ms.m == kNegInf && ms.s == acc_t(0)) {  // every visible key masked by mask/bias
      cuda::fill(o + lo, n, masked, tid, THREADS);
      continue;
    }
    if (a.sinks != nullptr) {  // the sink joins the normaliser as one more score
      ms.merge(static_cast<const acc_t*>(a.sinks)[p.b * a.ss[0] + p.h * a.ss[1] + p.i * a.ss[2]],
               acc_t(1));
    }

    // Pass 2: normalise. A NaN or +inf score (s NaN or m +inf) makes every
    // visible output NaN, as torch.softmax and the CPU kernel; masked
    // positions (-inf) keep the masked value.
    const bool poisoned = ms.m == -kNegInf || ms.s != ms.s;
    const acc_t qnan = std::numeric_limits<acc_t>::quiet_NaN();
    const acc_t inv = poisoned ? qnan : acc_t(1) / ms.s;
    const acc_t lse = poisoned ? qnan : ms.m + log(ms.s);
    const acc_t m = ms.m;
    auto finish = [&](acc_t z) -> T {
      if (z == kNegInf) return masked;
      if constexpr (LOG) {
        const acc_t v = z - lse;  // below finfo.min becomes finfo.min; NaN stays NaN
        return static_cast<T>(v < bias_min ? bias_min : v);
      } else {
        return static_cast<T>(fast_exp(z - m) * inv);
      }
    };
    if (GENERAL || !same_alignment(xr + lo, o + lo)) {
      for (int64_t j = lo + tid; j < hi; j += THREADS) o[j] = finish(score(j));
    } else {
      cuda::vec_loop(
          xr + lo, n, tid, THREADS, [&](int64_t k) { o[lo + k] = finish(score(lo + k)); },
          [&](int64_t k) {
            const Pack in = *reinterpret_cast<const Pack*>(xr + lo + k);
            Pack res;
#pragma unroll
            for (int e = 0; e < VEC; ++e) res.v[e] = finish(cap(static_cast<acc_t>(in.v[e]) * scale));
            *reinterpret_cast<Pack*>(o + lo + k) = res;
          });
    }
  }
}

// Softmax: dx = scale * y * (dy - sum(dy * y)) on [lo, hi); 0 elsewhere.
// LOG (y = log-softmax): dx = scale * (dy - exp(y) * sum(dy)), sum and dx over
// the positions where y != finfo.min. `a.x` is dy.
template <typename T, int THREADS, int BLOCK, bool LOG>
__global__ void __launch_bounds__(BLOCK) softmax_backward_kernel(SoftmaxArgs a) {
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
    // Vector loads of y and dy and vector stores to dx need the three to share
    // their alignment (y may be a view with an odd offset, dy any strided row).
    const bool vec = same_alignment(gr + lo, yr + lo) && same_alignment(o + lo, yr + lo);

    acc_t dot = 0;
    auto dot1 = [&](int64_t k) { dot += term(yr[lo + k], gr[lo + k]); };
    if (vec) {
      cuda::vec_loop(yr + lo, n, tid, THREADS, dot1, [&](int64_t k) {
        const Pack yp = *reinterpret_cast<const Pack*>(yr + lo + k);
        const Pack gp = *reinterpret_cast<const Pack*>(gr + lo + k);
#pragma unroll
        for (int e = 0; e < VEC; ++e) dot += term(yp.v[e], gp.v[e]);
      });
    } else {
      for (int64_t k = tid; k < n; k += THREADS) dot1(k);
    }
    dot = row_sum<THREADS>(dot);
    if (!active || n == 0) continue;

    auto grad = [&](T y, T g) -> T {
      const acc_t yv = static_cast<acc_t>(y), gv = static_cast<acc_t>(g);
      if constexpr (LOG) {
        return y == ymin ? T(0) : static_cast<T>(scale * (gv - exp(yv) * dot));
      } else {
        return static_cast<T>(scale * yv * (gv - dot));
      }
    };
    auto grad1 = [&](int64_t k) { o[lo + k] = grad(yr[lo + k], gr[lo + k]); };
    if (vec) {
      cuda::vec_loop(yr + lo, n, tid, THREADS, grad1, [&](int64_t k) {
        const Pack yp = *reinterpret_cast<const Pack*>(yr + lo + k);
        const Pack gp = *reinterpret_cast<const Pack*>(gr + lo + k);
        Pack res;
#pragma unroll
        for (int e = 0; e < VEC; ++e) res.v[e] = grad(yp.v[e], gp.v[e]);
        *reinterpret_cast<Pack*>(o + lo + k) = res;
      });
    } else {
      for (int64_t k = tid; k < n; k += THREADS) grad1(k);
    }
  }
}

template <typename T, int THREADS, int BLOCK, bool LOG>
void launch_forward(const SoftmaxArgs& a, cudaStream_t stream) {
  const unsigned grid = cuda::grid_for(a.rows(), BLOCK / THREADS, 2048 / BLOCK);
  if (a.mask != nullptr || a.bias != nullptr) {
    softmax_forward_kernel<T, THREADS, BLOCK, true, LOG><<<grid, BLOCK, 0, stream>>>(a);
  } else {
    softmax_forward_kernel<T, THREADS, BLOCK, false, LOG><<<grid, BLOCK, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int THREADS, int BLOCK, bool LOG>
void launch_backward(const SoftmaxArgs& a, cudaStream_t stream) {
  const unsigned grid = cuda::grid_for(a.rows(), BLOCK / THREADS, 2048 / BLOCK);
  softmax_backward_kernel<T, THREADS, BLOCK, LOG><<<grid, BLOCK, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool LOG>
at::Tensor forward_cuda(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                        const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& lengths,
                        const std::optional<at::Tensor>& q_lengths, bool causal,
                        int64_t window_left, int64_t window_right, double scale,
                        const std::optional<at::Tensor>& q_offset,
                        std::optional<int64_t> q_offset_value,
                        const std::optional<at::Tensor>& segment_ids, int64_t chunk,
                        const std::optional<at::Tensor>& prefix_lengths, int64_t prefix_value,
                        double softcap, const std::optional<at::Tensor>& sinks) {
  auto p = prepare_softmax_forward(LOG ? "masked_log_softmax" : "masked_softmax", x, mask, bias,
                                   mask_desc(lengths, q_lengths, causal, window_left,
                                             window_right, q_offset, q_offset_value, segment_ids,
                                             chunk, prefix_lengths, prefix_value),
                                   scale, softcap, sinks);
  if (p.out.numel() == 0) return p.out;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_softmax", [&] {
    if (p.args.Tk <= kWarpRowMax) {
      launch_forward<scalar_t, 32, kBlock, LOG>(p.args, stream);
    } else {
      launch_forward<scalar_t, kLongBlock, kLongBlock, LOG>(p.args, stream);
    }
  });
  return p.out;
}

template <bool LOG>
at::Tensor backward_cuda(const at::Tensor& grad_out, const at::Tensor& out,
                         const std::optional<at::Tensor>& lengths,
                         const std::optional<at::Tensor>& q_lengths, bool causal,
                         int64_t window_left, int64_t window_right, double scale,
                        const std::optional<at::Tensor>& q_offset,
                        std::optional<int64_t> q_offset_value,
                        const std::optional<at::Tensor>& segment_ids, int64_t chunk,
                        const std::optional<at::Tensor>& prefix_lengths, int64_t prefix_value) {
  auto p = prepare_softmax_backward(LOG ? "masked_log_softmax_backward" : "masked_softmax_backward",
                                    grad_out, out,
                                    mask_desc(lengths, q_lengths, causal, window_left,
                                              window_right, q_offset, q_offset_value, segment_ids,
                                              chunk, prefix_lengths, prefix_value),
                                    scale);
  if (p.out.numel() == 0) return p.out;
  const c10::cuda::CUDAGuard guard(out.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "masked_softmax_backward", [&] {
    if (p.args.Tk <= kWarpRowMax) {
      launch_backward<scalar_t, 32, kBlock, LOG>(p.args, stream);
    } else {
      launch_backward<scalar_t, kLongBlock, kLongBlock, LOG>(p.args, stream);
    }
  });
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CUDA, m) {
  m.impl("masked_softmax", &forward_cuda<false>);
  m.impl("masked_softmax_backward", &backward_cuda<false>);
  m.impl("masked_log_softmax", &forward_cuda<true>);
  m.impl("masked_log_softmax_backward", &backward_cuda<true>);
}

}  // namespace maskext
