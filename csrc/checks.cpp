#include "maskext/checks.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <algorithm>
#include <limits>
#include <string>

namespace maskext {
namespace {

bool is_float_type(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// True when a tensor of shape `from` broadcasts to `to` (numpy rules).
bool broadcasts_to(at::IntArrayRef from, at::IntArrayRef to) {
  if (from.size() > to.size()) return false;
  const size_t off = to.size() - from.size();
  for (size_t d = 0; d < from.size(); ++d) {
    if (from[d] != 1 && from[d] != to[d + off]) return false;
  }
  return true;
}

}  // namespace

void check_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                  const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), "maskext::", op, ": ", name,
              " must be on the same device as ", ref_name, " (", ref.device(), "), got ",
              t.device());
}

void check_lengths(const char* op, const char* name, const at::Tensor& lengths,
                   int64_t B, const char* B_desc, const char* data_name, const at::Tensor& data,
                   bool allow_negative) {
  TORCH_CHECK(lengths.scalar_type() == at::kInt || lengths.scalar_type() == at::kLong,
              "maskext::", op, ": ", name, " must be an integer tensor (int32 or int64), got ",
              lengths.scalar_type());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B, "maskext::", op, ": ", name,
              " must have shape [B] with B = ", B_desc, " = ", B, ", got ", lengths.sizes());
  check_device(op, name, lengths, data_name, data);
  if (!allow_negative && lengths.device().is_cpu()) {  // a plain loop: cheaper than a reduction op
    const at::Tensor c = lengths.contiguous();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t v = load_length(c.data_ptr(), c.scalar_type() == at::kLong, b);
      TORCH_CHECK(v >= 0, "maskext::", op, ": ", name, " must be >= 0, got a value of ", v);
    }
  }
}

void check_window(const char* op, int64_t window_left, int64_t window_right) {
  TORCH_CHECK(window_left >= -1 && window_right >= -1, "maskext::", op,
              ": window values must be >= 0 (or -1 for unbounded), got (", window_left, ", ",
              window_right, ")");
}

MaskDesc mask_desc(const std::optional<at::Tensor>& lengths,
                   const std::optional<at::Tensor>& q_lengths, bool causal, int64_t window_left,
                   int64_t window_right, const std::optional<at::Tensor>& q_offset,
                   std::optional<int64_t> q_offset_value,
                   const std::optional<at::Tensor>& segment_ids, int64_t chunk,
                   const std::optional<at::Tensor>& prefix_lengths, int64_t prefix_value) {
  MaskDesc d;
  d.lengths = lengths;
  d.q_lengths = q_lengths;
  d.causal = causal;
  d.window_left = window_left;
  d.window_right = window_right;
  d.q_offset = q_offset;
  d.q_offset_value = q_offset_value;
  d.segment_ids = segment_ids;
  d.chunk = chunk;
  d.prefix_lengths = prefix_lengths;
  d.prefix_value = prefix_value;
  return d;
}

