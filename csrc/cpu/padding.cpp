// CPU kernels for ops on padded data: fill_padding and pooling over the real
// steps. x is viewed as (B, M, T, I); steps t outside [lo, hi) are padding.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "maskext/checks.h"
#include "maskext/cpu_output.h"
#include "maskext/cpu_vec.h"

namespace maskext {
namespace {

// in_place: only the padding is written (the real steps are not even read).
void fill_padding_kernel(const PaddedArgs& a, const at::Scalar& value, at::ScalarType dtype,
                         bool in_place) {
  const int64_t blocks = a.B * a.M;
  if (blocks == 0 || a.T == 0 || a.I == 0) return;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, dtype, "fill_padding", [&] {
    const scalar_t v = value.to<scalar_t>();
    const auto* x = static_cast<const scalar_t*>(a.x);
    auto* out = static_cast<scalar_t*>(a.out);
    const int64_t step = a.T * a.I;
    at::parallel_for(0, blocks, std::max<int64_t>(1, 32768 / step), [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        int64_t lo, hi;
        row_bounds(a.spec, k / a.M, 0, lo, hi);
        scalar_t* o = out + k * step;
        std::fill(o, o + lo * a.I, v);
        if (!in_place) std::copy(x + k * step + lo * a.I, x + k * step + hi * a.I, o + lo * a.I);
        std::fill(o + hi * a.I, o + step, v);
      }
    });
  });
}

at::Tensor fill_padding_cpu(const at::Tensor& x, const at::Tensor& lengths, const at::Scalar& value,
                            int64_t dim, bool left_pad) {
  auto p = prepare_padded("fill_padding", x, lengths, dim, left_pad);
  at::Tensor out = at::empty_like(p.x4);
  advise_huge_pages(out);
  p.args.out = out.data_ptr();
  fill_padding_kernel(p.args, value, x.scalar_type(), false);
  return out;
}

void fill_padding_inplace_cpu(at::Tensor& x, const at::Tensor& lengths,
                                     const at::Scalar& value, int64_t dim, bool left_pad) {
  auto p = prepare_padded("fill_padding_", x, lengths, dim, left_pad);
  p.args.out = p.x4.data_ptr();
  fill_padding_kernel(p.args, value, x.scalar_type(), true);
  if (!p.x4.is_same(x)) x.copy_(p.x4);  // x was not contiguous: write back
}

// values (B, M, I): sum, mean or max over the real steps (0 for none).
at::Tensor masked_pool_cpu(const at::Tensor& x, const at::Tensor& lengths, int64_t dim,
                           int64_t mode) {
  auto p = prepare_pool(x, lengths, dim, mode);
  const PaddedArgs& a = p.args;
  const auto pm = static_cast<PoolMode>(mode);
  at::Tensor values = at::empty({a.B, a.M, a.I}, x.options());
  if (values.numel() == 0) return values;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    const auto* xd = static_cast<const scalar_t*>(a.x);
    auto* vd = values.data_ptr<scalar_t>();
    const bool convert = !std::is_same_v<scalar_t, acc_t>;
    at::parallel_for(0, a.B * a.M, 1, [&](int64_t k0, int64_t k1) {
      std::vector<acc_t> acc(a.I), buf(convert ? a.I : 0);
      for (int64_t k = k0; k < k1; ++k) {
        int64_t lo, hi;
        row_bounds(a.spec, k / a.M, 0, lo, hi);
        // Steps are rows of I elements: accumulate them with vector ops across I.
        std::fill(acc.begin(), acc.end(),
                  pm == PoolMode::Max ? -std::numeric_limits<acc_t>::infinity() : acc_t(0));
        for (int64_t t = lo; t < hi; ++t) {
          const scalar_t* step = xd + (k * a.T + t) * a.I;
          const acc_t* v = to_acc(step, buf.data(), a.I);
          if (pm == PoolMode::Max) {  // at::vec::maximum propagates NaN, as torch.amax
            at::vec::map2([](Vec p, Vec q) { return at::vec::maximum(p, q); }, acc.data(),
                          acc.data(), v, a.I);
          } else {
            at::vec::map2([](Vec p, Vec q) { return p + q; }, acc.data(), acc.data(), v, a.I);
          }
        }
        acc_t div = 1;
        if (hi == lo) {
          std::fill(acc.begin(), acc.end(), acc_t(0));  // empty: 0, never -inf or NaN
        } else if (pm == PoolMode::Mean) {
          div = static_cast<acc_t>(hi - lo);
        }
        for (int64_t i = 0; i < a.I; ++i) vd[k * a.I + i] = static_cast<scalar_t>(acc[i] / div);
      }
    });
  });
  return values;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CPU, m) {
  m.impl("fill_padding", &fill_padding_cpu);
  m.impl("fill_padding_", &fill_padding_inplace_cpu);
  m.impl("masked_pool", &masked_pool_cpu);
}

}  // namespace maskext
