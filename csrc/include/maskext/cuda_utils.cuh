// Small CUDA helpers shared by the kernels: 16-byte packs, aligned vector
// loops with scalar head/tail, 32-bit division by a fixed divisor, and launch
// sizing.
//
// Source lines tagged `[edge]` are the scalar head/tail accesses of a row;
// benchmarks/kernel_report.py counts the global stores of every other line as
// the body path, which must store 128 bits at a time.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

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

// 16 bytes as one uint4, to and from Vec16<T>::N values of the accumulation
// type A.
template <typename T>
struct Bits16;

template <>
struct Bits16<c10::Half> {
  __device__ __forceinline__ static uint32_t pair(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
  }
  __device__ __forceinline__ static float2 unpair(uint32_t u) {
    __half2 h;
    memcpy(&h, &u, 4);
    return __half22float2(h);
  }
};

template <>
struct Bits16<c10::BFloat16> {
  __device__ __forceinline__ static uint32_t pair(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
  }
  // A bfloat16 is the high half of a float: exact, two integer ops.
  __device__ __forceinline__ static float2 unpair(uint32_t u) {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  }
};

template <typename T, typename A>
__device__ __forceinline__ uint4 pack16(const A (&v)[Vec16<T>::N]) {
  if constexpr (sizeof(T) == 2) {
    return make_uint4(Bits16<T>::pair(v[0], v[1]), Bits16<T>::pair(v[2], v[3]),
                      Bits16<T>::pair(v[4], v[5]), Bits16<T>::pair(v[6], v[7]));
  } else if constexpr (sizeof(T) == 4) {
    return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                      __float_as_uint(v[3]));
  } else {
    static_assert(sizeof(T) == 8, "pack16: 2-, 4- or 8-byte floating types");
    const unsigned long long a = __double_as_longlong(v[0]), b = __double_as_longlong(v[1]);
    return make_uint4(static_cast<uint32_t>(a), static_cast<uint32_t>(a >> 32),
                      static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32));
  }
}

template <typename T, typename A>
__device__ __forceinline__ void unpack16(uint4 u, A (&v)[Vec16<T>::N]) {
  if constexpr (sizeof(T) == 2) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = Bits16<T>::unpair(w[i]);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  } else if constexpr (sizeof(T) == 4) {
    v[0] = __uint_as_float(u.x);
    v[1] = __uint_as_float(u.y);
    v[2] = __uint_as_float(u.z);
    v[3] = __uint_as_float(u.w);
  } else {
    v[0] = __longlong_as_double(static_cast<long long>((uint64_t(u.y) << 32) | u.x));
    v[1] = __longlong_as_double(static_cast<long long>((uint64_t(u.w) << 32) | u.z));
  }
}

// 2^x in one MUFU.EX2: exp2f and __expf add a range fix-up (a compare and two
// predicated multiplies) to keep results below 2^-126, which a probability or
// a gate of that size does not need: flushed to 0 here. 2^-inf = 0, 2^NaN = NaN.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// One 128-bit global store; p must be 16-byte aligned. Read in the SASS of
// the softmax kernels: a struct of eight halves is copied as eight 2-byte
// stores, a uint4 assigned through a uint4* became four 4-byte stores there,
// and __stwb (st.global.wb) a STG.E.128.STRONG.SM; a plain st.global.v4 is a
// STG.E.128.
__device__ __forceinline__ void st_global_128(void* p, uint4 u) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(u.x), "r"(u.y), "r"(u.z),
               "r"(u.w)
               : "memory");
}

// One 128-bit store of VEC values converted to T; p must be 16-byte aligned.
template <typename T, typename A>
__device__ __forceinline__ void store16(T* p, const A (&v)[Vec16<T>::N]) {
  st_global_128(p, pack16<T>(v));
}

