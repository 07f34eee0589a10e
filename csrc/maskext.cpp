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
        "bool causal, int window_left, int window_right, ScalarType dtype, "
        "Tensor? q_offset=None, int? q_offset_value=None, Tensor? segment_ids=None, int chunk=0, "
        "Tensor? prefix_lengths=None, int prefix_value=0) -> Tensor");
  m.def("mask_to_lengths(Tensor mask) -> Tensor");
  m.def("lengths_from_padded(Tensor x, Scalar pad_value, int dim) -> Tensor");
  // Masked softmax (csrc/*/softmax.*). window_* = -1 means unbounded. The mask
  // description (lengths ... prefix_value) is the same list in every op (the C++
  // MaskDesc; built in Python by ops._mask_args): q_offset is a [B] tensor or
  // q_offset_value an int (neither: Tk - Tq); chunk 0 = none; prefix_lengths a
  // [B] tensor or prefix_value an int (0 = none). softcap > 0 (forward only): the
  // score is softcap * tanh(scale * x / softcap), then bias is added; 0 = none.
  // sinks (forward only): one extra logit per row, broadcastable to x.shape[:-1],
  // in every row's normaliser and dropped from the output. The backward ops need
  // neither: with y and dy alone they give the same dx.
  m.def("masked_softmax(Tensor x, Tensor? mask, Tensor? bias, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale, "
        "Tensor? q_offset=None, int? q_offset_value=None, Tensor? segment_ids=None, int chunk=0, "
        "Tensor? prefix_lengths=None, int prefix_value=0, float softcap=0.0, "
        "Tensor? sinks=None) -> Tensor");
  m.def("masked_softmax_backward(Tensor grad_out, Tensor out, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale, "
        "Tensor? q_offset=None, int? q_offset_value=None, Tensor? segment_ids=None, int chunk=0, "
        "Tensor? prefix_lengths=None, int prefix_value=0) -> Tensor");
  m.def("masked_log_softmax(Tensor x, Tensor? mask, Tensor? bias, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale, "
        "Tensor? q_offset=None, int? q_offset_value=None, Tensor? segment_ids=None, int chunk=0, "
        "Tensor? prefix_lengths=None, int prefix_value=0, float softcap=0.0, "
        "Tensor? sinks=None) -> Tensor");
  m.def("masked_log_softmax_backward(Tensor grad_out, Tensor out, Tensor? lengths, "
        "Tensor? q_lengths, bool causal, int window_left, int window_right, float scale, "
        "Tensor? q_offset=None, int? q_offset_value=None, Tensor? segment_ids=None, int chunk=0, "
        "Tensor? prefix_lengths=None, int prefix_value=0) -> Tensor");
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

#include <ATen/Parallel.h>

#include <mutex>
#include <set>

namespace {
#define MASKEXT_STR_(...) #__VA_ARGS__
#define MASKEXT_STR(...) MASKEXT_STR_(__VA_ARGS__)

bool cuda_built() {
#ifdef MASKEXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The intra-op backend at::parallel_for has in THIS module's kernels (it is
// decided by the flags they were compiled with, not by libtorch): "OpenMP",
// "native" (torch's own thread pool) or "none" (serial: a broken build).
std::string parallel_backend() {
#if defined(_OPENMP)
  return "OpenMP";
#elif AT_PARALLEL_NATIVE
  return "native";
#else
  return "none";
#endif
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["cuda"] = cuda_built();
#ifdef MASKEXT_CUDA_ARCHS
  d["cuda_archs"] = std::string(MASKEXT_STR(MASKEXT_CUDA_ARCHS));
#else
  d["cuda_archs"] = std::string();
#endif
#if defined(CPU_CAPABILITY_AVX2)
  d["cpu_capability"] = "AVX2";
#else
  d["cpu_capability"] = "default";
#endif
  d["parallel_backend"] = parallel_backend();
#if defined(_OPENMP)
  d["openmp"] = static_cast<int64_t>(_OPENMP);
#else
  d["openmp"] = static_cast<int64_t>(0);
#endif
  d["torch"] = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
               "." + std::to_string(TORCH_VERSION_PATCH);  // the headers it was compiled against
  return d;
}

// How many distinct threads run the bodies of one at::parallel_for over n
// items (grain 1) in this module: the proof that the kernels are parallel.
int64_t parallel_threads_used(int64_t n) {
  std::mutex mu;
  std::set<int> ids;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(ids.size());
}

// Unboxed entry points, for the Python wrappers' calls that need no autograd
// (maskext/ops.py, _call): the same dispatcher call as torch.ops.maskext.<op>
// below the autograd keys (every other key, Python modes and subclasses,
// autocast, functorch, still applies), without boxing the schema's
// arguments into IValues and back. On a 1-element masked_softmax this call
// takes 1.8 us, torch.ops 7-9 us (its 17 arguments).
template <typename Sig>
struct Unboxed;

template <typename R, typename... Args>
struct Unboxed<R(Args...)> {
  static auto entry(const char* name) {
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<R(Args...)>();
    return [op](Args... args) -> R {
      at::AutoDispatchBelowAutograd below_autograd;
      return op.call(std::forward<Args>(args)...);
    };
  }
};

using OptT = const std::optional<at::Tensor>&;
using SoftmaxSig = at::Tensor(const at::Tensor&, OptT, OptT, OptT, OptT, bool, int64_t, int64_t,
                              double, OptT, std::optional<int64_t>, OptT, int64_t, OptT, int64_t,
                              double, OptT);
using SoftmaxBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, OptT, OptT, bool,
                                      int64_t, int64_t, double, OptT, std::optional<int64_t>,
                                      OptT, int64_t, OptT, int64_t);
using GateSig = at::Tensor(OptT, const at::Tensor&, OptT, double, bool);
using PoolSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t);
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The schemas and kernels were registered when this library was loaded.
  m.def("masked_softmax", Unboxed<SoftmaxSig>::entry("maskext::masked_softmax"));
  m.def("masked_log_softmax", Unboxed<SoftmaxSig>::entry("maskext::masked_log_softmax"));
  m.def("masked_softmax_backward",
        Unboxed<SoftmaxBackwardSig>::entry("maskext::masked_softmax_backward"));
  m.def("masked_log_softmax_backward",
        Unboxed<SoftmaxBackwardSig>::entry("maskext::masked_log_softmax_backward"));
  m.def("gate", Unboxed<GateSig>::entry("maskext::gate"));
  m.def("masked_pool", Unboxed<PoolSig>::entry("maskext::masked_pool"));
  m.def("cuda_built", &cuda_built, "True when the CUDA kernels were compiled into this build");
  m.def("build_info", &build_info, "What this build of maskext was compiled with");
  m.def("parallel_threads_used", &parallel_threads_used, pybind11::arg("n"),
        "Distinct threads that run one at::parallel_for over n items (grain 1)");
}