void check_mask_desc(const char* op, const MaskDesc& d, int64_t B, const char* B_desc,
                     int64_t k_len, const char* k_desc, const char* data_name,
                     const at::Tensor& data) {
  check_window(op, d.window_left, d.window_right);
  if (d.lengths) check_lengths(op, "lengths", *d.lengths, B, B_desc, data_name, data);
  if (d.q_lengths) check_lengths(op, "q_lengths", *d.q_lengths, B, B_desc, data_name, data);
  TORCH_CHECK(!(d.q_offset && d.q_offset_value), "maskext::", op,
              ": q_offset must be given as a tensor or as an int, not both");
  if (d.q_offset) check_lengths(op, "q_offset", *d.q_offset, B, B_desc, data_name, data, true);
  TORCH_CHECK(d.chunk >= 0, "maskext::", op, ": chunk must be > 0 (or 0 for none), got ", d.chunk);
  TORCH_CHECK(d.prefix_value >= 0, "maskext::", op, ": prefix_lengths must be >= 0, got ",
              d.prefix_value);
  TORCH_CHECK(!(d.prefix_lengths && d.prefix_value != 0), "maskext::", op,
              ": prefix_lengths must be given as a tensor or as an int, not both");
  if (d.prefix_lengths) {
    check_lengths(op, "prefix_lengths", *d.prefix_lengths, B, B_desc, data_name, data);
  }
  TORCH_CHECK(!d.has_prefix() || (d.window_left < 0 && d.chunk == 0), "maskext::", op,
              ": prefix_lengths cannot be combined with a left-bounded window or a chunk (the "
              "visible keys could be two intervals), got window left = ", d.window_left,
              ", chunk = ", d.chunk);
  if (d.segment_ids) {
    const at::Tensor& s = *d.segment_ids;
    TORCH_CHECK(s.scalar_type() == at::kInt || s.scalar_type() == at::kLong, "maskext::", op,
                ": segment_ids must be an integer tensor (int32 or int64), got ", s.scalar_type());
    TORCH_CHECK(s.dim() == 2 && s.size(0) == B && s.size(1) == k_len, "maskext::", op,
                ": segment_ids must have shape [B, Tk] with B = ", B_desc, " = ", B,
                " and Tk = ", k_desc, " = ", k_len, ", got ", s.sizes());
    check_device(op, "segment_ids", s, data_name, data);
    if (s.device().is_cpu()) {  // non-decreasing along the keys (not looked for on CUDA: a sync)
      const at::Tensor c = s.contiguous();
      const bool is64 = c.scalar_type() == at::kLong;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 1; j < k_len; ++j) {
          const int64_t u = load_length(c.data_ptr(), is64, b * k_len + j - 1);
          const int64_t v = load_length(c.data_ptr(), is64, b * k_len + j);
          TORCH_CHECK(u <= v, "maskext::", op,
                      ": segment_ids must be non-decreasing along the keys, got ", u, " then ",
                      v, " at [", b, ", ", j - 1, ":", j + 1, "]");
        }
      }
    }
  }
}

RowSpec make_row_spec(const MaskDesc& d, int64_t q_len, int64_t k_len, HeldLengths& held) {
  RowSpec s;
  // The kernels index these tensors directly: they must be contiguous.
  auto hold = [](const std::optional<at::Tensor>& t, at::Tensor& slot, const void*& ptr,
                 bool& is64) {
    if (!t) return;
    slot = t->contiguous();
    ptr = slot.data_ptr();
    is64 = slot.scalar_type() == at::kLong;
  };
  hold(d.lengths, held.lengths, s.lengths, s.lengths64);
  hold(d.q_lengths, held.q_lengths, s.q_lengths, s.q_lengths64);
  hold(d.q_offset, held.q_offset, s.q_offset, s.q_offset64);
  hold(d.segment_ids, held.segment_ids, s.segment_ids, s.segment_ids64);
  hold(d.prefix_lengths, held.prefix_lengths, s.prefix, s.prefix64);
  s.left_pad = d.left_pad;
  s.causal = d.causal;
  // A window side of q_len + k_len or more already reaches past the row when
  // the query's key position p is in [k_len - q_len, k_len) (the default
  // offset); clamping keeps p - left and p + right + 1 in row_bounds() far from
  // int64 overflow, which window=(None, sys.maxsize) would otherwise cause
  // (undefined behaviour). With a q_offset, p can be anywhere in
  // [-kPosMax, kPosMax + q_len]: a side past kPosMax + q_len + k_len reaches
  // past the row from there too.
  const bool offset = d.q_offset || d.q_offset_value;
  const int64_t side_max = offset ? kPosMax + 2 * (q_len + k_len) : q_len + k_len;
  s.window_left = d.window_left < 0 ? -1 : std::min(d.window_left, side_max);
  s.window_right = d.window_right < 0 ? -1 : std::min(d.window_right, side_max);
  s.q_len = q_len;
  s.k_len = k_len;
  s.q_offset_value = d.q_offset_value ? clamp_i64(*d.q_offset_value, -kPosMax, kPosMax)
                                      : k_len - q_len;
  s.chunk = std::min(d.chunk, kPosMax);
  s.prefix_value = d.prefix_value;
  return s;
}

at::Tensor as_4d(const at::Tensor& t) {
  switch (t.dim()) {
    case 2: return t.unsqueeze(1).unsqueeze(1);
    case 3: return t.unsqueeze(1);
    case 4: return t;
    default: return t.flatten(1, t.dim() - 3);
  }
}

