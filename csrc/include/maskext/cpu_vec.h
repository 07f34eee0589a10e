// Small at::vec helpers shared by the CPU kernels.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace maskext {

// src[0:n] as acc_t: the pointer itself when no conversion is needed, else
// converted into buf (which must hold n elements).
template <typename scalar_t, typename acc_t>
const acc_t* to_acc(const scalar_t* src, acc_t* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else if constexpr (at::is_reduced_floating_point_v<scalar_t> && std::is_same_v<acc_t, float>) {
    // at::vec::convert has no vector Half -> float path: widen whole vectors here.
    using bVec = at::vec::Vectorized<scalar_t>;
    using fVec = at::vec::Vectorized<float>;
    int64_t k = 0;
    for (; k + bVec::size() <= n; k += bVec::size()) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(bVec::loadu(src + k));
      lo.store(buf + k);
      hi.store(buf + k + fVec::size());
    }
    for (; k < n; ++k) buf[k] = static_cast<float>(src[k]);
    return buf;
  } else {
    at::vec::convert(src, buf, n);
    return buf;
  }
}

}  // namespace maskext
