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
};

MASKEXT_HD int64_t load_length(const void* p, bool is64, int64_t b) {
  return is64 ? static_cast<const int64_t*>(p)[b]
              : static_cast<int64_t>(static_cast<const int32_t*>(p)[b]);
}

MASKEXT_HD int64_t clamp_i64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Visible keys [lo, hi) of query row i of batch element b; lo == hi == 0 means
// the row is fully masked. Always 0 <= lo, hi <= k_len, whatever the lengths hold
// (lengths are clamped to [0, k_len]: a length past the row means "all real").
//
// Alignment: query i sits at key position p = i + (k_len - q_len), i.e.
// causal and window masks are aligned to the bottom-right corner of the
// padded (q_len, k_len) block, as flash-attn (>= 2.1) and
// torch.nn.attention.bias.causal_lower_right. With q_len == k_len this is
// "query i sees keys j <= i". Window (left, right) keeps keys
// p - left <= j <= p + right.
MASKEXT_HD void row_bounds(const RowSpec& s, int64_t b, int64_t i, int64_t& lo, int64_t& hi) {
  lo = 0;
  hi = s.k_len;
  if (s.q_lengths != nullptr && i >= load_length(s.q_lengths, s.q_lengths64, b)) {
    hi = 0;
    return;
  }
  if (s.lengths != nullptr) {
    const int64_t len = clamp_i64(load_length(s.lengths, s.lengths64, b), 0, s.k_len);
    if (s.left_pad) lo = s.k_len - len; else hi = len;
  }
  const int64_t p = i + (s.k_len - s.q_len);
  if (s.causal && p + 1 < hi) hi = p + 1;
  if (s.window_left >= 0 && p - s.window_left > lo) lo = p - s.window_left;
  if (s.window_right >= 0 && p + s.window_right + 1 < hi) hi = p + s.window_right + 1;
  if (lo >= hi) lo = hi = 0;  // empty rows are [0, 0): callers need no special case
}

}  // namespace maskext
