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
#include <type_traits>
#include <vector>

#include "maskext/checks.h"
#include "maskext/cpu_vec.h"

namespace maskext {
namespace {

template <typename acc_t>
at::vec::Vectorized<acc_t> vsigmoid(at::vec::Vectorized<acc_t> z) {
  using Vec = at::vec::Vectorized<acc_t>;
  return Vec(acc_t(1)) / (Vec(acc_t(1)) + z.neg().exp());
}

// hard ? (z >= 0) : sigmoid(z), as 0/1 or (0, 1).
template <typename acc_t>
at::vec::Vectorized<acc_t> vmask(at::vec::Vectorized<acc_t> z, bool hard) {
  using Vec = at::vec::Vectorized<acc_t>;
  return hard ? Vec::blendv(Vec(acc_t(0)), Vec(acc_t(1)), z >= Vec(acc_t(0))) : vsigmoid(z);
}

// Rows are the (b, t) steps of F elements; padded steps are written as 0.
template <typename F>
void for_each_step(const PaddedArgs& a, F&& f) {
  at::parallel_for(0, a.B * a.T, std::max<int64_t>(1, 16384 / std::max<int64_t>(a.I, 1)),
                   [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t lo, hi;
      row_bounds(a.spec, r / a.T, 0, lo, hi);
      const int64_t t = r % a.T;
      f(r * a.I, t >= lo && t < hi);
    }
  });
}

at::Tensor gate_cpu(const std::optional<at::Tensor>& x, const at::Tensor& logits,
                    const std::optional<at::Tensor>& lengths, double inv_t, bool hard) {
  GateProblem g = prepare_gate("gate", x, logits, lengths);
  const PaddedArgs& a = g.logits.args;
  at::Tensor out = at::empty_like(g.logits.x4);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    const auto* z = static_cast<const scalar_t*>(a.x);
    const scalar_t* xd = g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr;
    auto* o = out.data_ptr<scalar_t>();
    const Vec it(static_cast<acc_t>(inv_t));
    const int64_t n = a.I;
    for_each_step(a, [&](int64_t base, bool real) {
      if (!real) {
        std::fill(o + base, o + base + n, scalar_t(0));
        return;
      }
      thread_local std::vector<acc_t> zb, xb, ob;
      zb.resize(n); xb.resize(n); ob.resize(n);
      const acc_t* zr = to_acc(z + base, zb.data(), n);
      acc_t* res = std::is_same_v<scalar_t, acc_t> ? reinterpret_cast<acc_t*>(o + base) : ob.data();
      if (xd != nullptr) {
        at::vec::map2([&](Vec zv, Vec xv) { return xv * vmask(zv * it, hard); }, res, zr,
                      to_acc(xd + base, xb.data(), n), n);
      } else {
        at::vec::map([&](Vec zv) { return vmask(zv * it, hard); }, res, zr, n);
      }
      if constexpr (!std::is_same_v<scalar_t, acc_t>) at::vec::convert(res, o + base, n);
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
    using Vec = at::vec::Vectorized<acc_t>;
    const auto* z = static_cast<const scalar_t*>(a.x);
    const scalar_t* xd = g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr;
    const auto* gd = gc.data_ptr<scalar_t>();
    auto* dz = dlogits.data_ptr<scalar_t>();
    scalar_t* dxd = xd ? dx.data_ptr<scalar_t>() : nullptr;
    const Vec it(static_cast<acc_t>(inv_t));
    const int64_t n = a.I;
    for_each_step(a, [&](int64_t base, bool real) {
      if (!real) {
        std::fill(dz + base, dz + base + n, scalar_t(0));
        if (dxd) std::fill(dxd + base, dxd + base + n, scalar_t(0));
        return;
      }
      thread_local std::vector<acc_t> zb, gb, xb, ob;
      zb.resize(n); gb.resize(n); xb.resize(n); ob.resize(n);
      const acc_t* zr = to_acc(z + base, zb.data(), n);
      const acc_t* gr = to_acc(gd + base, gb.data(), n);
      // grad * x first (in ob), then times the sigmoid's slope.
      if (xd != nullptr) {
        at::vec::map2([](Vec gv, Vec xv) { return gv * xv; }, ob.data(), gr,
                      to_acc(xd + base, xb.data(), n), n);
      } else {
        std::copy(gr, gr + n, ob.data());
      }
      at::vec::map2([&](Vec gx, Vec zv) {
        const Vec s = vsigmoid(zv * it);
        return gx * s * (Vec(acc_t(1)) - s) * it;
      }, ob.data(), ob.data(), zr, n);
      at::vec::convert(ob.data(), dz + base, n);
      if (dxd != nullptr) {
        at::vec::map2([&](Vec gv, Vec zv) { return gv * vmask(zv * it, hard); }, ob.data(), gr,
                      zr, n);
        at::vec::convert(ob.data(), dxd + base, n);
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
