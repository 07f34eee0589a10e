// CUDA kernels for soft (learnable) masks: m = sigmoid(logits * inv_t), exactly
// 0 at padded steps (t outside [lo, hi) along dim 1), 0/1 when hard
// (straight-through: the backward uses the sigmoid's gradient); gate: y = x * m.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "maskext/checks.h"
#include "maskext/cuda_utils.cuh"

namespace maskext {
namespace {

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + exp(-z));
}

// Whether flat element e of the (B, T, F) data lies in a real (unpadded) step.
__device__ __forceinline__ bool real_step(const PaddedArgs& a, int64_t e) {
  const int64_t r = e / a.I, t = r % a.T;
  int64_t lo, hi;
  row_bounds(a.spec, r / a.T, 0, lo, hi);
  return t >= lo && t < hi;
}

// Elementwise over the flat (B, T, F) data.
template <typename T>
__global__ void gate_kernel(PaddedArgs a, const T* x, T* out, double inv_t, bool hard) {
  using acc_t = at::opmath_type<T>;
  const T* z = static_cast<const T*>(a.x);
  const int64_t total = a.B * a.T * a.I;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!real_step(a, e)) {
      out[e] = T(0);
      continue;
    }
    const acc_t zi = static_cast<acc_t>(z[e]) * static_cast<acc_t>(inv_t);
    const acc_t m = hard ? acc_t(zi >= 0) : sigmoid(zi);
    out[e] = static_cast<T>(x != nullptr ? static_cast<acc_t>(x[e]) * m : m);
  }
}

template <typename T>
__global__ void gate_backward_kernel(PaddedArgs a, const T* x, const T* grad, T* dx, T* dz,
                                     double inv_t, bool hard) {
  using acc_t = at::opmath_type<T>;
  const T* z = static_cast<const T*>(a.x);
  const int64_t total = a.B * a.T * a.I;
  const acc_t it = static_cast<acc_t>(inv_t);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!real_step(a, e)) {
      dz[e] = T(0);
      if (dx != nullptr) dx[e] = T(0);
      continue;
    }
    const acc_t zi = static_cast<acc_t>(z[e]) * it;
    const acc_t s = sigmoid(zi);
    const acc_t gi = static_cast<acc_t>(grad[e]);
    const acc_t xi = x != nullptr ? static_cast<acc_t>(x[e]) : acc_t(1);
    dz[e] = static_cast<T>(gi * xi * s * (acc_t(1) - s) * it);
    if (dx != nullptr) dx[e] = static_cast<T>(gi * (hard ? acc_t(zi >= 0) : s));
  }
}

at::Tensor gate_cuda(const std::optional<at::Tensor>& x, const at::Tensor& logits,
                     const std::optional<at::Tensor>& lengths, double inv_t, bool hard) {
  GateProblem g = prepare_gate("gate", x, logits, lengths);
  at::Tensor out = at::empty_like(g.logits.x4);
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(logits.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gate", [&] {
    constexpr int threads = 256;
    gate_kernel<scalar_t><<<cuda::grid_for(out.numel(), threads), threads, 0, stream>>>(
        g.logits.args, g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), inv_t, hard);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gate_backward_cuda(const at::Tensor& grad,
                                                      const std::optional<at::Tensor>& x,
                                                      const at::Tensor& logits,
                                                      const std::optional<at::Tensor>& lengths,
                                                      double inv_t, bool hard) {
  GateProblem g = prepare_gate("gate_backward", x, logits, lengths, &grad);
  const at::Tensor gc = grad.contiguous();
  at::Tensor dlogits = at::empty_like(g.logits.x4);
  at::Tensor dx = g.x.defined() ? at::empty_like(g.x) : at::empty({0}, logits.options());
  if (dlogits.numel() == 0) return {dx, dlogits};
  const c10::cuda::CUDAGuard guard(logits.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gate_backward", [&] {
    constexpr int threads = 256;
    gate_backward_kernel<scalar_t><<<cuda::grid_for(dlogits.numel(), threads), threads, 0, stream>>>(
        g.logits.args, g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr,
        gc.data_ptr<scalar_t>(), g.x.defined() ? dx.data_ptr<scalar_t>() : nullptr,
        dlogits.data_ptr<scalar_t>(), inv_t, hard);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx, dlogits};
}

}  // namespace

TORCH_LIBRARY_IMPL(maskext, CUDA, m) {
  m.impl("gate", &gate_cuda);
  m.impl("gate_backward", &gate_backward_cuda);
}

}  // namespace maskext
