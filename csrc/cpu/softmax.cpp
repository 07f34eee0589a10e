// CPU masked softmax, forward and backward: at::vec over the visible interval
// of each row, rows in parallel. Masked positions are never read.
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

// Rows are independent; a chunk should hold enough elements to be worth a task.
int64_t row_grain(int64_t Tk) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(Tk, 1)); }

// dst[0:n] = f(src[0:n]) (f maps vectors), converted to scalar_t; `scratch`
// (n values, may be src) holds the result before a conversion.
template <typename scalar_t, typename acc_t, typename F>
void store_mapped(const acc_t* src, scalar_t* dst, int64_t n, acc_t* scratch, F f) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    map_row(f, dst, src, n);
  } else {
    map_row(f, scratch, src, n);
    at::vec::convert(scratch, dst, n);
  }
}

// dst[k] = exp(src[k] * s - mx) (dst == src is fine; src[k] * s <= mx); returns
// the sum. With STORE false only the sum.
template <bool STORE, typename acc_t>
acc_t exp_sum(const acc_t* src, acc_t* dst, int64_t n, acc_t s, acc_t mx) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Vec vmx(mx), vs(s);
  auto e_of = [&](const Vec& v) { return exp_nonpos(at::vec::fmsub(v, vs, vmx)); };
  if (n < V) {  // one masked vector, not n scalar exps
    const Vec e = e_of(Vec::loadu(src, n));
    if constexpr (STORE) e.store(dst, n);
    return at::vec::vec_reduce_all<acc_t>([](Vec& p, Vec& q) { return p + q; },
                                          Vec::set(Vec(acc_t(0)), e, n));
  }
  // The tail as the vector ending at n (cpu_vec.h, "Row tails"), read before
  // the body overwrites it when dst == src.
  const int64_t m = n % V;
  const Vec last = m != 0 ? e_of(Vec::loadu(src + n - V)) : Vec(acc_t(0));
  Vec acc(acc_t(0));
  for (int64_t k = 0; k + V <= n; k += V) {
    const Vec e = e_of(Vec::loadu(src + k));
    if constexpr (STORE) e.store(dst + k);
    acc = acc + e;
  }
  if (m != 0) {
    if constexpr (STORE) last.store(dst + n - V);
    acc = acc + (last & last_lanes<acc_t>(m));
  }
  return at::vec::vec_reduce_all<acc_t>([](Vec& p, Vec& q) { return p + q; }, acc);
}

// sum over k of f(a[k], b[k]) (f maps vectors; lanes past n are not counted),
// with four independent accumulators so the adds do not wait on each other.
template <typename acc_t, typename F>
acc_t sum2(const acc_t* a, const acc_t* b, int64_t n, F f) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec s0(acc_t(0)), s1(acc_t(0)), s2(acc_t(0)), s3(acc_t(0));
  int64_t k = 0;
  for (; k + 4 * V <= n; k += 4 * V) {
    s0 = s0 + f(Vec::loadu(a + k), Vec::loadu(b + k));
    s1 = s1 + f(Vec::loadu(a + k + V), Vec::loadu(b + k + V));
    s2 = s2 + f(Vec::loadu(a + k + 2 * V), Vec::loadu(b + k + 2 * V));
    s3 = s3 + f(Vec::loadu(a + k + 3 * V), Vec::loadu(b + k + 3 * V));
  }
  for (; k + V <= n; k += V) s0 = s0 + f(Vec::loadu(a + k), Vec::loadu(b + k));
  if (k < n && n >= V) {  // the vector ending at n, its lanes before k dropped after f
    s1 = s1 + (f(Vec::loadu(a + n - V), Vec::loadu(b + n - V)) & last_lanes<acc_t>(n - k));
  } else if (k < n) {  // a row shorter than a vector: zero the lanes past n after f
    s1 = s1 + Vec::set(Vec(acc_t(0)), f(Vec::loadu(a, n), Vec::loadu(b, n)), n);
  }
  return at::vec::vec_reduce_all<acc_t>([](Vec& p, Vec& q) { return p + q; }, (s0 + s1) + (s2 + s3));
}

