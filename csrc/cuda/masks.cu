// CUDA kernels for masks from lengths, and lengths from masks or padded data.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "maskext/checks.h"
#include "maskext/cuda_utils.cuh"

namespace maskext {
namespace {

using cuda::Vec16;

// The low n bytes of 8 set, for n in [0, 8].
__device__ __forceinline__ uint64_t low_bytes(int n) {
  return n >= 8 ? ~uint64_t(0) : (uint64_t(1) << (8 * n)) - 1;
}

// VEC values of a 16-byte chunk of row positions [p, p + VEC): keep inside
// [lo, hi), masked outside, as one uint4. Whole chunks inside or outside are
// splats; a chunk that lo or hi cuts selects keep16's bytes under a byte mask
// of [lo, hi). Built element by element, with a 64-bit compare pair each, that
// chunk took ~150 instructions (bool, sm_90 SASS) in the one lane per row it
// falls to, while the warp's 31 other lanes waited: 16K rows of 1 KB then cost
// more issue slots than their stores (1.41x fill_ on an H200, RESULTS.md).
template <typename T>
__device__ __forceinline__ uint4 mask_chunk(int p, int lo, int hi, uint4 keep16, uint4 masked16) {
  constexpr int VEC = Vec16<T>::N, S = static_cast<int>(sizeof(T));
  if (p >= lo && p + VEC <= hi) return keep16;
  if (p + VEC <= lo || p >= hi) return masked16;
  const int b0 = (lo > p ? lo - p : 0) * S, b1 = (hi - p < VEC ? hi - p : VEC) * S;  // bytes
  const uint64_t m0 = low_bytes(b1 < 8 ? b1 : 8) & ~low_bytes(b0 < 8 ? b0 : 8);
  const uint64_t m1 = low_bytes(b1 > 8 ? b1 - 8 : 0) & ~low_bytes(b0 > 8 ? b0 - 8 : 0);
  const auto pick = [](uint32_t k, uint32_t m, uint32_t mask) { return (k & mask) | (m & ~mask); };
  return make_uint4(pick(keep16.x, masked16.x, static_cast<uint32_t>(m0)),
                    pick(keep16.y, masked16.y, static_cast<uint32_t>(m0 >> 32)),
                    pick(keep16.z, masked16.z, static_cast<uint32_t>(m1)),
                    pick(keep16.w, masked16.w, static_cast<uint32_t>(m1 >> 32)));
}

// Rows that start 16-byte aligned (cols % VEC == 0), or of 32 chunks or more
// (any cols: a row's unaligned head and tail elements one per lane); cols <
// kIntCols, so positions in a row are 32-bit. A warp writes R consecutive rows
// (R <= 32, rows_per_warp below), whose bounds its lanes find at once, lane j
// those of row j; then the lanes write the rows' chunks with 128-bit stores,
// row after row (rows of 32 chunks or more) or spread over the R rows
// (shorter rows, which would leave lanes idle). Finding the row per chunk,
// from a flat index, took three 64-bit divisions and row_bounds per 16 bytes
// (2.4-3.7x the time of fill_ on an H200).
constexpr int64_t kIntCols = int64_t(1) << 30;  // positions + 32 chunks stay below 2^31

template <typename T>
__global__ void interval_mask_rows_kernel(IntervalMaskArgs a, int R, T keep, T masked) {
  constexpr int VEC = Vec16<T>::N;
  T* out = static_cast<T*>(a.out);
  const uint4 keep16 = cuda::splat16(keep), masked16 = cuda::splat16(masked);
  const int cols = static_cast<int>(a.cols), cpr = cols / VEC;  // chunks per row
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t r0 = (blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32) * R;
       r0 < a.rows; r0 += warps * R) {  // r0 is the same in every lane: the shuffles see all 32
    int lo = 0, hi = 0;
    if (lane < R && r0 + lane < a.rows) {
      int64_t lo64, hi64;  // in [0, cols]
      row_bounds(a.spec, (r0 + lane) / a.spec.q_len, (r0 + lane) % a.spec.q_len, lo64, hi64);
      lo = static_cast<int>(lo64);
      hi = static_cast<int>(hi64);
    }
    const int n = static_cast<int>(a.rows - r0 < R ? a.rows - r0 : R);
    if (cpr >= 32) {
      for (int j = 0; j < n; ++j) {
        const int rlo = __shfl_sync(0xffffffffu, lo, j), rhi = __shfl_sync(0xffffffffu, hi, j);
        T* o = out + (r0 + j) * a.cols;
        // A row that starts off a 16-byte boundary (cols % VEC != 0): its first
        // `head` and last `tail` (< VEC <= 32) elements one per lane, the chunks
        // between with 128-bit stores.
        const int head = static_cast<int>((VEC - (r0 + j) * a.cols % VEC) % VEC);
        const int end = head + (cols - head) / VEC * VEC;  // of the 16-byte chunks
        for (int p = head + lane * VEC; p < end; p += 32 * VEC) {
          cuda::st_global_128(o + p, mask_chunk<T>(p, rlo, rhi, keep16, masked16));
        }
        const int e = lane < head ? lane : end + (lane - head);  // the head's, then the tail's
        if (e < cols) o[e] = e >= rlo && e < rhi ? keep : masked;  // [edge]
      }
    } else {  // rows of fewer chunks than lanes: the lanes spread over the n rows' chunks
      const int total = n * cpr;
      for (int q0 = 0; q0 < total; q0 += 32) {  // the same trips in every lane
        const int q = q0 + lane, j = (q < total ? q : total - 1) / cpr;
        const int rlo = __shfl_sync(0xffffffffu, lo, j), rhi = __shfl_sync(0xffffffffu, hi, j);
        const int p = (q - j * cpr) * VEC;
        if (q < total) {
          cuda::st_global_128(out + (r0 + j) * a.cols + p,
                              mask_chunk<T>(p, rlo, rhi, keep16, masked16));
        }
      }
    }
  }
}

constexpr int kRowsBlock = 256;  // threads of interval_mask_rows_kernel's blocks

// Rows per warp of interval_mask_rows_kernel: 1 while the rows leave a warp
// of the GPU's resident ones idle, then enough that every warp runs once, at
// most 32 (a lane per row's bounds). test_masks.py reaches R = 2 to 32 and past.
inline int rows_per_warp(int64_t rows, int64_t resident_warps) {
  const int64_t R = (rows + resident_warps - 1) / resident_warps;
  return static_cast<int>(R < 1 ? 1 : (R > 32 ? 32 : R));
}

// Any cols: each thread writes 16-byte chunks of the flat (rows, cols) output,
// so every store but the last is a full vector (when out is 16-byte aligned,
// as every output allocated by the ops is); a chunk may cross rows. A chunk
// inside one row is mask_chunk's splat or byte mask; only a chunk that
// crosses rows is built element by element (for bool, ~150 instructions).
template <typename T>
__global__ void interval_mask_kernel(IntervalMaskArgs a, T keep, T masked) {
  constexpr int VEC = Vec16<T>::N;
  T* out = static_cast<T*>(a.out);
  const int64_t total = a.rows * a.cols;
  const int64_t nchunks = (total + VEC - 1) / VEC;
  const bool aligned = reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const bool short_rows = a.cols < kIntCols;  // positions in a row fit mask_chunk's ints
  const uint4 keep16 = cuda::splat16(keep), masked16 = cuda::splat16(masked);
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < nchunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t start = c * VEC;
    int64_t r = start / a.cols, col = start - r * a.cols;
    int64_t lo, hi;
    row_bounds(a.spec, r / a.spec.q_len, r % a.spec.q_len, lo, hi);
    if (aligned && short_rows && col + VEC <= a.cols) {  // the chunk lies in row r
      cuda::st_global_128(out + start, mask_chunk<T>(static_cast<int>(col), static_cast<int>(lo),
                                                     static_cast<int>(hi), keep16, masked16));
      continue;
    }
    T v[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if (col == a.cols) {  // the chunk crosses into the next row
        ++r;
        col = 0;
        if (r < a.rows) row_bounds(a.spec, r / a.spec.q_len, r % a.spec.q_len, lo, hi);
      }
      v[e] = (col >= lo && col < hi) ? keep : masked;
      ++col;
    }
    if (aligned && start + VEC <= total) {
      uint4 u;
      memcpy(&u, v, 16);
      cuda::st_global_128(out + start, u);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (start + e < total) out[start + e] = v[e];  // [edge]
      }
    }
  }
}

