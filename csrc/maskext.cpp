// The one schema block: every maskext op is declared here, once. CPU and CUDA
// implementations register against these schemas in csrc/cpu and csrc/cuda;
// fake (meta) implementations and autograd live in maskext/ops.py.
#include <torch/extension.h>

TORCH_LIBRARY(maskext, m) {
  // Masks from lengths (csrc/*/masks.*).
  m.def("lengths_to_mask(Tensor lengths, int? max_len, bool left_pad, bool padding, "
        "ScalarType dtype) -> Tensor");
  m.def("attention_mask(Tensor lengths, Tensor? q_lengths, int q_len, int k_len, bool causal, "
        "int window_left, int window_right, ScalarType dtype) -> Tensor");
  m.def("mask_to_lengths(Tensor mask) -> Tensor");
  m.def("lengths_from_padded(Tensor x, Scalar pad_value, int dim) -> Tensor");
  // Masked softmax (csrc/*/softmax.*). window_* = -1 means unbounded.
  m.def("masked_softmax(Tensor x, Tensor? mask, Tensor? bias, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale) "
        "-> Tensor");
  m.def("masked_softmax_backward(Tensor grad_out, Tensor out, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale) "
        "-> Tensor");
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
