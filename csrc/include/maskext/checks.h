// Host-side argument checks and problem setup shared by the CPU and CUDA
// implementations, so both give the same messages (DESIGN.md §3).
#pragma once
#include <ATen/core/Tensor.h>
#include <optional>

#include "maskext/row_bounds.h"

namespace maskext {

// Every tensor argument of an op must be on the device of its data (`ref`,
// named `ref_name`): kernels take raw pointers, so a tensor elsewhere would be
// read as if it were on the kernel's device. maskext/ops.py holds the same check
// for the fake (meta) implementations, with the same message.
void check_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                  const at::Tensor& ref);

// `lengths` must be a 1-D int32/int64 tensor of shape [B] on the device of
// `data` (named `data_name`). Negative values are an error (unless
// `allow_negative`); they are looked for on CPU tensors only, since on CUDA that
// would cost a host sync (the kernels clamp them to 0).
void check_lengths(const char* op, const char* name, const at::Tensor& lengths,
                   int64_t B, const char* B_desc, const char* data_name, const at::Tensor& data,
                   bool allow_negative = false);

// Error unless window values are -1 (unbounded) or >= 0.
void check_window(const char* op, int64_t window_left, int64_t window_right);

// The whole mask description of the schemas: what row_bounds() turns into
// [lo, hi) per row. maskext/ops.py (_mask_args) builds the same list from a
// MaskSpec or the keywords.
struct MaskDesc {
  std::optional<at::Tensor> lengths, q_lengths;
  bool left_pad = false;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;  // -1 = unbounded
  std::optional<at::Tensor> q_offset;          // [B], or
  std::optional<int64_t> q_offset_value;       // an int (none: k_len - q_len)
  std::optional<at::Tensor> segment_ids;       // [B, k_len]
  int64_t chunk = 0;                           // 0 = none
  std::optional<at::Tensor> prefix_lengths;    // [B], or
  int64_t prefix_value = 0;                    // an int (0 = none)
  // Anything that needs a query dim (all but lengths and left_pad).
  bool uses_queries() const {
    return causal || window_left >= 0 || window_right >= 0 || q_lengths || q_offset ||
           q_offset_value || segment_ids || chunk != 0 || prefix_lengths || prefix_value != 0;
  }
  bool has_prefix() const { return prefix_lengths.has_value() || prefix_value > 0; }
};

// The schema's mask arguments, in their order, as a MaskDesc.
MaskDesc mask_desc(const std::optional<at::Tensor>& lengths,
                   const std::optional<at::Tensor>& q_lengths, bool causal, int64_t window_left,
                   int64_t window_right, const std::optional<at::Tensor>& q_offset,
                   std::optional<int64_t> q_offset_value,
                   const std::optional<at::Tensor>& segment_ids, int64_t chunk,
                   const std::optional<at::Tensor>& prefix_lengths, int64_t prefix_value);

// Checks every part of `d` for a problem of B (named `B_desc`) batch elements
// and k_len keys, with data `data` (named `data_name`, for devices).
void check_mask_desc(const char* op, const MaskDesc& d, int64_t B, const char* B_desc,
                     int64_t k_len, const char* k_desc, const char* data_name,
                     const at::Tensor& data);

// The (contiguous) tensors a RowSpec points into; keep it alive as long as the
// spec is used.
struct HeldLengths {
  at::Tensor lengths, q_lengths, q_offset, segment_ids, prefix_lengths;
};

// The one place that builds the kernels' row description for a (B, q_len, k_len)
// problem from a (checked) MaskDesc. Tensors of any strides are accepted:
// contiguous copies, when needed, go into `held`.
RowSpec make_row_spec(const MaskDesc& d, int64_t q_len, int64_t k_len, HeldLengths& held);

// (B, ..., Tq, Tk) viewed as (B, H, Tq, Tk): a view whenever the middle dims
// can be merged, a copy otherwise. 2-D (B, Tk) becomes (B, 1, 1, Tk).
at::Tensor as_4d(const at::Tensor& t);

