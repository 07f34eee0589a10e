// Small CUDA helpers shared by the kernels: 16-byte packs, aligned vector
// loops with scalar head/tail, and launch sizing.
#pragma once
#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cstdint>

namespace maskext {
namespace cuda {

// VEC elements in one 16-byte load/store.
template <typename T>
struct Vec16 {
  static constexpr int N = 16 / sizeof(T) > 0 ? 16 / sizeof(T) : 1;
  struct alignas(16) Pack {
    T v[N];
  };
};

// Splits [0, n) of an array starting at `p` into an unaligned head, 16-byte
// aligned chunks and a tail, spread over `nthreads` threads: scalar(k) for
// single elements, vector(k) for the chunk [k, k + VEC). No divisibility
// or alignment requirements on p or n.
template <typename T, typename Scalar, typename Vector>
__device__ __forceinline__ void vec_loop(const T* p, int64_t n, int tid, int nthreads,
                                         Scalar scalar, Vector vector) {
  constexpr int VEC = Vec16<T>::N;
  const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(p) / sizeof(T)) % VEC);
  int64_t head = (VEC - mis) % VEC;
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0) head = n;  // cannot align: all scalar
  if (head > n) head = n;
  for (int64_t k = tid; k < head; k += nthreads) scalar(k);
  const int64_t nvec = (n - head) / VEC;
  for (int64_t v = tid; v < nvec; v += nthreads) vector(head + v * VEC);
  for (int64_t k = head + nvec * VEC + tid; k < n; k += nthreads) scalar(k);
}

// Writes `value` to p[0:n) with 16-byte stores where aligned.
template <typename T>
__device__ __forceinline__ void fill(T* p, int64_t n, T value, int tid, int nthreads) {
  using Pack = typename Vec16<T>::Pack;
  Pack pk;
#pragma unroll
  for (int e = 0; e < Vec16<T>::N; ++e) pk.v[e] = value;
  vec_loop(p, n, tid, nthreads, [&](int64_t k) { p[k] = value; },
           [&](int64_t k) { *reinterpret_cast<Pack*>(p + k) = pk; });
}

inline int sm_count() {
  static int count[64] = {0};
  const int dev = c10::cuda::current_device();
  if (dev < 64 && count[dev] > 0) return count[dev];
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev < 64) count[dev] = n;
  return n;
}

// Grid for a grid-stride loop over `work` items, `per_block` per block.
inline unsigned grid_for(int64_t work, int64_t per_block, int blocks_per_sm = 16) {
  const int64_t need = (work + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(sm_count()) * blocks_per_sm;
  return static_cast<unsigned>(need < cap ? (need > 0 ? need : 1) : cap);
}

}  // namespace cuda
}  // namespace maskext
