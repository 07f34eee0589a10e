// CPU kernels for ops on padded data: fill_padding and pooling over the real
// steps. x is viewed as (B, M, T, I); steps t outside [lo, hi) are padding.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "maskext/checks.h"

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

// values (B, M, I); indices (B, M, I) int64 for max (-1 for empty rows), else [0].
std::tuple<at::Tensor, at::Tensor> masked_pool_cpu(const at::Tensor& x, const at::Tensor& lengths,
                                                   int64_t dim, int64_t mode) {
  const char* op = "masked_pool";
  TORCH_CHECK(mode >= 0 && mode <= 2, "maskext::", op, ": mode must be 0 (sum), 1 (mean) or 2 (max), got ", mode);
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "maskext::", op,
              ": x must be a floating tensor, got ", x.scalar_type());
  auto p = prepare_padded(op, x, lengths, dim, false);
  const PaddedArgs& a = p.args;
  const auto pm = static_cast<PoolMode>(mode);
  at::Tensor values = at::empty({a.B, a.M, a.I}, x.options());
  at::Tensor indices = at::empty({pm == PoolMode::Max ? a.B * a.M * a.I : 0},
                                 x.options().dtype(at::kLong));
  if (values.numel() == 0) return {values, indices};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* xd = static_cast<const scalar_t*>(a.x);
    auto* vd = values.data_ptr<scalar_t>();
    int64_t* id = pm == PoolMode::Max ? indices.data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, a.B * a.M, 1, [&](int64_t k0, int64_t k1) {
      std::vector<acc_t> acc(a.I);
      std::vector<int64_t> arg(pm == PoolMode::Max ? a.I : 0);
      for (int64_t k = k0; k < k1; ++k) {
        int64_t lo, hi;
        row_bounds(a.spec, k / a.M, 0, lo, hi);
        const scalar_t* xk = xd + k * a.T * a.I;
        if (pm == PoolMode::Max) {
          std::fill(acc.begin(), acc.end(), -std::numeric_limits<acc_t>::infinity());
          std::fill(arg.begin(), arg.end(), int64_t(-1));
          for (int64_t t = lo; t < hi; ++t) {
            for (int64_t i = 0; i < a.I; ++i) {
              const acc_t v = static_cast<acc_t>(xk[t * a.I + i]);
              // first maximum wins; NaN propagates (as torch.max)
              if (arg[i] < 0 || v > acc[i] || (v != v && acc[i] == acc[i])) {
                acc[i] = v;
                arg[i] = t;
              }
            }
          }
          for (int64_t i = 0; i < a.I; ++i) {
            vd[k * a.I + i] = arg[i] < 0 ? scalar_t(0) : static_cast<scalar_t>(acc[i]);
            id[k * a.I + i] = arg[i];
          }
        } else {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t t = lo; t < hi; ++t)
            for (int64_t i = 0; i < a.I; ++i) acc[i] += static_cast<acc_t>(xk[t * a.I + i]);
          const acc_t div = (pm == PoolMode::Mean && hi > lo) ? acc_t(hi - lo) : acc_t(1);
          for (int64_t i = 0; i < a.I; ++i) vd[k * a.I + i] = static_cast<scalar_t>(acc[i] / div);
        }
      }
    });
  });
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CPU, m) {
  m.impl("fill_padding", &fill_padding_cpu);
  m.impl("fill_padding_", &fill_padding_inplace_cpu);
  m.impl("masked_pool", &masked_pool_cpu);
}

}  // namespace maskext
