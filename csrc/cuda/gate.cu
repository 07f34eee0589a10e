// CUDA kernels for soft (learnable) masks: m = sigmoid(logits * inv_t), exactly
// 0 at padded steps (t outside [lo, hi) along dim 1), 0/1 when hard
// (straight-through: the backward uses the sigmoid's gradient); gate: y = x * m.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "maskext/checks.h"
#include "maskext/cuda_steps.cuh"
#include "maskext/cuda_utils.cuh"

namespace maskext {
namespace {

// In float (the opmath type of half, bf16 and float) 1 / (1 + 2^(-z log2 e))
// by the special function unit's approximate exp and reciprocal, as
// torch.compile's Triton kernels compute it (a few ulp): FMUL, MUFU.EX2, FADD,
// MUFU.RCP. expf and an IEEE division, with their range and slow-path checks,
// were ~20 instructions an element in the SASS of gate_kernel<Half, 8> (sm_90):
// more issue time than the element's memory time. z -> -inf: 1 / inf = 0;
// z -> +inf: 1; NaN stays NaN.
template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t z) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return __fdividef(1.f, 1.f + cuda::exp2_ftz(z * -1.4426950408889634f));
  } else {
    return acc_t(1) / (acc_t(1) + exp(-z));
  }
}

template <typename T>
__device__ __forceinline__ uint4 load16(const T* p) {
  return *reinterpret_cast<const uint4*>(p);
}

// The VEC elements of x at e (16-byte aligned), or ones where there is no x.
template <typename T, int VEC>
__device__ __forceinline__ void load_x16(const T* x, int64_t e, at::opmath_type<T> (&xv)[VEC]) {
  if (x != nullptr) {
    cuda::unpack16<T>(load16(x + e), xv);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) xv[j] = at::opmath_type<T>(1);
  }
}

// The gate of one element: m = sigmoid(z * inv_t) (0/1 when hard), times x.
template <typename acc_t>
__device__ __forceinline__ acc_t gate_value(acc_t z, acc_t x, acc_t inv_t, bool hard) {
  const acc_t zi = z * inv_t;
  return x * (hard ? acc_t(zi >= 0) : sigmoid(zi));
}

// (dx, dz) of one element from its gradient g.
template <typename acc_t>
__device__ __forceinline__ void gate_grads(acc_t z, acc_t x, acc_t g, acc_t inv_t, bool hard,
                                           acc_t& dx, acc_t& dz) {
  const acc_t zi = z * inv_t;
  const acc_t s = sigmoid(zi);
  dz = g * x * s * (acc_t(1) - s) * inv_t;
  dx = g * (hard ? acc_t(zi >= 0) : s);
}

// Elementwise over the flat (B, T, I) data. VEC > 1: 16-byte chunks of VEC
// elements, every pointer 16-byte aligned and I % VEC == 0, so a chunk lies
// in one step and the step's bounds are found once per chunk (real_step: two
// divisions and row_bounds per VEC elements, not per element: per element they
// cost more instructions than the memory time of the element). VEC == 1: one
// element at a time, any I and alignment.
//
// One chunk per thread and iteration, on a grid of up to 16 blocks per SM:
// the warps' loads, sigmoids and stores interleave. (4 chunks per thread,
// steps then loads then math, on a one-round grid of 24 warps per SM, ran
// 1.32x slower on the H200, 2026-11-27: 2.03x its copy floor against 1.53x;
// with every warp in the same phase, the memory sat idle while each round's
// sigmoids were computed.)
constexpr int kGateThreads = 256;