// The max of src[0:n] * scale (n > 0), with four independent accumulators;
// NaN propagates. STORE: also z[0:n] = src[0:n] * scale (src == z is fine).
template <bool STORE, typename acc_t>
acc_t scale_max(const acc_t* src, acc_t* z, int64_t n, acc_t scale) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Vec lowest(-std::numeric_limits<acc_t>::infinity()), vs(scale);
  // The tail: the vector ending at n (cpu_vec.h, "Row tails"), read before
  // the body overwrites it when z == src; the max does not mind the lanes it
  // shares with the body. A row shorter than a vector: a masked vector.
  Vec last = lowest;
  if (n < V) {
    const Vec v = Vec::loadu(src, n) * vs;
    if constexpr (STORE) v.store(z, n);
    last = Vec::set(lowest, v, n);
  } else if (n % V != 0) {
    last = Vec::loadu(src + n - V) * vs;
  }
  Vec m0 = lowest, m1 = last, m2 = lowest, m3 = lowest;
  auto step = [&](Vec& m, int64_t k) {
    const Vec v = Vec::loadu(src + k) * vs;
    if constexpr (STORE) v.store(z + k);
    m = at::vec::maximum(m, v);
  };
  int64_t k = 0;
  for (; k + 4 * V <= n; k += 4 * V) {
    step(m0, k);
    step(m1, k + V);
    step(m2, k + 2 * V);
    step(m3, k + 3 * V);
  }
  for (; k + V <= n; k += V) step(m0, k);
  if constexpr (STORE) {
    if (n > V && n % V != 0) last.store(z + n - V);
  }
  const Vec m = at::vec::maximum(at::vec::maximum(m0, m1), at::vec::maximum(m2, m3));
  return at::vec::vec_reduce_all<acc_t>([](Vec& p, Vec& q) { return at::vec::maximum(p, q); }, m);
}

// p[0:n] = v with vector stores (std::fill here compiled to a scalar loop, and
// a causal row's masked half is as long as its visible one).
template <typename T>
void fill_row(T* p, int64_t n, T v) {
  using Vec = at::vec::Vectorized<T>;
  const Vec vv(v);
  int64_t k = 0;
  for (; k + Vec::size() <= n; k += Vec::size()) vv.store(p + k);
  if (k < n) {
    if (n >= Vec::size()) vv.store(p + n - Vec::size()); else vv.store(p + k, n - k);
  }
}

struct RowIndex {
  int64_t b, h, i;
};

inline RowIndex split_row(const SoftmaxArgs& a, int64_t r) {
  const int64_t t = r / a.Tq;
  return {t / a.H, t % a.H, r % a.Tq};
}

// Offset of row ix in a tensor with strides s over (B, H, Tq).
inline int64_t row_offset(const int64_t* s, const RowIndex& ix) {
  return ix.b * s[0] + ix.h * s[1] + ix.i * s[2];
}

// For the rows [r0, r1) of the contiguous output `out`, in order: writes
// `masked` before the visible interval [lo, hi), calls body(r, ix, lo, hi, o)
// (o: the output row) when the interval is not empty, then writes `masked`
// after it: each output row is written in address order, which the hardware
// prefetchers follow as a stream. Before a row's body, prefetch(r + 1, ix, lo,
// hi) gets the next row when the reads jump to it. The row index advances
// without divides, and the bounds are computed once per batch element when
// they do not depend on the query (a padding mask: ~60 instructions a row).
template <typename T, typename P, typename F>
void for_each_row(const SoftmaxArgs& a, int64_t r0, int64_t r1, T* out, T masked, P&& prefetch,
                  F&& body) {
  RowIndex ix = split_row(a, r0);
  int64_t lo, hi;
  row_bounds(a.spec, ix.b, ix.i, lo, hi);
  const bool alike = rows_alike(a.spec);
  for (int64_t r = r0; r < r1; ++r) {
    RowIndex nx = ix;
    int64_t nlo = 0, nhi = 0;
    if (r + 1 < r1) {
      if (++nx.i == a.Tq) {
        nx.i = 0;
        if (++nx.h == a.H) {
          nx.h = 0;
          ++nx.b;
        }
      }
      if (alike && nx.b == ix.b) {
        nlo = lo;
        nhi = hi;
      } else {
        row_bounds(a.spec, nx.b, nx.i, nlo, nhi);
      }
      // Only where the read stream jumps (masked keys between this row's last
      // visible key and the next row's first): full rows stream on their own,
      // and prefetching them only competes with their loads.
      if (nhi > nlo && (hi < a.Tk || nlo > 0)) prefetch(r + 1, nx, nlo, nhi);
    }
    T* o = out + r * a.Tk;
    fill_row(o, lo, masked);
    if (hi > lo) body(r, ix, lo, hi, o);
    fill_row(o + hi, a.Tk - hi, masked);
    ix = nx;
    lo = nlo;
    hi = nhi;
  }
}

