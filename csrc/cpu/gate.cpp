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

#include "maskext/checks.h"
#include "maskext/cpu_output.h"
#include "maskext/cpu_vec.h"

namespace maskext {
namespace {

template <typename acc_t>
at::vec::Vectorized<acc_t> vsigmoid(at::vec::Vectorized<acc_t> z) {
  using Vec = at::vec::Vectorized<acc_t>;
  return Vec(acc_t(1)) / (Vec(acc_t(1)) + fast_exp(z.neg()));
}

// hard ? (z >= 0) : sigmoid(z), as 0/1 or (0, 1).
template <typename acc_t>
at::vec::Vectorized<acc_t> vmask(at::vec::Vectorized<acc_t> z, bool hard) {
  using Vec = at::vec::Vectorized<acc_t>;
  return hard ? Vec::blendv(Vec(acc_t(0)), Vec(acc_t(1)), z >= Vec(acc_t(0))) : vsigmoid(z);
}

// Calls f(offset, count, real) over the flat (B, T, F) data in spans of at most
// kSpan elements that are all real or all padding: the real steps of one batch
// element are contiguous, so a span covers many steps (no per-step overhead).
constexpr int64_t kSpan = 4096;

template <typename F>
void for_each_span(const PaddedArgs& a, F&& f) {
  at::parallel_for(0, a.B * a.T, std::max<int64_t>(1, 16384 / std::max<int64_t>(a.I, 1)),
                   [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1;) {
      const int64_t b = r / a.T, first = b * a.T, end = std::min(r1, first + a.T);
      int64_t lo, hi;
      row_bounds(a.spec, b, 0, lo, hi);
      // [r, end) splits into padding before lo, real steps, padding from hi.
      const int64_t cuts[4] = {r, std::clamp(first + lo, r, end), std::clamp(first + hi, r, end), end};
      for (int part = 0; part < 3; ++part) {
        for (int64_t e = cuts[part] * a.I; e < cuts[part + 1] * a.I; e += kSpan) {
          f(e, std::min(kSpan, cuts[part + 1] * a.I - e), part == 1);
        }
      }
      r = end;
    }
  });
}

at::Tensor gate_cpu(const std::optional<at::Tensor>& x, const at::Tensor& logits,
                    const std::optional<at::Tensor>& lengths, double inv_t, bool hard) {
  GateProblem g = prepare_gate("gate", x, logits, lengths);
  const PaddedArgs& a = g.logits.args;
  at::Tensor out = at::empty_like(g.logits.x4);
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    const auto* z = static_cast<const scalar_t*>(a.x);
    const scalar_t* xd = g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr;
    auto* o = out.data_ptr<scalar_t>();
    const Vec it(static_cast<acc_t>(inv_t));
    for_each_span(a, [&](int64_t base, int64_t n, bool real) {
      if (!real) {
        std::fill(o + base, o + base + n, scalar_t(0));
        return;
      }
      acc_t zb[kSpan], xb[kSpan], ob[kSpan];
      const acc_t* zr = to_acc(z + base, zb, n);
      acc_t* res = std::is_same_v<scalar_t, acc_t> ? reinterpret_cast<acc_t*>(o + base) : ob;
      if (xd != nullptr) {
        at::vec::map2([&](Vec zv, Vec xv) { return xv * vmask(zv * it, hard); }, res, zr,
                      to_acc(xd + base, xb, n), n);
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
  advise_huge_pages(dlogits);
  if (dx.numel() > 0) advise_huge_pages(dx);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gate_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    const auto* z = static_cast<const scalar_t*>(a.x);
    const scalar_t* xd = g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr;
    const auto* gd = gc.data_ptr<scalar_t>();
    auto* dz = dlogits.data_ptr<scalar_t>();
    scalar_t* dxd = xd ? dx.data_ptr<scalar_t>() : nullptr;
    const Vec it(static_cast<acc_t>(inv_t));
    for_each_span(a, [&](int64_t base, int64_t n, bool real) {
      if (!real) {
        std::fill(dz + base, dz + base + n, scalar_t(0));
        if (dxd) std::fill(dxd + base, dxd + base + n, scalar_t(0));
        return;
      }
      acc_t zb[kSpan], gb[kSpan], xb[kSpan], ob[kSpan];
      const acc_t* zr = to_acc(z + base, zb, n);
      const acc_t* gr = to_acc(gd + base, gb, n);
      // grad * x first (in ob), then times the sigmoid's slope.
      if (xd != nullptr) {
        at::vec::map2([](Vec gv, Vec xv) { return gv * xv; }, ob, gr,
                      to_acc(xd + base, xb, n), n);
      } else {
        std::copy(gr, gr + n, ob);
      }
      at::vec::map2([&](Vec gx, Vec zv) {
        const Vec s = vsigmoid(zv * it);
        return gx * s * (Vec(acc_t(1)) - s) * it;
      }, ob, ob, zr, n);
      at::vec::convert(ob, dz + base, n);
      if (dxd != nullptr) {
        at::vec::map2([&](Vec gv, Vec zv) { return gv * vmask(zv * it, hard); }, ob, gr,
                      zr, n);
        at::vec::convert(ob, dxd + base, n);
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
