// Small at::vec helpers shared by the CPU kernels.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

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

// Row tails without partial vectors. at::vec's loadu(p, count) and store(p,
// count) are AVX2 masked moves (vmaskmovps): ~5 ns more than plain moves per
// load-store pair on this Zen 3, and a softmax row has ~6 of them; on small
// inputs that was a fifth of the time ((2,2,64,64) fp32, one thread, A/B min
// of 8 runs: forward 24.0 -> 18.9 us, backward 11.4 -> 8.7 us). For n >= V the
// tail is instead the full vector ending at n, [n - V, n), which overlaps the
// body: maps compute it before the body (so dst may alias src) and store it
// after, writing the overlapped lanes twice with the same value; reductions
// that must count each lane once keep only its last m lanes (last_lanes).
// Rows shorter than V keep the masked moves.

// kBytes zero bytes, then kBytes 0xff bytes: last_lanes' masks are windows of it.
template <int64_t kBytes>
struct TailTable {
  unsigned char t[2 * kBytes];
  constexpr TailTable() : t() {
    for (int64_t i = kBytes; i < 2 * kBytes; ++i) t[i] = 0xff;
  }
};

// All-ones in the last m lanes of a vector of T (0 < m <= V), zeros before.
template <typename T>
at::vec::Vectorized<T> last_lanes(int64_t m) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t kBytes = Vec::size() * sizeof(T);
  alignas(64) static constexpr TailTable<kBytes> kTable{};
  return Vec::loadu(kTable.t + kBytes - (Vec::size() - m) * static_cast<int64_t>(sizeof(T)));
}

// dst[0:n] = f(src[0:n]) for a vector map f (dst == src is fine).
template <typename T, typename F>
void map_row(F f, T* dst, const T* src, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  if (n < V) {
    if (n > 0) f(Vec::loadu(src, n)).store(dst, n);
    return;
  }
  const bool tail = n % V != 0;
  const Vec last = tail ? f(Vec::loadu(src + n - V)) : Vec();
  for (int64_t k = 0; k + V <= n; k += V) f(Vec::loadu(src + k)).store(dst + k);
  if (tail) last.store(dst + n - V);
}

// dst[0:n] = f(a[0:n], b[0:n]) (dst may be a or b).
template <typename T, typename F>
void map2_row(F f, T* dst, const T* a, const T* b, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  if (n < V) {
    if (n > 0) f(Vec::loadu(a, n), Vec::loadu(b, n)).store(dst, n);
    return;
  }
  const bool tail = n % V != 0;
  const Vec last = tail ? f(Vec::loadu(a + n - V), Vec::loadu(b + n - V)) : Vec();
  for (int64_t k = 0; k + V <= n; k += V) f(Vec::loadu(a + k), Vec::loadu(b + k)).store(dst + k);
  if (tail) last.store(dst + n - V);
}

// Prefetches the first bytes of a row that will be read next. Rows are read
// only on their visible interval, so consecutive reads jump over the masked
// keys and the hardware prefetchers lose the stream at every jump: rows of
// 256 of 512 keys ran no faster than full rows. Prefetching the next row's
// first 4 KiB: forward 24 -> 18 ms at 8x8x512x512 fp32 with 256 keys (one
// thread, huge pages); 1 KiB and 256 B helped less.
template <typename T>
inline void prefetch_row(const T* p, int64_t n) {
  constexpr int64_t kLine = 64, kMaxBytes = 4096;
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = std::min<int64_t>(n * static_cast<int64_t>(sizeof(T)), kMaxBytes);
  for (int64_t off = 0; off < bytes; off += kLine) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    // gcc 12 drops __builtin_prefetch in these kernels (checked in the
    // object code); an asm statement it must keep.
    asm volatile("prefetcht0 %0" : : "m"(*(c + off)));
#else
    __builtin_prefetch(c + off, 0, 3);
#endif
  }
}

// Prefetches the masked keys p[0, n) that a read stream jumps over to the
// next row, when they are at most 2 KiB: the hardware prefetcher fetches a
// short gap anyway, but the jump costs its stream (a standalone loop like the
// backward's, 32768 fp32 rows of 512 keys, huge pages, one thread: 384 or 256
// visible keys took 23 ms against 18 for all 512; with the gap prefetched
// 16-17 ms). Longer gaps are cheaper skipped than read (rows of 2048 keys,
// 1024 visible: 16.6 ms skipped, 18.5 bridged).
template <typename T>
inline void bridge_gap(const T* p, int64_t n) {
  constexpr int64_t kMaxBytes = 2048;
  if (n > 0 && n * static_cast<int64_t>(sizeof(T)) <= kMaxBytes) prefetch_row(p, n);
}

// exp(v) for v <= 0 (scores minus their row max), for the softmax kernels.
// float on AVX2: inlined, n = round(v / ln 2), r = v - n ln 2 in two parts,
// exp(r) by Cephes' degree-6 polynomial on [-ln2/2, ln2/2] (~1 ulp), times 2^n
// built in the exponent bits; results below 2^-126 (and -inf) give 0, NaN stays
// NaN. About 16 instructions a vector, against ~40 for Sleef's exp and the
// spills around its call (callgrind: a third of a small softmax's instructions).
template <typename V>
inline V exp_nonpos(const V& v) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<V, at::vec::Vectorized<float>>) {
    const __m256 lo = _mm256_set1_ps(-87.33654f);  // ln(2^-126)
    const __m256 x = _mm256_max_ps(lo, v);         // NaN in v stays NaN (max_ps returns its 2nd operand)
    const __m256 under = _mm256_cmp_ps(v, lo, _CMP_LT_OQ);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln 2 = 0.693359375 - 2.12194440e-4
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);  // 2^n, n in [-126, 0]
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }
#endif
  return v.exp();
}

// exp with ~20 ulp (exp_u20) where this torch has it, else the 1-ulp exp: for
// soft masks (sigmoids) that precision is plenty and Sleef's exp costs ~1.7x.
template <typename V, typename = void>
struct HasExpU20 : std::false_type {};
template <typename V>
struct HasExpU20<V, std::void_t<decltype(std::declval<V>().exp_u20())>> : std::true_type {};

template <typename V>
V fast_exp(const V& v) {
  if constexpr (HasExpU20<V>::value) return v.exp_u20(); else return v.exp();
}

}  // namespace maskext