// 16 bytes holding `value` Vec16<T>::N times, for any 1-, 2-, 4- or 8-byte T.
template <typename T>
__device__ __forceinline__ uint4 splat16(T value) {
  if constexpr (sizeof(T) == 8) {
    uint64_t b;
    memcpy(&b, &value, 8);
    return make_uint4(static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32),
                      static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32));
  } else {
    uint32_t w;
    if constexpr (sizeof(T) == 4) {
      memcpy(&w, &value, 4);
    } else if constexpr (sizeof(T) == 2) {
      uint16_t h;
      memcpy(&h, &value, 2);
      w = h * 0x00010001u;
    } else {
      static_assert(sizeof(T) == 1, "splat16: 1-, 2-, 4- or 8-byte types");
      uint8_t c;
      memcpy(&c, &value, 1);
      w = c * 0x01010101u;
    }
    return make_uint4(w, w, w, w);
  }
}

// Splits [0, n) of an array starting at `p` into an unaligned head, 16-byte
// aligned chunks and a tail, spread over `nthreads` threads: scalar(k) for
// single elements; for the chunk [k, k + VEC), c = load(k) then use(k, c),
// the loads of U chunks of a thread issued before any use, so that U 16-byte
// loads are in flight (a loop of one chunk per step compiled to one: a single
// LDG.128 in the SASS of the split and general softmax kernels). No
// divisibility or alignment requirements on p or n.
template <int U, typename T, typename Scalar, typename Load, typename Use>
__device__ __forceinline__ void vec_loop_ilp(const T* p, int64_t n, int tid, int nthreads,
                                             Scalar scalar, Load load, Use use) {
  constexpr int VEC = Vec16<T>::N;
  const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(p) / sizeof(T)) % VEC);
  int64_t head = (VEC - mis) % VEC;
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0) head = n;  // cannot align: all scalar
  if (head > n) head = n;
  for (int64_t k = tid; k < head; k += nthreads) scalar(k);
  const int64_t nvec = (n - head) / VEC, step = nthreads;
  int64_t v = tid;
  for (; v + (U - 1) * step < nvec; v += U * step) {
    decltype(load(int64_t(0))) c[U];
#pragma unroll
    for (int u = 0; u < U; ++u) c[u] = load(head + (v + u * step) * VEC);
#pragma unroll
    for (int u = 0; u < U; ++u) use(head + (v + u * step) * VEC, c[u]);
  }
  for (; v < nvec; v += step) use(head + v * VEC, load(head + v * VEC));
  for (int64_t k = head + nvec * VEC + tid; k < n; k += nthreads) scalar(k);
}

// vec_loop_ilp one chunk at a time: vector(k) for the chunk [k, k + VEC).
template <typename T, typename Scalar, typename Vector>
__device__ __forceinline__ void vec_loop(const T* p, int64_t n, int tid, int nthreads,
                                         Scalar scalar, Vector vector) {
  vec_loop_ilp<1>(p, n, tid, nthreads, scalar, [](int64_t k) { return k; },
                  [&](int64_t k, int64_t) { vector(k); });
}

// The values of one 16-byte chunk, as vec_loop_ilp's loads return them.
template <typename acc_t, int N>
struct Chunk {
  acc_t v[N];
};

// N consecutive bools (N = 1, 2, 4 or 8, p aligned to N bytes) in one load.
template <int N>
__device__ __forceinline__ void load_flags(const bool* p, bool (&f)[N]) {
  static_assert(N == 1 || N == 2 || N == 4 || N == 8, "load_flags: 1, 2, 4 or 8 bools");
  uint64_t bits;
  if constexpr (N == 8) {
    bits = *reinterpret_cast<const unsigned long long*>(p);
  } else if constexpr (N == 4) {
    bits = *reinterpret_cast<const uint32_t*>(p);
  } else if constexpr (N == 2) {
    bits = *reinterpret_cast<const uint16_t*>(p);
  } else {
    bits = *reinterpret_cast<const uint8_t*>(p);
  }
#pragma unroll
  for (int i = 0; i < N; ++i) f[i] = ((bits >> (8 * i)) & 0xff) != 0;
}

// Writes `value` to p[0:n) with 16-byte stores where aligned.
template <typename T>
__device__ __forceinline__ void fill(T* p, int64_t n, T value, int tid, int nthreads) {
  const uint4 pk = splat16(value);
  vec_loop(p, n, tid, nthreads, [&](int64_t k) { p[k] = value; },  // [edge]
           [&](int64_t k) { st_global_128(p + k, pk); });
}