// LOG: log-softmax. Its masked positions (and fully masked rows) are
// finfo(dtype).min, so exp() of them is exactly 0, as in the softmax.
template <typename scalar_t, bool LOG>
void softmax_forward_kernel(const SoftmaxArgs& a) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  const auto* x = static_cast<const scalar_t*>(a.x);
  const auto* bias = static_cast<const scalar_t*>(a.bias);
  const auto* sinks = static_cast<const acc_t*>(a.sinks);
  auto* out = static_cast<scalar_t*>(a.out);
  const acc_t scale = static_cast<acc_t>(a.scale);
  const acc_t softcap = static_cast<acc_t>(a.softcap);
  const acc_t inv_cap = a.softcap > 0 ? static_cast<acc_t>(1.0 / a.softcap) : acc_t(0);
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  // -inf and finfo(dtype).min in the bias mean "masked" (additive-mask convention).
  const acc_t bias_min = static_cast<acc_t>(std::numeric_limits<scalar_t>::lowest());
  const scalar_t masked = LOG ? std::numeric_limits<scalar_t>::lowest() : scalar_t(0);
  const int64_t Tk = a.Tk;

  // Without softcap, bias and mask a row's scores are scale * x: they are
  // read from x (converted, for fp16/bf16) instead of being copied into z first.
  const bool direct = !(softcap > acc_t(0)) && bias == nullptr && a.mask == nullptr;

  at::parallel_for(0, a.rows(), row_grain(Tk), [&](int64_t r0, int64_t r1) {
    const size_t conv = std::is_same_v<scalar_t, acc_t> ? 0 : Tk;
    std::vector<acc_t> zbuf(Tk), cbuf(conv), bbuf(bias != nullptr ? conv : 0);
    auto prefetch = [&](int64_t, const RowIndex& ix, int64_t lo, int64_t hi) {
      prefetch_row(x + row_offset(a.xs, ix) + lo, hi - lo);
    };
    auto row = [&](int64_t, const RowIndex& ix, int64_t lo, int64_t hi, scalar_t* o) {
      const int64_t n = hi - lo;
      acc_t* z = zbuf.data();
      const acc_t* xa = to_acc(x + row_offset(a.xs, ix) + lo, cbuf.data(), n);
      // The row's scores are zs[k] * s.
      const acc_t* zs = xa;
      acc_t s = scale;
      acc_t mx;
      if (direct) {
        mx = scale_max<false>(xa, z, n, scale);
      } else {
        mx = scale_max<true>(xa, z, n, scale);
        zs = z;
        s = acc_t(1);
        if (softcap > acc_t(0)) {  // z = softcap * tanh(z / softcap): monotonic, so the max maps too
          at::vec::map([softcap, inv_cap](Vec v) { return (v * Vec(inv_cap)).tanh() * Vec(softcap); },
                       z, z, n);
          mx = softcap * std::tanh(mx * inv_cap);
        }
        if (bias != nullptr) {
          const int64_t bo = row_offset(a.bs, ix);
          if (a.bs[3] == 1) {  // a bias row in memory: vector adds
            at::vec::map2([bias_min, neg_inf](Vec zv, Vec bv) {
              return Vec::blendv(zv + bv, Vec(neg_inf), bv <= Vec(bias_min));
            }, z, z, to_acc(bias + bo + lo, bbuf.data(), n), n);
          } else {
            for (int64_t k = 0; k < n; ++k) {
              const acc_t bv = static_cast<acc_t>(bias[bo + (lo + k) * a.bs[3]]);
              z[k] = bv <= bias_min ? neg_inf : z[k] + bv;
            }
          }
        }
        if (a.mask != nullptr) {
          const bool* mr = a.mask + row_offset(a.ms, ix);
          for (int64_t k = 0; k < n; ++k) {
            if (!mr[(lo + k) * a.ms[3]]) z[k] = neg_inf;
          }
        }
        if (bias != nullptr || a.mask != nullptr) mx = scale_max<false>(z, z, n, acc_t(1));
      }
      if (mx == neg_inf) {  // every visible key masked (by mask/bias, or -inf scores)
        fill_row(o + lo, hi - lo, masked);
        return;
      }
      // The sink joins the normaliser as one more score (a NaN one poisons the row).
      acc_t sink = neg_inf;
      if (sinks != nullptr) {
        sink = sinks[row_offset(a.ss, ix)];
        if (sink > mx || sink != sink) mx = sink;
      }
      if (!(mx < -neg_inf)) {
        // A NaN or +inf score: as torch.softmax, every visible output is NaN;
        // masked positions (-inf here) keep the masked value, as always. The
        // CUDA kernels follow the same rule (DESIGN.md §2, NaN).
        for (int64_t k = 0; k < n; ++k) {
          o[lo + k] = zs[k] * s == neg_inf ? masked : std::numeric_limits<scalar_t>::quiet_NaN();
        }
        return;
      }
      const acc_t sink_exp = sinks != nullptr ? std::exp(sink - mx) : acc_t(0);
      if constexpr (LOG) {
        const acc_t lse = mx + std::log(exp_sum<false>(zs, z, n, s, mx) + sink_exp);
        // -inf (masked) and anything below finfo.min become finfo.min.
        store_mapped(zs, o + lo, n, z, [s, lse, bias_min](Vec v) {
          return at::vec::maximum(at::vec::fmsub(v, Vec(s), Vec(lse)), Vec(bias_min));
        });
      } else {
        // exp straight into the output row when it holds acc_t, else into z
        acc_t* e = z;
        if constexpr (std::is_same_v<scalar_t, acc_t>) e = o + lo;
        const acc_t inv = acc_t(1) / (exp_sum<true>(zs, e, n, s, mx) + sink_exp);
        store_mapped(e, o + lo, n, z, [inv](Vec v) { return v * Vec(inv); });
      }
    };
    for_each_row(a, r0, r1, out, masked, prefetch, row);
  });
}

