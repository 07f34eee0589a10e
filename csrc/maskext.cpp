// The one schema block: every maskext op is declared here, once. CPU and CUDA
// implementations register against these schemas in csrc/cpu and csrc/cuda;
// fake (meta) implementations and autograd live in maskext/ops.py.
#include <torch/extension.h>

TORCH_LIBRARY(maskext, m) {
  // Masks from lengths (csrc/*/masks.*). The output sizes are SymInt, so that
  // torch.compile(dynamic=True) keeps max_len = x.size(1) symbolic instead of
  // recompiling for every length (the kernels take them as int64_t).
  m.def("lengths_to_mask(Tensor lengths, SymInt? max_len, bool left_pad, bool padding, "
        "ScalarType dtype) -> Tensor");
  m.def("attention_mask(Tensor lengths, Tensor? q_lengths, SymInt q_len, SymInt k_len, "
        "bool causal, int window_left, int window_right, ScalarType dtype) -> Tensor");
  m.def("mask_to_lengths(Tensor mask) -> Tensor");
  m.def("lengths_from_padded(Tensor x, Scalar pad_value, int dim) -> Tensor");
  // Masked softmax (csrc/*/softmax.*). window_* = -1 means unbounded.
  m.def("masked_softmax(Tensor x, Tensor? mask, Tensor? bias, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale) "
        "-> Tensor");
  m.def("masked_softmax_backward(Tensor grad_out, Tensor out, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale) "
        "-> Tensor");
  m.def("masked_log_softmax(Tensor x, Tensor? mask, Tensor? bias, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale) "
        "-> Tensor");
  m.def("masked_log_softmax_backward(Tensor grad_out, Tensor out, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale) "
        "-> Tensor");
  // Padded data (csrc/*/padding.*): lengths along `dim`. masked_pool mode: 0 sum,
  // 1 mean, 2 max; it returns (B, M, I) for x viewed as (B, M, T, I).
  m.def("fill_padding(Tensor x, Tensor lengths, Scalar value, int dim, bool left_pad) -> Tensor");
  m.def("fill_padding_(Tensor(a!) x, Tensor lengths, Scalar value, int dim, bool left_pad) -> ()");
  m.def("masked_pool(Tensor x, Tensor lengths, int dim, int mode) -> Tensor");
  // Soft masks (csrc/*/gate.*): x * sigmoid(logits * inv_temperature), 0 past lengths
  // along dim 1; without x, the mask itself. gate_backward returns (dx, dlogits).
  m.def("gate(Tensor? x, Tensor logits, Tensor? lengths, float inv_temperature, bool hard) "
        "-> Tensor");
  m.def("gate_backward(Tensor grad, Tensor? x, Tensor logits, Tensor? lengths, "
        "float inv_temperature, bool hard) -> (Tensor, Tensor)");
}

namespace {
bool cuda_built() {
#ifdef MASKEXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cuda_built", &cuda_built, "True when the CUDA kernels were compiled into this build");
}
