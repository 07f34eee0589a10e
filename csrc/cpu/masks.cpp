// CPU kernels for masks from lengths, and lengths from masks or padded data.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "maskext/checks.h"
#include "maskext/cpu_output.h"

namespace maskext {
namespace {

void write_interval_mask_cpu(const IntervalMaskArgs& a, at::ScalarType dtype) {
  if (a.rows == 0 || a.cols == 0) return;
  const int64_t grain = std::max<int64_t>(1, 32768 / a.cols);
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, dtype, "interval_mask", [&] {
    const scalar_t keep = static_cast<scalar_t>(a.keep);
    const scalar_t masked = static_cast<scalar_t>(a.masked);
    scalar_t* out = static_cast<scalar_t*>(a.out);
    at::parallel_for(0, a.rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t lo, hi;
        row_bounds(a.spec, r / a.spec.q_len, r % a.spec.q_len, lo, hi);
        scalar_t* row = out + r * a.cols;
        std::fill(row, row + lo, masked);
        std::fill(row + lo, row + hi, keep);
        std::fill(row + hi, row + a.cols, masked);
      }
    });
  });
}

at::Tensor lengths_to_mask_cpu(const at::Tensor& lengths, std::optional<int64_t> max_len,
                               bool left_pad, bool padding, at::ScalarType dtype) {
  auto p = prepare_lengths_to_mask(lengths, max_len, left_pad, padding, dtype);
  advise_huge_pages(p.out);
  write_interval_mask_cpu(p.args, dtype);
  return p.out;
}

at::Tensor attention_mask_cpu(const at::Tensor& lengths, const std::optional<at::Tensor>& q_lengths,
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
  advise_huge_pages(p.out);
  write_interval_mask_cpu(p.args, dtype);
  return p.out;
}

at::Tensor mask_to_lengths_cpu(const at::Tensor& mask) {
  check_mask_to_lengths(mask);
  const int64_t B = mask.size(0), T = mask.size(1);
  at::Tensor out = at::empty({B}, mask.options().dtype(at::kLong));
  const bool* m = mask.data_ptr<bool>();
  const int64_t sb = mask.stride(0), st = mask.stride(1);
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, B, std::max<int64_t>(1, 32768 / std::max<int64_t>(T, 1)),
                   [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t n = 0;
      for (int64_t t = 0; t < T; ++t) n += m[b * sb + t * st];
      o[b] = n;
    }
  });
  return out;
}

at::Tensor lengths_from_padded_cpu(const at::Tensor& x, const at::Scalar& pad_value, int64_t dim) {
  const at::Tensor x3 = prepare_lengths_from_padded(x, dim);
  const int64_t B = x3.size(0), T = x3.size(1), F = x3.size(2);
  at::Tensor out = at::empty({B}, x.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, x3.scalar_type(),
                             "lengths_from_padded", [&] {
    const scalar_t pad = pad_value.to<scalar_t>();
    const scalar_t* data = x3.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        // Scan from the end: only the padding and the last real step are read.
        int64_t len = 0;
        for (int64_t t = T - 1; t >= 0 && len == 0; --t) {
          const scalar_t* step = data + (b * T + t) * F;
          for (int64_t f = 0; f < F; ++f) {
            if (step[f] != pad) { len = t + 1; break; }
          }
        }
        o[b] = len;
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CPU, m) {
  m.impl("lengths_to_mask", &lengths_to_mask_cpu);
  m.impl("attention_mask", &attention_mask_cpu);
  m.impl("mask_to_lengths", &mask_to_lengths_cpu);
  m.impl("lengths_from_padded", &lengths_from_padded_cpu);
}

}  // namespace maskext