// The backward's formulas on vectors V of the accumulation type, one place for
// both row paths: a position's share of the row sum, and its gradient.
// Softmax: y * dy, and scale * y * (dy - dot). LOG (y = log-softmax): dy, and
// scale * (dy - exp(y) * dot), both 0 where y == finfo.min (vmin: masked).
template <bool LOG, typename V>
inline V backward_term(V yv, V gv, V vmin) {
  if constexpr (LOG) {
    return gv & (yv != vmin);
  } else {
    return yv * gv;
  }
}

template <bool LOG, typename V>
inline V backward_grad(V yv, V gv, V dot, V scale, V vmin) {
  if constexpr (LOG) {
    return ((gv - exp_nonpos(yv) * dot) * scale) & (yv != vmin);
  } else {
    return yv * (gv - dot) * scale;
  }
}

// One row of the backward below for fp16/bf16, converting vectors to fp32 in
// registers (two passes over y and dy, no row buffers); `gap` masked keys
// follow the row (bridge_gap).
template <typename scalar_t, bool LOG>
void backward_row_reduced(const scalar_t* y, const scalar_t* g, scalar_t* o, int64_t n,
                          int64_t gap, float scale) {
  using bVec = at::vec::Vectorized<scalar_t>;
  using fVec = at::vec::Vectorized<float>;
  const float lowest = static_cast<float>(std::numeric_limits<scalar_t>::lowest());
  const fVec vmin(lowest);
  auto term = [&](fVec yv, fVec gv) { return backward_term<LOG>(yv, gv, vmin); };
  fVec acc0(0.f), acc1(0.f);
  int64_t k = 0;
  for (; k + bVec::size() <= n; k += bVec::size()) {
    auto [y0, y1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(y + k));
    auto [g0, g1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(g + k));
    acc0 = acc0 + term(y0, g0);
    acc1 = acc1 + term(y1, g1);
  }
  float dot = at::vec::vec_reduce_all<float>([](fVec& p, fVec& q) { return p + q; }, acc0 + acc1);
  const int64_t body = k;
  for (; k < n; ++k) {
    const float yv = static_cast<float>(y[k]), gv = static_cast<float>(g[k]);
    dot += LOG ? (yv != lowest ? gv : 0.f) : yv * gv;
  }
  bridge_gap(y + n, gap);
  bridge_gap(g + n, gap);
  const fVec vdot(dot), vscale(scale);
  auto grad = [&](fVec yv, fVec gv) { return backward_grad<LOG>(yv, gv, vdot, vscale, vmin); };
  for (k = 0; k < body; k += bVec::size()) {
    auto [y0, y1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(y + k));
    auto [g0, g1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(g + k));
    at::vec::convert_from_float<scalar_t>(grad(y0, g0), grad(y1, g1)).store(o + k);
  }
  for (; k < n; ++k) {
    const float yv = static_cast<float>(y[k]), gv = static_cast<float>(g[k]);
    o[k] = static_cast<scalar_t>(LOG ? (yv != lowest ? scale * (gv - std::exp(yv) * dot) : 0.f)
                                     : scale * yv * (gv - dot));
  }
}