namespace {

// Shared by forward and backward: the row layout of the (B, ..., Tq, Tk) data.
void fill_layout(const char* op, const at::Tensor& data, const MaskDesc& desc,
                 const char* data_name, SoftmaxProblem& p) {
  TORCH_CHECK(is_float_type(data.scalar_type()), "maskext::", op, ": ", data_name,
              " must be float16, bfloat16, float32 or float64, got ", data.scalar_type());
  TORCH_CHECK(data.dim() >= 2, "maskext::", op, ": ", data_name,
              " must have shape (B, Tk) or (B, ..., Tq, Tk), got ", data.sizes());
  TORCH_CHECK(!desc.uses_queries() || data.dim() >= 3, "maskext::", op,
              ": causal, window, q_lengths, q_offset, segment_ids, chunk and prefix_lengths "
              "need a query dim, (B, ..., Tq, Tk); got a 2-D ", data_name, " of shape ",
              data.sizes());
  const std::string B_desc = std::string(data_name) + ".size(0)";
  const std::string k_desc = std::string(data_name) + ".size(-1)";
  check_mask_desc(op, desc, data.size(0), B_desc.c_str(), data.size(-1), k_desc.c_str(),
                  data_name, data);

  p.x4 = as_4d(data.stride(-1) == 1 ? data : data.contiguous());
  SoftmaxArgs& a = p.args;
  a.B = p.x4.size(0);
  a.H = p.x4.size(1);
  a.Tq = p.x4.size(2);
  a.Tk = p.x4.size(3);
  if (p.x4.stride(3) != 1) p.x4 = p.x4.contiguous();  // size-1 flatten corner cases
  for (int d = 0; d < 3; ++d) a.xs[d] = p.x4.stride(d);
  a.x = p.x4.data_ptr();
  a.spec = make_row_spec(desc, a.Tq, a.Tk, p.held);
  p.out = at::empty(data.sizes(), data.options().memory_format(at::MemoryFormat::Contiguous));
  a.out = p.out.data_ptr();
}

}  // namespace

SoftmaxProblem prepare_softmax_forward(
    const char* op, const at::Tensor& x, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& bias, const MaskDesc& desc, double scale, double softcap,
    const std::optional<at::Tensor>& sinks) {
  SoftmaxProblem p;
  fill_layout(op, x, desc, "x", p);
  SoftmaxArgs& a = p.args;
  a.scale = scale;
  TORCH_CHECK(softcap >= 0.0, "maskext::", op, ": softcap must be > 0 (or 0 for none), got ",
              softcap);
  a.softcap = softcap;
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, "maskext::", op,
                ": mask must be a bool tensor (True = keep), got ", mask->scalar_type());
    TORCH_CHECK(broadcasts_to(mask->sizes(), x.sizes()), "maskext::", op, ": mask of shape ",
                mask->sizes(), " does not broadcast to x of shape ", x.sizes());
    check_device(op, "mask", *mask, "x", x);
    p.mask4 = as_4d(mask->expand(x.sizes()));
    a.mask = p.mask4.data_ptr<bool>();
    for (int d = 0; d < 4; ++d) a.ms[d] = p.mask4.stride(d);
  }
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "maskext::", op,
                ": bias must have x's dtype ", x.scalar_type(), ", got ", bias->scalar_type());
    TORCH_CHECK(broadcasts_to(bias->sizes(), x.sizes()), "maskext::", op, ": bias of shape ",
                bias->sizes(), " does not broadcast to x of shape ", x.sizes());
    check_device(op, "bias", *bias, "x", x);
    p.bias4 = as_4d(bias->expand(x.sizes()));
    a.bias = p.bias4.data_ptr();
    for (int d = 0; d < 4; ++d) a.bs[d] = p.bias4.stride(d);
  }
  if (sinks) {
    TORCH_CHECK(is_float_type(sinks->scalar_type()), "maskext::", op,
                ": sinks must be float16, bfloat16, float32 or float64, got ",
                sinks->scalar_type());
    const auto rows = x.sizes().slice(0, x.dim() - 1);
    TORCH_CHECK(broadcasts_to(sinks->sizes(), rows), "maskext::", op, ": sinks of shape ",
                sinks->sizes(), " does not broadcast to x.shape[:-1] = ", rows);
    check_device(op, "sinks", *sinks, "x", x);
    // Converted while still small (e.g. one per head), then broadcast by strides
    // (a trailing size-1 key dim makes it x-shaped for as_4d; if flattening the
    // middle dims must copy, the copy is one value per row, not per score).
    const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    p.sinks4 = as_4d(sinks->to(acc).expand(rows).unsqueeze(-1));
    a.sinks = p.sinks4.data_ptr();
    for (int d = 0; d < 3; ++d) a.ss[d] = p.sinks4.stride(d);
  }
  return p;
}