// Everything a masked-softmax kernel (forward or backward) needs, as plain data.
struct SoftmaxArgs {
  RowSpec spec;
  int64_t B = 0, H = 0, Tq = 0, Tk = 0;
  const void* x = nullptr;  // forward: scores; backward: grad of the output
  int64_t xs[3] = {0, 0, 0};  // strides of x over (B, H, Tq); last stride is 1
  const void* y = nullptr;  // backward only: the forward output, contiguous
  void* out = nullptr;      // contiguous (B, H, Tq, Tk)
  const bool* mask = nullptr;  // optional, broadcast strides
  int64_t ms[4] = {0, 0, 0, 0};
  const void* bias = nullptr;  // optional, x's dtype, broadcast strides
  int64_t bs[4] = {0, 0, 0, 0};
  double scale = 1.0;
  double softcap = 0.0;  // forward only: > 0 scores become softcap * tanh(scale * x / softcap)
  // Forward only, optional: one extra logit per row (acc dtype: float, or double
  // for double x), broadcast strides over (B, H, Tq).
  const void* sinks = nullptr;
  int64_t ss[3] = {0, 0, 0};
  MASKEXT_HD int64_t rows() const { return B * H * Tq; }
};

// Checked, canonicalised inputs: the tensors stay alive as long as this does.
struct SoftmaxProblem {
  at::Tensor out, x4, y4, mask4, bias4, sinks4;
  HeldLengths held;
  SoftmaxArgs args;
};

// `op` names the op in error messages (masked_softmax or masked_log_softmax).
SoftmaxProblem prepare_softmax_forward(
    const char* op, const at::Tensor& x, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& bias, const MaskDesc& desc, double scale,
    double softcap = 0.0, const std::optional<at::Tensor>& sinks = std::nullopt);

SoftmaxProblem prepare_softmax_backward(
    const char* op, const at::Tensor& grad_out, const at::Tensor& out, const MaskDesc& desc,
    double scale);

// Interval-mask materialisation (lengths_to_mask, attention_mask): rows of
// `out` (rows x cols, contiguous) get `keep` inside [lo, hi) and `masked`
// outside, with row r = (b = r / q_len, i = r % q_len).
struct IntervalMaskArgs {
  RowSpec spec;
  int64_t rows = 0, cols = 0;
  void* out = nullptr;
  double keep = 1.0, masked = 0.0;
};

struct IntervalMaskProblem {
  at::Tensor out;
  HeldLengths held;
  IntervalMaskArgs args;
};

IntervalMaskProblem prepare_lengths_to_mask(const at::Tensor& lengths,
                                            std::optional<int64_t> max_len, bool left_pad,
                                            bool padding, at::ScalarType dtype);

IntervalMaskProblem prepare_attention_mask(const at::Tensor& lengths, const MaskDesc& desc,
                                           int64_t q_len, int64_t k_len, at::ScalarType dtype);

// Data padded along `dim` (B, ..., T, ...), viewed contiguous as (B, M, T, I):
// M = the dims between the batch and `dim`, I = the dims after it.
// spec: lengths and left_pad only, q_len 1, k_len T, so that the real steps
// row_bounds(spec, b, 0) are length_bounds(spec, b).
struct PaddedArgs {
  RowSpec spec;
  int64_t B = 0, M = 0, T = 0, I = 0;
  const void* x = nullptr;
  void* out = nullptr;
};

struct PaddedProblem {
  at::Tensor x4;  // contiguous x
  HeldLengths held;
  PaddedArgs args;
};

// `x_name` names x in messages ("x", or "logits" for the soft masks).
PaddedProblem prepare_padded(const char* op, const at::Tensor& x, const at::Tensor& lengths,
                             int64_t dim, bool left_pad, const char* x_name = "x");

// Soft masks / gating: logits (B, T, ...) viewed as (B, 1, T, F), lengths along
// dim 1 (optional); x, when given, must match logits and is made contiguous.
struct GateProblem {
  PaddedProblem logits;
  at::Tensor x;  // contiguous x, or undefined
};

GateProblem prepare_gate(const char* op, const std::optional<at::Tensor>& x,
                         const at::Tensor& logits, const std::optional<at::Tensor>& lengths,
                         const at::Tensor* grad = nullptr);

// Pooling over the real steps: mode 0 sum, 1 mean, 2 max.
enum class PoolMode : int64_t { Sum = 0, Mean = 1, Max = 2 };

PaddedProblem prepare_pool(const at::Tensor& x, const at::Tensor& lengths, int64_t dim,
                           int64_t mode);

void check_mask_to_lengths(const at::Tensor& mask);

// x viewed as (B, T, F): dim moved to 1, the rest flattened (copy if needed).
at::Tensor prepare_lengths_from_padded(const at::Tensor& x, int64_t dim);

}  // namespace maskext
