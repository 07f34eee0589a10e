// Which 16-byte chunks of padded data are real steps, on CUDA: the data
// viewed contiguous as (B, M, T, I) (PaddedArgs), `per_step` chunks to a step,
// chunk c flat over the B * M * T * per_step of them; step t of batch element
// b is real when t lies in row_bounds(spec, b, 0) = [lo, hi), which for the
// padded ops' specs (lengths and left_pad only, prepare_padded) is
// length_bounds: row_bounds' checks of causal, window, segments and the rest
// were ~50 of a gate chunk's ~300 instructions (sm_90 SASS). Shared by the
// gate and fill_padding kernels.
#pragma once
#include <cstdint>

#include "maskext/checks.h"
#include "maskext/cuda_utils.cuh"
#include "maskext/row_bounds.h"

namespace maskext {

// r = c / per_step, t = r % T, b = r / (M * T) by 32-bit multiply-highs
// (cuda::FastDiv) where every chunk index fits in 31 bits (`fast`), 64-bit
// divisions otherwise: two 64-bit divisions per chunk were ~200 instructions,
// more than the gate's 8 sigmoids of a chunk (1.7x its copy floor on the
// H200, 2026-11-27).
struct StepOf {
  cuda::FastDiv per_step, T, MT;  // valid when fast
  bool fast;
};

inline StepOf step_of(const PaddedArgs& a, int64_t per_step, int64_t chunks) {
  const bool fast = chunks < (int64_t(1) << 31);
  auto div = [&](int64_t d) { return cuda::FastDiv(fast ? static_cast<uint32_t>(d) : 1u); };
  return {div(per_step), div(a.T), div(a.M * a.T), fast};
}

__device__ __forceinline__ bool real_step(const PaddedArgs& a, const StepOf& d, int64_t per_step,
                                          int64_t c) {
  int64_t b, t;
  if (d.fast) {  // the same for every thread of the launch
    const uint32_t r = d.per_step.div(static_cast<uint32_t>(c));
    b = d.MT.div(r);
    t = r - d.T.div(r) * d.T.d;
  } else {
    const int64_t r = c / per_step;
    b = r / (a.M * a.T);
    t = r % a.T;
  }
  int64_t lo, hi;
  length_bounds(a.spec, b, lo, hi);
  return t >= lo && t < hi;
}

// real[j]: chunk c0 + j * STRIDE exists (< chunks) and lies in a real step:
// the U chunks of one thread's round (found before the round's loads, or a
// round ahead, while the current round's loads are in flight).
template <int STRIDE, int U>
__device__ __forceinline__ void real_chunks(const PaddedArgs& a, const StepOf& d,
                                            int64_t per_step, int64_t chunks, int64_t c0,
                                            bool (&real)[U]) {
#pragma unroll
  for (int j = 0; j < U; ++j) {
    const int64_t c = c0 + int64_t(j) * STRIDE;
    real[j] = c < chunks && real_step(a, d, per_step, c);
  }
}

}  // namespace maskext
