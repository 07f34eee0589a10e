// Fresh CPU outputs of the kernels: large ones are backed by transparent huge
// pages, as torch itself does under THP_MEM_ALLOC_ENABLE=1.
//
// Why: a fresh output of 32 MB or more comes from mmap on every call (glibc
// hands such blocks back to the kernel on free), so its first touch costs one
// page fault per 4 KiB. For a 64 MB fp32 softmax output that is 16384 faults,
// measured at 35 ms on one core and 24 ms on two: 6x the time of filling the same
// memory once its pages exist, and most of the time of the op. With 2 MiB pages
// it is 32 faults.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace maskext {

// Call on a CPU tensor that was just allocated and not yet written. Only the
// 2 MiB-aligned pages inside the tensor's own bytes are advised, so no other
// allocation is affected; a failure (THP disabled, not Linux) changes nothing.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(t.nbytes());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = end & ~(kHuge - 1);
  if (hi >= lo + 2 * kHuge) {  // at least two whole huge pages: worth a syscall
    (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#else
  (void)t;
#endif
}

}  // namespace maskext