template <typename T, int VEC>
__global__ void __launch_bounds__(kGateThreads) gate_kernel(PaddedArgs a, StepOf d, const T* x,
                                                            T* out, at::opmath_type<T> inv_t,
                                                            bool hard) {
  using acc_t = at::opmath_type<T>;
  const T* z = static_cast<const T*>(a.x);
  const int64_t per_step = a.I / VEC, chunks = a.B * a.T * per_step;
  for (int64_t c = blockIdx.x * int64_t(kGateThreads) + threadIdx.x; c < chunks;
       c += int64_t(gridDim.x) * kGateThreads) {
    const bool real = real_step(a, d, per_step, c);
    if constexpr (VEC == 1) {
      out[c] = real ? static_cast<T>(gate_value<acc_t>(static_cast<acc_t>(z[c]),
                                                        x != nullptr ? static_cast<acc_t>(x[c])
                                                                     : acc_t(1),
                                                        inv_t, hard))
                    : T(0);
    } else {
      const int64_t e = c * VEC;
      if (!real) {
        cuda::st_global_128(out + e, make_uint4(0, 0, 0, 0));  // +0.0 in every float type
        continue;
      }
      acc_t zv[VEC], xv[VEC];
      cuda::unpack16<T>(load16(z + e), zv);
      load_x16<T, VEC>(x, e, xv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) zv[k] = gate_value<acc_t>(zv[k], xv[k], inv_t, hard);
      cuda::store16<T>(out + e, zv);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kGateThreads)
    gate_backward_kernel(PaddedArgs a, StepOf d, const T* x, const T* grad, T* dx, T* dz,
                         at::opmath_type<T> inv_t, bool hard) {
  using acc_t = at::opmath_type<T>;
  const T* z = static_cast<const T*>(a.x);
  const int64_t per_step = a.I / VEC, chunks = a.B * a.T * per_step;
  for (int64_t c = blockIdx.x * int64_t(kGateThreads) + threadIdx.x; c < chunks;
       c += int64_t(gridDim.x) * kGateThreads) {
    const bool real = real_step(a, d, per_step, c);
    if constexpr (VEC == 1) {
      acc_t gx = 0, gz = 0;
      if (real) {
        gate_grads<acc_t>(static_cast<acc_t>(z[c]),
                          x != nullptr ? static_cast<acc_t>(x[c]) : acc_t(1),
                          static_cast<acc_t>(grad[c]), inv_t, hard, gx, gz);
      }
      dz[c] = static_cast<T>(gz);
      if (dx != nullptr) dx[c] = static_cast<T>(gx);
    } else {
      const int64_t e = c * VEC;
      if (!real) {
        cuda::st_global_128(dz + e, make_uint4(0, 0, 0, 0));
        if (dx != nullptr) cuda::st_global_128(dx + e, make_uint4(0, 0, 0, 0));
        continue;
      }
      acc_t zv[VEC], xv[VEC], gv[VEC];
      cuda::unpack16<T>(load16(z + e), zv);
      cuda::unpack16<T>(load16(grad + e), gv);
      load_x16<T, VEC>(x, e, xv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        gate_grads<acc_t>(zv[k], xv[k], gv[k], inv_t, hard, xv[k], zv[k]);
      }
      cuda::store16<T>(dz + e, zv);
      if (dx != nullptr) cuda::store16<T>(dx + e, xv);
    }
  }
}

// The chunked kernels when every pointer is 16-byte aligned and a step holds
// whole chunks, else the element-wise ones.
template <typename T, typename F>
void with_vec(int64_t I, std::initializer_list<const void*> ptrs, F&& f) {
  constexpr int VEC = cuda::Vec16<T>::N;
  bool aligned = I % VEC == 0;
  for (const void* p : ptrs) aligned = aligned && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  if (aligned) {
    f.template operator()<VEC>();
  } else {
    f.template operator()<1>();
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
    const scalar_t* xp = g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    with_vec<scalar_t>(g.logits.args.I, {g.logits.args.x, xp, op}, [&]<int VEC>() {
      const int64_t chunks = out.numel() / VEC;
      gate_kernel<scalar_t, VEC><<<cuda::grid_for(chunks, kGateThreads), kGateThreads, 0, stream>>>(
          g.logits.args, step_of(g.logits.args, g.logits.args.I / VEC, chunks), xp, op,
          static_cast<at::opmath_type<scalar_t>>(inv_t), hard);
    });
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
    const scalar_t* xp = g.x.defined() ? g.x.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    scalar_t* dxp = g.x.defined() ? dx.data_ptr<scalar_t>() : nullptr;
    scalar_t* dzp = dlogits.data_ptr<scalar_t>();
    with_vec<scalar_t>(g.logits.args.I, {g.logits.args.x, xp, gp, dxp, dzp}, [&]<int VEC>() {
      const int64_t chunks = dlogits.numel() / VEC;
      gate_backward_kernel<scalar_t, VEC>
          <<<cuda::grid_for(chunks, kGateThreads), kGateThreads, 0, stream>>>(
          g.logits.args, step_of(g.logits.args, g.logits.args.I / VEC, chunks), xp, gp, dxp, dzp,
          static_cast<at::opmath_type<scalar_t>>(inv_t), hard);
    });
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