SoftmaxProblem prepare_softmax_backward(
    const char* op, const at::Tensor& grad_out, const at::Tensor& out, const MaskDesc& desc,
    double scale) {
  check_device(op, "grad_out", grad_out, "out", out);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && grad_out.scalar_type() == out.scalar_type(),
              "maskext::", op, ": grad_out must match out (", out.sizes(), ", ",
              out.scalar_type(), "), got (", grad_out.sizes(), ", ", grad_out.scalar_type(), ")");
  SoftmaxProblem p;
  fill_layout(op, grad_out, desc, "grad_out", p);
  p.y4 = out.contiguous();
  p.args.y = p.y4.data_ptr();
  p.args.scale = scale;
  return p;
}

IntervalMaskProblem prepare_lengths_to_mask(const at::Tensor& lengths,
                                            std::optional<int64_t> max_len, bool left_pad,
                                            bool padding, at::ScalarType dtype) {
  const char* op = padding ? "lengths_to_padding_mask" : "lengths_to_mask";
  TORCH_CHECK(lengths.dim() == 1, "maskext::", op, ": lengths must be 1-D, got shape ",
              lengths.sizes());
  check_lengths(op, "lengths", lengths, lengths.size(0), "lengths.size(0)", "lengths", lengths);
  int64_t T = 0;
  if (max_len) {
    T = *max_len;
    TORCH_CHECK(T >= 0, "maskext::", op, ": max_len must be >= 0, got ", T);
  } else if (lengths.numel() > 0) {
    // One host sync: the output size depends on the data. Negative lengths are
    // checked here on every device, since the values are on the host anyway.
    auto [mn, mx] = at::aminmax(lengths);
    const at::Tensor both = at::stack({mn, mx}).to(at::kCPU, at::kLong);  // the one copy
    const int64_t lo = both[0].item<int64_t>();
    TORCH_CHECK(lo >= 0, "maskext::", op, ": lengths must be >= 0, got a value of ", lo);
    T = both[1].item<int64_t>();
  }
  IntervalMaskProblem p;
  p.out = at::empty({lengths.size(0), T}, lengths.options().dtype(dtype));
  MaskDesc d;
  d.lengths = lengths;
  d.left_pad = left_pad;
  p.args.spec = make_row_spec(d, 1, T, p.held);
  p.args.rows = lengths.size(0);
  p.args.cols = T;
  p.args.out = p.out.data_ptr();
  p.args.keep = padding ? 0.0 : 1.0;
  p.args.masked = padding ? 1.0 : 0.0;
  return p;
}

IntervalMaskProblem prepare_attention_mask(const at::Tensor& lengths, const MaskDesc& desc,
                                           int64_t q_len, int64_t k_len, at::ScalarType dtype) {
  const char* op = "attention_mask";
  TORCH_CHECK(lengths.dim() == 1, "maskext::", op, ": lengths must be 1-D, got shape ",
              lengths.sizes());
  const int64_t B = lengths.size(0);
  TORCH_CHECK(q_len >= 0 && k_len >= 0, "maskext::", op, ": q_len and k_len must be >= 0, got ",
              q_len, " and ", k_len);
  MaskDesc d = desc;
  d.lengths = lengths;
  check_mask_desc(op, d, B, "lengths.size(0)", k_len, "k_len", "lengths", lengths);
  TORCH_CHECK(dtype == at::kBool || is_float_type(dtype), "maskext::", op,
              ": dtype must be bool or a floating type, got ", dtype);
  IntervalMaskProblem p;
  p.out = at::empty({B, 1, q_len, k_len}, lengths.options().dtype(dtype));
  p.args.spec = make_row_spec(d, q_len, k_len, p.held);
  p.args.rows = B * q_len;
  p.args.cols = k_len;
  p.args.out = p.out.data_ptr();
  if (dtype == at::kBool) {
    p.args.keep = 1.0;
    p.args.masked = 0.0;
  } else {
    p.args.keep = 0.0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "finfo_min", [&] {
      p.args.masked = static_cast<double>(std::numeric_limits<scalar_t>::lowest());
    });
  }
  return p;
}