// Softmax: dx = scale * y * (dy - sum(dy * y)) on the visible interval.
// LOG (y = log-softmax): dx = scale * (dy - exp(y) * sum(dy)), with the sum and
// dx over the positions where y != finfo.min (the unmasked ones). 0 elsewhere.
// y is a log-probability (<= 0), so exp_nonpos applies.
template <typename scalar_t, bool LOG>
void softmax_backward_kernel(const SoftmaxArgs& a) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  const auto* dy = static_cast<const scalar_t*>(a.x);
  const auto* y = static_cast<const scalar_t*>(a.y);
  auto* dx = static_cast<scalar_t*>(a.out);
  const acc_t scale = static_cast<acc_t>(a.scale);
  const int64_t Tk = a.Tk;

  at::parallel_for(0, a.rows(), row_grain(Tk), [&](int64_t r0, int64_t r1) {
    // No prefetch of the next row here (the backward does too little work per
    // byte to hide one: 8x8x512x512 fp32 padded, 2 threads, 17.3 ms with it,
    // 15.1 without); each row bridges its own masked tail instead (bridge_gap).
    auto no_prefetch = [](int64_t, const RowIndex&, int64_t, int64_t) {};
    auto row = [&](int64_t r, const RowIndex& ix, int64_t lo, int64_t hi, scalar_t* o) {
      const int64_t n = hi - lo;
      const scalar_t* yr = y + r * Tk + lo;
      const scalar_t* gr = dy + row_offset(a.xs, ix) + lo;
      if constexpr (at::is_reduced_floating_point_v<scalar_t>) {
        backward_row_reduced<scalar_t, LOG>(yr, gr, o + lo, n, Tk - hi, scale);
      } else {  // fp32 / fp64: acc_t is scalar_t, no conversion
        const Vec vmin(std::numeric_limits<scalar_t>::lowest());
        const Vec vdot(sum2(yr, gr, n, [vmin](Vec p, Vec q) { return backward_term<LOG>(p, q, vmin); }));
        bridge_gap(yr + n, Tk - hi);  // after the first pass: where the streams stand
        bridge_gap(gr + n, Tk - hi);
        const Vec vscale(scale);
        auto grad = [vdot, vscale, vmin](Vec yv, Vec gv) {
          return backward_grad<LOG>(yv, gv, vdot, vscale, vmin);
        };
        map2_row(grad, o + lo, yr, gr, n);
      }
    };
    for_each_row(a, r0, r1, dx, scalar_t(0), no_prefetch, row);
  });
}

template <bool LOG>
at::Tensor forward_cpu(const at::Tensor& x, const std::optional<at::Tensor>& mask,
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
  advise_huge_pages(p.out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_softmax",
                                  [&] { softmax_forward_kernel<scalar_t, LOG>(p.args); });
  return p.out;
}

template <bool LOG>
at::Tensor backward_cpu(const at::Tensor& grad_out, const at::Tensor& out,
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
  advise_huge_pages(p.out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "masked_softmax_backward",
                                  [&] { softmax_backward_kernel<scalar_t, LOG>(p.args); });
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CPU, m) {
  m.impl("masked_softmax", &forward_cpu<false>);
  m.impl("masked_softmax_backward", &backward_cpu<false>);
  m.impl("masked_log_softmax", &forward_cpu<true>);
  m.impl("masked_log_softmax_backward", &backward_cpu<true>);
}

}  // namespace maskext
