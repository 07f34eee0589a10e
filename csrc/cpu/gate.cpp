// CPU kernels for soft (learnable) masks: m = sigmoid(logits * inv_t), exactly
// 0 at padded steps (t outside [lo, hi) along dim 1), 0/1 when hard (with the
// sigmoid's gradient, straight-through); gate: y = x * m. x may be absent
// (the op then returns m itself).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "maskext/checks.h"

namespace maskext {
namespace {

template <typename acc_t>
inline acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + std::exp(-z));
}

at::Tensor gate_cpu(const std::optional<at::Tensor>& x, const at::Tensor& logits,
                    const std::optional<at::Tensor>& lengths, double inv_t, bool hard) {
  GateProblem g = prepare_gate("gate", x, logits, lengths);
  const PaddedArgs& a = g.logits.args;
  at::Tensor out = at::empty_like(g.logits.x4);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* z = static_cast<const scalar_t*>(a.x);
    const scalar_t* xd = g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr;
    auto* o = out.data_ptr<scalar_t>();
    const acc_t it = static_cast<acc_t>(inv_t);
    at::parallel_for(0, a.B * a.T, std::max<int64_t>(1, 16384 / a.I), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t lo, hi;
        row_bounds(a.spec, r / a.T, 0, lo, hi);
        const int64_t t = r % a.T, base = r * a.I;
        if (t < lo || t >= hi) {
          std::fill(o + base, o + base + a.I, scalar_t(0));
          continue;
        }
        for (int64_t i = base; i < base + a.I; ++i) {
          const acc_t zi = static_cast<acc_t>(z[i]) * it;
          const acc_t m = hard ? acc_t(zi >= 0) : sigmoid(zi);
          o[i] = static_cast<scalar_t>(xd ? static_cast<acc_t>(xd[i]) * m : m);
        }
      }
    });
  });
  return out;
}

// dlogits = grad * (x or 1) * s * (1 - s) * inv_t; dx = grad * m; both 0 at padding.
std::tuple<at::Tensor, at::Tensor> gate_backward_cpu(const at::Tensor& grad,
                                                     const std::optional<at::Tensor>& x,
                                                     const at::Tensor& logits,
                                                     const std::optional<at::Tensor>& lengths,
                                                     double inv_t, bool hard) {
  GateProblem g = prepare_gate("gate_backward", x, logits, lengths, &grad);
  const PaddedArgs& a = g.logits.args;
  const at::Tensor gc = grad.contiguous();
  at::Tensor dlogits = at::empty_like(g.logits.x4);
  at::Tensor dx = g.x.defined() ? at::empty_like(g.x) : at::empty({0}, logits.options());
  if (dlogits.numel() == 0) return {dx, dlogits};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gate_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* z = static_cast<const scalar_t*>(a.x);
    const scalar_t* xd = g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr;
    const auto* gd = gc.data_ptr<scalar_t>();
    auto* dz = dlogits.data_ptr<scalar_t>();
    scalar_t* dxd = xd ? dx.data_ptr<scalar_t>() : nullptr;
    const acc_t it = static_cast<acc_t>(inv_t);
    at::parallel_for(0, a.B * a.T, std::max<int64_t>(1, 16384 / a.I), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t lo, hi;
        row_bounds(a.spec, r / a.T, 0, lo, hi);
        const int64_t t = r % a.T, base = r * a.I;
        if (t < lo || t >= hi) {
          std::fill(dz + base, dz + base + a.I, scalar_t(0));
          if (dxd) std::fill(dxd + base, dxd + base + a.I, scalar_t(0));
          continue;
        }
        for (int64_t i = base; i < base + a.I; ++i) {
          const acc_t zi = static_cast<acc_t>(z[i]) * it;
          const acc_t s = sigmoid(zi);
          const acc_t gi = static_cast<acc_t>(gd[i]);
          const acc_t xi = xd ? static_cast<acc_t>(xd[i]) : acc_t(1);
          dz[i] = static_cast<scalar_t>(gi * xi * s * (acc_t(1) - s) * it);
          if (dxd) dxd[i] = static_cast<scalar_t>(gi * (hard ? acc_t(zi >= 0) : s));
        }
      }
    });
  });
  return {dx, dlogits};
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CPU, m) {
  m.impl("gate", &gate_cpu);
  m.impl("gate_backward", &gate_backward_cpu);
}

}  // namespace maskext