// n / d and n % d for a divisor d fixed at launch, both in [1, 2^31): a
// multiply-high, an add and a shift instead of a division (round-up magic
// number: m = floor(2^32 * (2^s - d) / d) + 1 with 2^(s-1) < d <= 2^s, then
// n / d = (umulhi(n, m) + n) >> s, exact for n < 2^31).
struct FastDiv {
  uint32_t d = 1, m = 1, s = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor) {
    while ((uint64_t(1) << s) < d) ++s;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    return (__umulhi(n, m) + n) >> s;
#else
    return static_cast<uint32_t>(((uint64_t(n) * m >> 32) + n) >> s);
#endif
  }
};

// An attribute of the current device (a positive number), asked once per device.
template <cudaDeviceAttr kAttr>
int device_attribute() {
  static int value[64] = {0};
  const int dev = c10::cuda::current_device();
  if (dev < 64 && value[dev] > 0) return value[dev];
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, kAttr, dev));
  if (dev < 64) value[dev] = n;
  return n;
}

inline int sm_count() { return device_attribute<cudaDevAttrMultiProcessorCount>(); }

// The compute capability's major number (8: sm_80).
inline int compute_major() { return device_attribute<cudaDevAttrComputeCapabilityMajor>(); }

// ask(), an occupancy-API answer about `kernel` for `key` (a block size, a
// cluster size), asked once per kernel and key: the answer does not change
// within a process (one architecture per process), and the runtime call is
// not free on every launch. Each caller's `ask` is its own lambda type, so its
// own table: two questions about one kernel and key never share an answer.
template <typename Kernel, typename Ask>
int once_per_kernel(Kernel kernel, int64_t key, Ask&& ask) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int64_t>, int> known;
  const std::pair<const void*, int64_t> k{reinterpret_cast<const void*>(kernel), key};
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find(k);
  if (it == known.end()) it = known.emplace(k, ask()).first;
  return it->second;
}

// Blocks of `threads` threads of `kernel` that fit on an SM at once (its
// registers and shared memory), from the occupancy API: for grids of one
// round of blocks.
template <typename Kernel>
int blocks_per_sm(Kernel kernel, int threads) {
  return once_per_kernel(kernel, threads, [&] {
    int n = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, 0));
    return n > 0 ? n : 1;
  });
}

// As blocks_per_sm for blocks of `threads` threads and `smem` bytes of dynamic
// shared memory, 0 where not one fits. Past the 48 KB that a kernel gets
// unasked, the kernel is allowed `smem` here (cudaFuncSetAttribute, which
// holds for the current device: asked once per kernel, size and device), and
// it prefers the SM's largest shared-memory carveout.
template <typename Kernel>
int blocks_per_sm(Kernel kernel, int threads, int smem) {
  const int dev = c10::cuda::current_device();
  return once_per_kernel(kernel, (int64_t(dev) << 40) | (int64_t(smem) << 12) | threads, [&] {
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem > optin) return 0;
    if (smem > 48 * 1024) {
      C10_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    }
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        cudaSharedmemCarveoutMaxShared));
    int n = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
    return n;
  });
}

// cp.async (sm_80 and later): 16 bytes from global to shared memory, through
// neither registers nor L1, in flight until wait_async; commit_async closes
// this thread's group of copies; wait_async<N>: all of this thread's groups
// but the N newest have landed (and are visible to this thread). Before sm_80:
// a load and a store, nothing left to wait for.
__device__ __forceinline__ void copy_async_16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n"
               :
               : "r"(static_cast<unsigned>(__cvta_generic_to_shared(smem))), "l"(gmem)
               : "memory");
#else
  *static_cast<uint4*>(smem) = __ldg(static_cast<const uint4*>(gmem));
#endif
}

__device__ __forceinline__ void commit_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wait_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Grid for a grid-stride loop over `work` items, `per_block` per block.
inline unsigned grid_for(int64_t work, int64_t per_block, int blocks_per_sm = 16) {
  const int64_t need = (work + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(sm_count()) * blocks_per_sm;
  return static_cast<unsigned>(need < cap ? (need > 0 ? need : 1) : cap);
}

}  // namespace cuda
}  // namespace maskext