PaddedProblem prepare_padded(const char* op, const at::Tensor& x, const at::Tensor& lengths,
                             int64_t dim, bool left_pad, const char* x_name) {
  TORCH_CHECK(x.dim() >= 2, "maskext::", op, ": ", x_name,
              " must have a batch dim and a time dim, got shape ", x.sizes());
  const int64_t d = dim < 0 ? dim + x.dim() : dim;
  TORCH_CHECK(d >= 1 && d < x.dim(), "maskext::", op, ": dim must be in [1, ", x.dim(),
              ") (dim 0 is the batch), got ", dim);
  const std::string B_desc = std::string(x_name) + ".size(0)";
  check_lengths(op, "lengths", lengths, x.size(0), B_desc.c_str(), x_name, x);
  PaddedProblem p;
  p.x4 = x.contiguous();
  PaddedArgs& a = p.args;
  a.B = x.size(0);
  a.T = x.size(d);
  a.M = 1;
  for (int64_t k = 1; k < d; ++k) a.M *= x.size(k);
  a.I = 1;
  for (int64_t k = d + 1; k < x.dim(); ++k) a.I *= x.size(k);
  a.x = p.x4.data_ptr();
  MaskDesc md;
  md.lengths = lengths;
  md.left_pad = left_pad;
  a.spec = make_row_spec(md, 1, a.T, p.held);
  return p;
}

PaddedProblem prepare_pool(const at::Tensor& x, const at::Tensor& lengths, int64_t dim,
                           int64_t mode) {
  const char* op = "masked_pool";
  TORCH_CHECK(mode >= 0 && mode <= 2, "maskext::", op,
              ": mode must be 0 (sum), 1 (mean) or 2 (max), got ", mode);
  TORCH_CHECK(is_float_type(x.scalar_type()), "maskext::", op,
              ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  return prepare_padded(op, x, lengths, dim, false);
}

GateProblem prepare_gate(const char* op, const std::optional<at::Tensor>& x,
                         const at::Tensor& logits, const std::optional<at::Tensor>& lengths,
                         const at::Tensor* grad) {
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "maskext::", op,
              ": logits must be a floating tensor, got ", logits.scalar_type());
  TORCH_CHECK(logits.dim() >= 2, "maskext::", op, ": logits must be (B, T, ...), got shape ",
              logits.sizes());
  if (x) {
    check_device(op, "x", *x, "logits", logits);
    TORCH_CHECK(x->sizes() == logits.sizes() && x->scalar_type() == logits.scalar_type(),
                "maskext::", op, ": x must match logits (", logits.sizes(), ", ",
                logits.scalar_type(), "), got (", x->sizes(), ", ", x->scalar_type(), ")");
  }
  if (grad != nullptr) {
    check_device(op, "grad", *grad, "logits", logits);
    TORCH_CHECK(grad->sizes() == logits.sizes() && grad->scalar_type() == logits.scalar_type(),
                "maskext::", op, ": grad must match logits (", logits.sizes(), ", ",
                logits.scalar_type(), "), got (", grad->sizes(), ", ", grad->scalar_type(), ")");
  }
  GateProblem g;
  // Without lengths every step is real: a [B] tensor of T would cost an op, so
  // use a spec without lengths instead.
  if (lengths) {
    g.logits = prepare_padded(op, logits, *lengths, 1, false, "logits");
  } else {
    g.logits.x4 = logits.contiguous();
    PaddedArgs& a = g.logits.args;
    a.B = logits.size(0);
    a.M = 1;
    a.T = logits.size(1);
    a.I = logits.numel() / std::max<int64_t>(1, a.B * a.T);
    a.x = g.logits.x4.data_ptr();
    a.spec = make_row_spec(MaskDesc{}, 1, a.T, g.logits.held);
  }
  if (x) g.x = x->contiguous();
  return g;
}

void check_mask_to_lengths(const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2,
              "maskext::mask_to_lengths: mask must be a 2-D bool tensor (B, T), got ",
              mask.scalar_type(), " of shape ", mask.sizes());
}

at::Tensor prepare_lengths_from_padded(const at::Tensor& x, int64_t dim) {
  const char* op = "lengths_from_padded";
  TORCH_CHECK(x.dim() >= 2, "maskext::", op, ": x must have a batch dim and a time dim, got shape ",
              x.sizes());
  const int64_t d = dim < 0 ? dim + x.dim() : dim;
  TORCH_CHECK(d >= 1 && d < x.dim(), "maskext::", op, ": dim must be in [1, ", x.dim(),
              ") (dim 0 is the batch), got ", dim);
  at::Tensor t = x.movedim(d, 1);
  const int64_t B = t.size(0), T = t.size(1);
  int64_t F = 1;
  for (int64_t k = 2; k < t.dim(); ++k) F *= t.size(k);
  return t.reshape({B, T, F}).contiguous();
}

}  // namespace maskext
