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
  } else {
    at::vec::convert(src, buf, n);
    return buf;
  }
}

}  // namespace maskext
