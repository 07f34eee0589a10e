// CUDA kernels for ops on padded data: fill_padding and pooling over the real
// steps. x is viewed as (B, M, T, I); steps t outside [lo, hi) are padding.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "maskext/checks.h"
#include "maskext/cuda_steps.cuh"
#include "maskext/cuda_utils.cuh"

namespace maskext {
namespace {

// Any steps (fill_padding_flat_kernel below takes those of a multiple of 16
// bytes): one block per (b, m, t) step of I elements; in_place: only padding
// is written. Real steps are copied with 16-byte loads and stores where x and
// out are equally aligned (same_align), padding written with 16-byte stores.
template <typename T>
__global__ void fill_padding_kernel(PaddedArgs a, T value, bool in_place, bool same_align) {
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t steps = a.B * a.M * a.T;
  for (int64_t s = blockIdx.x; s < steps; s += gridDim.x) {
    const int64_t t = s % a.T, b = s / (a.M * a.T);
    int64_t lo, hi;
    row_bounds(a.spec, b, 0, lo, hi);
    T* o = out + s * a.I;
    const T* xs = x + s * a.I;
    if (t < lo || t >= hi) {
      cuda::fill(o, a.I, value, threadIdx.x, blockDim.x);
    } else if (!in_place && same_align) {
      cuda::vec_loop(o, a.I, threadIdx.x, blockDim.x, [&](int64_t k) { o[k] = xs[k]; },  // [edge]
                     [&](int64_t k) {
                       cuda::st_global_128(o + k, *reinterpret_cast<const uint4*>(xs + k));
                     });
    } else if (!in_place) {
      for (int64_t i = threadIdx.x; i < a.I; i += blockDim.x) o[i] = xs[i];  // [edge]
    }
  }
}

// Steps of a multiple of 16 bytes (I % VEC == 0), x and out 16-byte aligned:
// a thread per 16-byte chunk of the flat (B, M, T, I) tensor (every chunk
// inside one step: real_step), kFlatUnroll chunks per thread with their loads
// issued before any store. (A block per step, with two 64-bit divisions and
// the step's bounds before its one 16-byte load per thread, ran at 1.27x the
// copy on the H200, 2026-11-27, where torch.compile's kernel ran at 1.00x.)
// Four blocks per SM (up to 64 registers: 52 used): 32 warps, each thread
// with 4 x 16 bytes in flight.
constexpr int kFlatThreads = 256, kFlatUnroll = 4, kFlatBlocksPerSM = 4;

template <typename T>
__global__ void __launch_bounds__(kFlatThreads, kFlatBlocksPerSM)
    fill_padding_flat_kernel(PaddedArgs a, T value, bool in_place, StepOf d) {
  constexpr int VEC = cuda::Vec16<T>::N;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const uint4 fill = cuda::splat16(value);
  const int64_t per_step = a.I / VEC, chunks = a.B * a.M * a.T * per_step;
  // A block's tile: kFlatUnroll x kFlatThreads consecutive chunks. The next
  // round's steps (their lengths' loads) are found while this round's loads
  // are in flight: one round trip to memory per round, not two in a row.
  const int64_t stride = int64_t(gridDim.x) * kFlatThreads * kFlatUnroll;
  int64_t c0 = blockIdx.x * int64_t(kFlatThreads * kFlatUnroll) + threadIdx.x;
  bool real[kFlatUnroll];
  real_chunks<kFlatThreads>(a, d, per_step, chunks, c0, real);
  for (; c0 < chunks; c0 += stride) {
    uint4 v[kFlatUnroll];
#pragma unroll
    for (int j = 0; j < kFlatUnroll; ++j) {  // every load of the round before any store
      const int64_t c = c0 + j * kFlatThreads;
      if (real[j] && !in_place) v[j] = __ldg(reinterpret_cast<const uint4*>(x + c * VEC));
    }
    bool next[kFlatUnroll];
    real_chunks<kFlatThreads>(a, d, per_step, chunks, c0 + stride, next);
#pragma unroll
    for (int j = 0; j < kFlatUnroll; ++j) {
      const int64_t c = c0 + j * kFlatThreads;
      if (c < chunks && !(real[j] && in_place)) {
        cuda::st_global_128(out + c * VEC, real[j] ? v[j] : fill);
      }
      real[j] = next[j];
    }
  }
}

void launch_fill_padding(const PaddedArgs& a, const at::Scalar& value, at::ScalarType dtype,
                         bool in_place, const at::Device& device) {
  const int64_t steps = a.B * a.M * a.T;
  if (steps == 0 || a.I == 0) return;
  const c10::cuda::CUDAGuard guard(device);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool same_align =
      (reinterpret_cast<uintptr_t>(a.x) - reinterpret_cast<uintptr_t>(a.out)) % 16 == 0;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, dtype, "fill_padding", [&] {
    constexpr int VEC = cuda::Vec16<scalar_t>::N;
    if (a.I % VEC == 0 && reinterpret_cast<uintptr_t>(a.out) % 16 == 0 &&
        (in_place || reinterpret_cast<uintptr_t>(a.x) % 16 == 0)) {
      const int64_t chunks = steps * (a.I / VEC);
      fill_padding_flat_kernel<scalar_t>
          <<<cuda::grid_for(chunks, kFlatThreads * kFlatUnroll, kFlatBlocksPerSM), kFlatThreads, 0,
             stream>>>(a, value.to<scalar_t>(), in_place, step_of(a, a.I / VEC, chunks));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // A thread per 16-byte chunk of a step, 64 to 256 threads.
    const int64_t chunks = (a.I + cuda::Vec16<scalar_t>::N - 1) / cuda::Vec16<scalar_t>::N;
    const int threads = chunks > 128 ? 256 : (chunks > 64 ? 128 : 64);
    fill_padding_kernel<scalar_t><<<cuda::grid_for(steps, 1, 64), threads, 0, stream>>>(
        a, value.to<scalar_t>(), in_place, same_align);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor fill_padding_cuda(const at::Tensor& x, const at::Tensor& lengths, const at::Scalar& value,
                             int64_t dim, bool left_pad) {
  auto p = prepare_padded("fill_padding", x, lengths, dim, left_pad);
  at::Tensor out = at::empty_like(p.x4);
  p.args.out = out.data_ptr();
  launch_fill_padding(p.args, value, x.scalar_type(), false, x.device());
  return out;
}

void fill_padding_inplace_cuda(at::Tensor& x, const at::Tensor& lengths,
                                      const at::Scalar& value, int64_t dim, bool left_pad) {
  auto p = prepare_padded("fill_padding_", x, lengths, dim, left_pad);
  p.args.out = p.x4.data_ptr();
  launch_fill_padding(p.args, value, x.scalar_type(), true, x.device());
  if (!p.x4.is_same(x)) x.copy_(p.x4);  // x was not contiguous: write back
}

// Pooling: a block of kPoolThreads per tile of C x VEC columns i of one
// (b, m), C threads across them (the least power of two that covers I, at
// most 32), each holding VEC consecutive columns; its 256 / C slices stride
// over the real steps [lo, hi), so that consecutive threads read consecutive
// elements (I = 1: a whole block along one row; wide rows: a warp along 32 x
// VEC columns of one step), and then reduce the slices in shared memory. VEC:
// 16 bytes of columns where I is a multiple of 16 bytes and x is 16-byte
// aligned, else 1. Each thread keeps U loads in flight. (One thread per
// output looping over T gave B * I = 4096 outputs 16 blocks on 132 SMs; one
// load per step, 2 LDG in the SASS, ran at 4.4x `x.sum(1)` on the H200, and
// 8 scalar loads in flight at 1.4-1.5x, 0.6x torch.compile's time
// (2026-11-27): 2-byte loads, 16 bytes in flight per fp16 thread.)
constexpr int kPoolThreads = 256;
// Loads in flight per thread: 8 scalar ones, 4 of 16 bytes.
template <int VEC>
constexpr int kPoolUnroll = VEC == 1 ? 8 : 4;

template <typename acc_t>
__device__ __forceinline__ acc_t pool_op(PoolMode mode, acc_t acc, acc_t v) {
  if (mode == PoolMode::Max) return (v > acc || v != v) ? v : acc;  // NaN propagates, as torch.amax
  return acc + v;
}

// VEC elements of x at p (16-byte aligned when VEC > 1) as loaded, and as acc_t.
template <typename T, int VEC>
using PoolRaw = std::conditional_t<VEC == 1, T, uint4>;

template <typename T, int VEC>
__device__ __forceinline__ PoolRaw<T, VEC> load_cols(const T* p) {
  if constexpr (VEC == 1) {
    return *p;
  } else {
    return __ldg(reinterpret_cast<const uint4*>(p));
  }
}

template <typename T, int VEC, typename acc_t>
__device__ __forceinline__ void unpack_cols(PoolRaw<T, VEC> raw, acc_t (&v)[VEC]) {
  if constexpr (VEC == 1) {
    v[0] = static_cast<acc_t>(raw);
  } else {
    cuda::unpack16<T>(raw, v);
  }
}

// The pooled value of a (b, m, i) from the reduction r of its real steps.
template <typename acc_t>
__device__ __forceinline__ acc_t pool_result(PoolMode mode, acc_t r, int64_t lo, int64_t hi) {
  if (hi <= lo) return acc_t(0);  // empty: 0, never -inf or NaN
  return mode == PoolMode::Mean ? r / static_cast<acc_t>(hi - lo) : r;
}

// splits > 1 (fewer tiles than the GPU holds blocks, long rows): block w
// reduces the steps of split w % splits of tile w / splits and writes its
// columns' reductions to partial[w * C * VEC ...]; masked_pool_finish_kernel
// combines them.
template <typename T, int VEC>
__global__ void __launch_bounds__(kPoolThreads)
    masked_pool_kernel(PaddedArgs a, PoolMode mode, int C, int splits, T* values,
                       at::opmath_type<T>* partial) {
  using acc_t = at::opmath_type<T>;
  constexpr int U = kPoolUnroll<VEC>;
  __shared__ acc_t part[kPoolThreads * VEC];
  const T* x = static_cast<const T*>(a.x);
  const int S = kPoolThreads / C;  // slices of the steps
  const int c = threadIdx.x % C, s = threadIdx.x / C;
  const acc_t init = mode == PoolMode::Max ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
  const int64_t cols = int64_t(C) * VEC;  // of a tile
  const int64_t tiles_per_row = (a.I + cols - 1) / cols, tiles = a.B * a.M * tiles_per_row;
  for (int64_t w = blockIdx.x; w < tiles * splits; w += gridDim.x) {  // uniform across the block
    const int64_t tile = w / splits, k = tile / tiles_per_row;
    const int64_t i = (tile % tiles_per_row) * cols + c * VEC;
    int64_t lo, hi;
    row_bounds(a.spec, k / a.M, 0, lo, hi);
    // This split's steps [beg, end) of [lo, hi).
    const int64_t j = w % splits, len = hi > lo ? hi - lo : 0;
    const int64_t beg = lo + len * j / splits, end = lo + len * (j + 1) / splits;
    acc_t acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = init;
    if (i < a.I && end - beg > s) {  // i < I: all VEC columns (VEC divides I)
      // Steps beg + s, beg + s + S, ...: n of them, `stride` elements apart.
      const int64_t stride = static_cast<int64_t>(S) * a.I;
      const T* p = x + k * a.T * a.I + (beg + s) * a.I + i;
      int64_t n = (end - beg - s + S - 1) / S;
      for (; n >= U; n -= U, p += U * stride) {
        PoolRaw<T, VEC> raw[U];
#pragma unroll
        for (int u = 0; u < U; ++u) raw[u] = load_cols<T, VEC>(p + u * stride);  // all loads first
#pragma unroll
        for (int u = 0; u < U; ++u) {
          acc_t v[VEC];
          unpack_cols<T, VEC>(raw[u], v);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = pool_op(mode, acc[e], v[e]);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u < n) {
          acc_t v[VEC];
          unpack_cols<T, VEC>(load_cols<T, VEC>(p + u * stride), v);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = pool_op(mode, acc[e], v[e]);  // keeps a NaN
        }
      }
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) part[threadIdx.x * VEC + e] = acc[e];
    __syncthreads();
    for (int half = S / 2; half > 0; half /= 2) {  // slices s and s + half, columns of c
      if (s < half) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          part[threadIdx.x * VEC + e] =
              pool_op(mode, part[threadIdx.x * VEC + e], part[(threadIdx.x + half * C) * VEC + e]);
        }
      }
      __syncthreads();
    }
    if (s == 0 && i < a.I) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (splits > 1) {
          partial[w * cols + c * VEC + e] = part[c * VEC + e];
        } else {
          values[k * a.I + i + e] = static_cast<T>(pool_result(mode, part[c * VEC + e], lo, hi));
        }
      }
    }
    __syncthreads();  // part is reused by the next tile
  }
}

// Each output (b, m, i) from its tile's `splits` partial reductions, in order.
template <typename T>
__global__ void masked_pool_finish_kernel(PaddedArgs a, PoolMode mode, int64_t cols, int splits,
                                          const at::opmath_type<T>* partial, T* values) {
  using acc_t = at::opmath_type<T>;
  const int64_t tiles_per_row = (a.I + cols - 1) / cols, outputs = a.B * a.M * a.I;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < outputs;
       o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = o / a.I, i = o - k * a.I, tile = k * tiles_per_row + i / cols;
    acc_t r = mode == PoolMode::Max ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
    const acc_t* q = partial + tile * splits * cols + i % cols;
    for (int j = 0; j < splits; ++j) r = pool_op(mode, r, q[j * cols]);
    int64_t lo, hi;
    row_bounds(a.spec, k / a.M, 0, lo, hi);
    values[o] = static_cast<T>(pool_result(mode, r, lo, hi));
  }
}