void write_interval_mask_cuda(const IntervalMaskArgs& a, const at::Tensor& out) {
  if (a.rows == 0 || a.cols == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, out.scalar_type(),
                             "interval_mask", [&] {
    constexpr int threads = 256;
    constexpr int VEC = Vec16<scalar_t>::N;
    const scalar_t keep = static_cast<scalar_t>(a.keep), masked = static_cast<scalar_t>(a.masked);
    if ((a.cols % VEC == 0 || a.cols >= 32 * VEC) && a.cols < kIntCols &&
        reinterpret_cast<uintptr_t>(a.out) % 16 == 0) {
      // (its 36-40 registers allow 51 resident warps per SM, not 64: kernel_report.py)
      const int per_sm = cuda::blocks_per_sm(interval_mask_rows_kernel<scalar_t>, kRowsBlock);
      const int R = rows_per_warp(a.rows, int64_t(cuda::sm_count()) * per_sm * (kRowsBlock / 32));
      interval_mask_rows_kernel<scalar_t>
          <<<cuda::grid_for((a.rows + R - 1) / R, kRowsBlock / 32, per_sm), kRowsBlock, 0,
             stream>>>(a, R, keep, masked);
    } else {
      const int64_t chunks = (a.rows * a.cols + VEC - 1) / VEC;
      interval_mask_kernel<scalar_t><<<cuda::grid_for(chunks, threads), threads, 0, stream>>>(
          a, keep, masked);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor lengths_to_mask_cuda(const at::Tensor& lengths, std::optional<int64_t> max_len,
                                bool left_pad, bool padding, at::ScalarType dtype) {
  auto p = prepare_lengths_to_mask(lengths, max_len, left_pad, padding, dtype);
  write_interval_mask_cuda(p.args, p.out);
  return p.out;
}

at::Tensor attention_mask_cuda(const at::Tensor& lengths, const std::optional<at::Tensor>& q_lengths,
                               int64_t q_len, int64_t k_len, bool causal, int64_t window_left,
                               int64_t window_right, at::ScalarType dtype,
                               const std::optional<at::Tensor>& q_offset,
                               std::optional<int64_t> q_offset_value,
                               const std::optional<at::Tensor>& segment_ids, int64_t chunk,
                               const std::optional<at::Tensor>& prefix_lengths,
                               int64_t prefix_value) {
  auto p = prepare_attention_mask(
      lengths,
      mask_desc(std::nullopt, q_lengths, causal, window_left, window_right, q_offset,
                q_offset_value, segment_ids, chunk, prefix_lengths, prefix_value),
      q_len, k_len, dtype);
  write_interval_mask_cuda(p.args, p.out);
  return p.out;
}

// One warp per row counts the True entries.
__global__ void mask_to_lengths_kernel(const bool* mask, int64_t B, int64_t T, int64_t sb,
                                       int64_t st, int64_t* out) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; b < B;
       b += warps) {
    int64_t n = 0;
    for (int64_t t = lane; t < T; t += 32) n += mask[b * sb + t * st];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) n += __shfl_xor_sync(0xffffffffu, n, off);
    if (lane == 0) out[b] = n;
  }
}

at::Tensor mask_to_lengths_cuda(const at::Tensor& mask) {
  check_mask_to_lengths(mask);
  const int64_t B = mask.size(0), T = mask.size(1);
  at::Tensor out = at::empty({B}, mask.options().dtype(at::kLong));
  if (B == 0) return out;
  const c10::cuda::CUDAGuard guard(mask.device());
  constexpr int threads = 256;
  mask_to_lengths_kernel<<<cuda::grid_for(B, threads / 32), threads, 0,
                           c10::cuda::getCurrentCUDAStream()>>>(
      mask.data_ptr<bool>(), B, T, mask.stride(0), mask.stride(1), out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// One block per batch element: the largest t + 1 over elements != pad.
template <typename T>
__global__ void lengths_from_padded_kernel(const T* x, int64_t B, int64_t steps, int64_t F, T pad,
                                           int64_t* out) {
  __shared__ int64_t warp_max[32];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const T* row = x + b * steps * F;
    int64_t len = 0;
    for (int64_t k = threadIdx.x; k < steps * F; k += blockDim.x) {
      if (row[k] != pad) len = k / F + 1;  // k grows, so this is the thread's max
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const int64_t o = __shfl_xor_sync(0xffffffffu, len, off);
      len = o > len ? o : len;
    }
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = len;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < blockDim.x / 32; ++w) len = warp_max[w] > len ? warp_max[w] : len;
      out[b] = len;
    }
    __syncthreads();
  }
}

at::Tensor lengths_from_padded_cuda(const at::Tensor& x, const at::Scalar& pad_value, int64_t dim) {
  const at::Tensor x3 = prepare_lengths_from_padded(x, dim);
  const int64_t B = x3.size(0);
  at::Tensor out = at::empty({B}, x.options().dtype(at::kLong));
  if (B == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, x3.scalar_type(),
                             "lengths_from_padded", [&] {
    constexpr int threads = 256;
    lengths_from_padded_kernel<scalar_t><<<cuda::grid_for(B, 1), threads, 0, stream>>>(
        x3.data_ptr<scalar_t>(), B, x3.size(1), x3.size(2), pad_value.to<scalar_t>(),
        out.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CUDA, m) {
  m.impl("lengths_to_mask", &lengths_to_mask_cuda);
  m.impl("attention_mask", &attention_mask_cuda);
  m.impl("mask_to_lengths", &mask_to_lengths_cuda);
  m.impl("lengths_from_padded", &lengths_from_padded_cuda);
}

}  // namespace maskext
