// The one definition of "which keys are visible" (DESIGN.md §1).
// Every CPU kernel, CUDA kernel and mask materialiser calls row_bounds(), so
// the ops cannot disagree with each other about a mask.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MASKEXT_HD __host__ __device__ __forceinline__
#else
#define MASKEXT_HD inline
#endif

namespace maskext {

// A mask description: what the kernels turn into [lo, hi) for one row.
// Plain data, passed by value to CUDA kernels.
struct RowSpec {
  const void* lengths = nullptr;    // [B] valid keys per batch element, or null
  const void* q_lengths = nullptr;  // [B] valid queries per batch element, or null
  bool lengths64 = false;           // int64 (true) or int32 (false) lengths
  bool q_lengths64 = false;
  bool left_pad = false;            // valid keys are the LAST lengths[b] positions
  bool causal = false;
  int64_t window_left = -1;         // -1 = unbounded
  int64_t window_right = -1;
  int64_t q_len = 1;                // Tq (padded)
  int64_t k_len = 0;                // Tk (padded)
  // Query offset: query row i sits at key position p = q_offset[b] + i, or
  // q_offset_value + i without the tensor (default k_len - q_len: bottom-right).
  const void* q_offset = nullptr;   // [B], or null
  bool q_offset64 = false;
  int64_t q_offset_value = 0;
  // Packed documents: [B, k_len] contiguous ids, non-decreasing along the keys;
  // the query at p sees the keys of its own segment (nothing when p is outside
  // [0, k_len)). Null: one segment.
  const void* segment_ids = nullptr;
  bool segment_ids64 = false;
  int64_t chunk = 0;                // > 0: keys j with j / chunk == p / chunk (floor)
  // Prefix-LM: keys j < prefix (prefix[b], or prefix_value without the tensor)
  // are visible whatever causal / window / chunk say. The host refuses it
  // together with a left window or a chunk (that could make two intervals).
  const void* prefix = nullptr;     // [B], or null
  bool prefix64 = false;
  int64_t prefix_value = 0;         // <= 0 and no tensor: no prefix
};

// |q_offset| and chunk are clamped to this on the host and in row_bounds(), so
// that p +- window and chunk arithmetic cannot overflow int64.
constexpr int64_t kPosMax = int64_t(1) << 61;

MASKEXT_HD int64_t load_length(const void* p, bool is64, int64_t b) {
  return is64 ? static_cast<const int64_t*>(p)[b]
              : static_cast<int64_t>(static_cast<const int32_t*>(p)[b]);
}

MASKEXT_HD int64_t clamp_i64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// floor(p / c) * c for c > 0, any sign of p.
MASKEXT_HD int64_t floor_multiple(int64_t p, int64_t c) {
  const int64_t q = p / c;
  return (q * c > p ? q - 1 : q) * c;
}

// [lo, hi) of the keys whose segment id equals that of key p (0 <= p < k_len)
// in batch element b: two binary searches over the non-decreasing ids, each
// probing the row's end first (key 0 for lo, key k_len - 1 for hi). Where key
// p's segment is the first or the last, as every row's is in Hugging Face's
// left padding (ids 0 for the padding, 1 for the real keys), that bound takes
// one load instead of ~log2(k_len) dependent ones; otherwise its search takes
// one probe more. (Loading both ends before the searches kept one more value
// live: ptxas spilled the streamed tiers' loop counter, sm_90.)
MASKEXT_HD void segment_bounds(const RowSpec& s, int64_t b, int64_t p, int64_t& lo, int64_t& hi) {
  const int64_t base = b * s.k_len;
  const int64_t v = load_length(s.segment_ids, s.segment_ids64, base + p);
  int64_t a = 0, z = p, m = 0;  // first j in [0, p] with id >= v
  while (a < z) {
    if (load_length(s.segment_ids, s.segment_ids64, base + m) < v) a = m + 1; else z = m;
    m = a + (z - a) / 2;
  }
  lo = a;
  a = p + 1;
  z = s.k_len;  // first j in [p + 1, k_len) with id > v
  m = z - 1;
  while (a < z) {
    if (load_length(s.segment_ids, s.segment_ids64, base + m) <= v) a = m + 1; else z = m;
    m = a + (z - a) / 2;
  }
  hi = a;
}

// True when row_bounds(s, b, i) does not depend on the query row i (keys
// masked by lengths only, or nothing): a kernel may compute it once per b.
MASKEXT_HD bool rows_alike(const RowSpec& s) {
  return s.q_lengths == nullptr && s.segment_ids == nullptr && !s.causal && s.window_left < 0 &&
         s.window_right < 0 && s.chunk <= 0 && s.prefix == nullptr && s.prefix_value <= 0;
}

// The keys [lo, hi) that lengths (and left_pad) alone leave visible in batch
// element b: row_bounds' first step, and all of it for a spec of lengths only
// (the padded ops' PaddedArgs), whose per-chunk kernels skip the rest's checks.
MASKEXT_HD void length_bounds(const RowSpec& s, int64_t b, int64_t& lo, int64_t& hi) {
  lo = 0;
  hi = s.k_len;
  if (s.lengths != nullptr) {
    const int64_t len = clamp_i64(load_length(s.lengths, s.lengths64, b), 0, s.k_len);
    if (s.left_pad) lo = s.k_len - len; else hi = len;
  }
}

// Visible keys [lo, hi) of query row i of batch element b; lo == hi == 0 means
// the row is fully masked. Always 0 <= lo, hi <= k_len, whatever the lengths hold
// (lengths are clamped to [0, k_len]: a length past the row means "all real").
//
// Alignment: query i sits at key position p = i + q_offset, by default
// q_offset = k_len - q_len, i.e. causal and window masks are aligned to the
// bottom-right corner of the padded (q_len, k_len) block, as flash-attn
// (>= 2.1) and torch.nn.attention.bias.causal_lower_right. With
// q_len == k_len this is "query i sees keys j <= i". Window (left, right)
// keeps keys p - left <= j <= p + right; chunk c keeps j with
// floor(j / c) == floor(p / c); keys j < prefix are visible whatever causal,
// window and chunk say. Everything else (lengths, q_lengths, segments)
// combines by intersection.
MASKEXT_HD void row_bounds(const RowSpec& s, int64_t b, int64_t i, int64_t& lo, int64_t& hi) {
  if (s.q_lengths != nullptr && i >= load_length(s.q_lengths, s.q_lengths64, b)) {
    lo = hi = 0;
    return;
  }
  length_bounds(s, b, lo, hi);
  const int64_t off = s.q_offset != nullptr
      ? clamp_i64(load_length(s.q_offset, s.q_offset64, b), -kPosMax, kPosMax)
      : s.q_offset_value;
  const int64_t p = i + off;
  if (s.segment_ids != nullptr) {
    if (p < 0 || p >= s.k_len) {
      lo = hi = 0;
      return;
    }
    int64_t slo, shi;
    segment_bounds(s, b, p, slo, shi);
    if (slo > lo) lo = slo;
    if (shi < hi) hi = shi;
  }
  // The local interval [llo, lhi) of causal, window and chunk.
  int64_t llo = 0, lhi = s.k_len;
  if (s.causal && p + 1 < lhi) lhi = p + 1;
  if (s.window_left >= 0 && p - s.window_left > llo) llo = p - s.window_left;
  if (s.window_right >= 0 && p + s.window_right + 1 < lhi) lhi = p + s.window_right + 1;
  if (s.chunk > 0) {
    const int64_t c0 = floor_multiple(p, s.chunk);
    if (c0 > llo) llo = c0;
    if (c0 + s.chunk < lhi) lhi = c0 + s.chunk;
  }
  if (s.prefix != nullptr || s.prefix_value > 0) {
    const int64_t P = clamp_i64(
        s.prefix != nullptr ? load_length(s.prefix, s.prefix64, b) : s.prefix_value, 0, s.k_len);
    // [0, P) union [llo, lhi): one interval, as llo == 0 here (the host refuses a
    // prefix with a left window or a chunk).
    if (lhi <= llo) {
      llo = 0;
      lhi = P;
    } else if (llo <= P) {
      llo = 0;
      if (P > lhi) lhi = P;
    }
  }
  if (llo > lo) lo = llo;
  if (lhi < hi) hi = lhi;
  if (lo >= hi) lo = hi = 0;  // empty rows are [0, 0): callers need no special case
}

}  // namespace maskext