at::Tensor masked_pool_cuda(const at::Tensor& x, const at::Tensor& lengths, int64_t dim,
                            int64_t mode) {
  auto p = prepare_pool(x, lengths, dim, mode);
  const PaddedArgs& a = p.args;
  at::Tensor values = at::empty({a.B, a.M, a.I}, x.options());
  if (values.numel() == 0) return values;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto launch = [&]<int VEC>() {
      int C = 1;
      while (int64_t(C) * VEC < a.I && C < 32) C *= 2;
      const int64_t cols = int64_t(C) * VEC;
      const int64_t tiles = a.B * a.M * ((a.I + cols - 1) / cols);
      const int per_sm = cuda::blocks_per_sm(masked_pool_kernel<scalar_t, VEC>, kPoolThreads);
      // Fewer tiles than the GPU holds blocks: each tile's steps split over
      // as many blocks as fit in one round, each with at least one round of
      // U loads per slice (16 batch elements of 16K steps of 8 fp16 features
      // were 16 blocks on 132 SMs: 3x torch.compile's time).
      const int64_t slots = int64_t(cuda::sm_count()) * per_sm;
      const int64_t steps_per_split = int64_t(kPoolThreads / C) * kPoolUnroll<VEC>;
      int64_t splits = std::min(slots / tiles, a.T / steps_per_split);
      splits = std::max<int64_t>(1, std::min<int64_t>(splits, 1024));
      at::Tensor partial;
      if (splits > 1) partial = at::empty({tiles * splits * cols}, x.options().dtype(
                                              c10::CppTypeToScalarType<acc_t>::value));
      acc_t* pp = splits > 1 ? partial.data_ptr<acc_t>() : nullptr;
      masked_pool_kernel<scalar_t, VEC>
          <<<cuda::grid_for(tiles * splits, 1, per_sm), kPoolThreads, 0, stream>>>(
              a, static_cast<PoolMode>(mode), C, static_cast<int>(splits),
              values.data_ptr<scalar_t>(), pp);
      if (splits > 1) {
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        masked_pool_finish_kernel<scalar_t>
            <<<cuda::grid_for(values.numel(), 256), 256, 0, stream>>>(
                a, static_cast<PoolMode>(mode), cols, static_cast<int>(splits), pp,
                values.data_ptr<scalar_t>());
      }
    };
    constexpr int VEC = cuda::Vec16<scalar_t>::N;
    if (a.I % VEC == 0 && reinterpret_cast<uintptr_t>(a.x) % 16 == 0) {
      launch.template operator()<VEC>();
    } else {
      launch.template operator()<1>();
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return values;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CUDA, m) {
  m.impl("fill_padding", &fill_padding_cuda);
  m.impl("fill_padding_", &fill_padding_inplace_cuda);
  m.impl("masked_pool", &masked_pool_cuda);
}

}  // namespace maskext
