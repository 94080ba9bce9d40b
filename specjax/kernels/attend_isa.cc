// Attention of T new queries over a K/V cache plus the T new keys, for one instruction set (compiled
// once per ISA by build.py with SKINNY_NS and that ISA's -m flags, as skinny_isa.cc).
//
// Shapes (row-major, float32; masks one byte per element):
//   q [B, T, H, A]; kn, vn [B, T, K, A] (the new keys/values); kc, vc [B, K, S, A] (the cache as it
//   was); old_mask [B, T, S] (query t sees cache slot s); new_mask [B, T, T] (query t sees new token
//   u); out [B, T, H, A]. H = K * G: query head h reads kv head h / G.
//
// One task is one (b, kv head, block of 8 query rows r = t G + g): its rows share every key and value
// row read, and the arithmetic runs across them (a vector lane per row). Each score is one FMA chain
// over the head dimension; the softmax is two-pass (max, then exp and sums over the entries in order:
// cache slots ascending, then new tokens ascending), and an entry a row does not see adds exact zeros
// to its sums. So a query's floats depend only on what it sees, in order, not on T or on the rows it
// shares a task with: a tree node and the incremental step at its position (its ancestors then in the
// cache) give the same floats, and greedy speculative decoding sees the same logits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace specjax_skinny {
namespace SKINNY_NS {

// 8 floats, one lane per query row (GCC vector extensions: one ymm with AVX2, two xmm with SSE2;
// each lane does exactly the scalar IEEE operations, FMA-contracted where the ISA has FMA).
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

// 16 floats (one zmm with AVX-512, two ymm with AVX2): the P x V loop's columns.
typedef float v16 __attribute__((vector_size(64)));

static inline v16 vload16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The P x V loop's register block: rows x columns of v16 accumulators (AVX-512: 4 x 64 = 16 zmm;
// otherwise 2 x 32 = 8 ymm pairs' worth).
#if defined(__AVX512F__)
constexpr int PV_ROWS = 4, PV_COLS = 64;
#else
constexpr int PV_ROWS = 2, PV_COLS = 32;
#endif

// acc[g][c] += p[8 j + g] * v_j[i0 + 16 c ..] over the entries j in order, for G rows and PV_COLS columns
// (each value row's columns loaded once for the G rows).
template <int G>
static inline __attribute__((always_inline)) void pv_full(v16 (&acc)[PV_ROWS][PV_COLS / 16], const float* p,
                                                         const float* const* vrows, int64_t n, int64_t i0) {
  for (int64_t j = 0; j < n; ++j) {
    v16 v[PV_COLS / 16];
#pragma GCC unroll 4
    for (int c = 0; c < PV_COLS / 16; ++c) v[c] = vload16(vrows[j] + i0 + 16 * c);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const float pg = p[8 * j + g];
#pragma GCC unroll 4
      for (int c = 0; c < PV_COLS / 16; ++c) acc[g][c] += pg * v[c];
    }
  }
}

static inline v16 vload16n(const float* p, int64_t w) {  // w <= 16 floats, zeros after
  v16 v = {};
  std::memcpy(&v, p, sizeof(float) * size_t(w));
  return v;
}

// exp(x) for x <= 0 (a softmax's shifted scores), Cephes' expf polynomial (about 1 ulp), per lane.
static inline v8 exp_nonpositive(v8 x) {
  const v8 lo = v8{} - 87.0f;
  x = x < lo ? lo : x;  // exp(-87) ~ 1.6e-38: below it a term adds nothing to a sum with a 1 in it
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const v8 n = (x * 1.44269504088896341f + magic) - magic;
  v8 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v8 p = v8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const i8 bits = (__builtin_convertvector(n, i8) + 127) << 23;  // 2^n, n in [-126, 0]
  return p * (v8)bits;
}

constexpr int RB = 8;  // query rows per task: one v8 across them

// How many tasks `attend` splits a call into (task0, task1 index them).
int64_t attend_tasks(int64_t B, int64_t T, int64_t H, int64_t K) { return B * K * ((T * (H / K) + RB - 1) / RB); }

void attend(const float* q, const float* kn, const float* vn, const float* kc, const float* vc,
            const bool* old_mask, const bool* new_mask, float* out, int64_t B, int64_t T, int64_t H,
            int64_t K, int64_t S, int64_t A, int64_t task0, int64_t task1) {
  (void)B;
  const int64_t G = H / K, R = T * G, blocks = (R + RB - 1) / RB;  // rows r = t G + g of one kv head
  const float root = std::sqrt(float(A));
  const int64_t n_max = S + T;
  // Scratch, per thread: Q^T [A], scores [n_max], seen [n_max] as v8s (aligned by hand: a std::vector
  // of a vector-extension type need not be), and the entries' key / value rows.
  thread_local std::vector<float> scratch;
  thread_local std::vector<const float*> krows, vrows;
  const int64_t need = (A + 2 * n_max) * 8 + 8;
  if (int64_t(scratch.size()) < need) scratch.resize(need);
  if (int64_t(krows.size()) < n_max) krows.resize(n_max), vrows.resize(n_max);
  v8* qt = reinterpret_cast<v8*>((reinterpret_cast<uintptr_t>(scratch.data()) + 31) & ~uintptr_t(31));
  v8* sc = qt + A;
  v8* seen = sc + n_max;
  for (int64_t task = task0; task < task1; ++task) {
    const int64_t rb = task % blocks, kh = (task / blocks) % K, b = task / (blocks * K);
    const int64_t r0 = rb * RB, rows = std::min<int64_t>(RB, R - r0);
    const int64_t t_lo = r0 / G, t_hi = (r0 + rows - 1) / G;  // the queries t these rows belong to
    int64_t t_of[RB], off[RB];  // each row's query t and the offset of its q / out row
    for (int r = 0; r < RB; ++r) {
      const int64_t row = std::min(r0 + r, R - 1);
      t_of[r] = row / G;
      off[r] = ((b * T + t_of[r]) * H + kh * G + row % G) * A;
    }
    // Q^T [A] x 8 lanes (zeros past `rows`): a score is then one FMA chain over a, in its lane.
    for (int64_t a = 0; a < A; ++a) {
      v8 col = {};
      for (int r = 0; r < rows; ++r) col[r] = q[off[r] + a];
      qt[a] = col;
    }
    // The entries any of these rows sees: cache slots ascending, then new tokens ascending; seen[j]
    // is 1 in the lanes of the rows that see entry j.
    int64_t hi = 0;
    for (int64_t t = t_lo; t <= t_hi; ++t) {
      const bool* om = old_mask + (b * T + t) * S;
      int64_t h = S;
      for (uint64_t word; h - 8 >= hi; h -= 8) {  // 8 mask bytes at a time while they are all 0
        std::memcpy(&word, om + h - 8, 8);
        if (word) break;
      }
      while (h > hi && !om[h - 1]) --h;
      hi = std::max(hi, h);
    }
    int64_t n = 0;
    // The usual case: every query of the block sees the same cache slots (a tree's nodes and a prefill
    // chunk's tokens all see the committed prefix): then one mask row decides, a byte per slot, and an
    // entry is seen by all the block's rows (the same `seen` lanes the per-row loop below would build).
    const bool* om0 = old_mask + (b * T + t_lo) * S;
    bool same = true;
    for (int64_t t = t_lo + 1; t <= t_hi && same; ++t)
      same = std::memcmp(om0, old_mask + (b * T + t) * S, size_t(hi)) == 0;
    if (same) {
      v8 all = {};
      for (int r = 0; r < rows; ++r) all[r] = 1.f;
      for (int64_t s = 0; s < hi; ++s) {
        if (!om0[s]) continue;
        const int64_t row = ((b * K + kh) * S + s) * A;
        krows[n] = kc + row, vrows[n] = vc + row, seen[n++] = all;
      }
    }
    for (int64_t s = 0; s < (same ? 0 : hi); ++s) {
      v8 sees = {};
      bool any = false;
      for (int r = 0; r < rows; ++r) {
        const bool on = old_mask[(b * T + t_of[r]) * S + s];
        sees[r] = on ? 1.f : 0.f;
        any |= on;
      }
      if (!any) continue;
      const int64_t row = ((b * K + kh) * S + s) * A;
      krows[n] = kc + row, vrows[n] = vc + row, seen[n++] = sees;
    }
    for (int64_t u = 0; u < T; ++u) {
      v8 sees = {};
      bool any = false;
      for (int r = 0; r < rows; ++r) {
        const bool on = new_mask[(b * T + t_of[r]) * T + u];
        sees[r] = on ? 1.f : 0.f;
        any |= on;
      }
      if (!any) continue;
      const int64_t row = ((b * T + u) * K + kh) * A;
      krows[n] = kn + row, vrows[n] = vn + row, seen[n++] = sees;
    }
    // Scores [n] x 8 lanes, 8 entries at a time (independent FMA chains; a short group repeats its
    // first row in the unused chains).
    for (int64_t j0 = 0; j0 < n; j0 += 8) {
      const int64_t cnt = std::min<int64_t>(8, n - j0);
      const float* k[8];
      for (int c = 0; c < 8; ++c) k[c] = krows[j0 + (c < cnt ? c : 0)];
      v8 acc[8] = {};
      for (int64_t a = 0; a < A; ++a) {
        const v8 qa = qt[a];
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) acc[c] += k[c][a] * qa;
      }
      for (int64_t c = 0; c < cnt; ++c) sc[j0 + c] = acc[c] / root;
    }
    // Softmax over what each row sees (an entry a row does not see adds exact zeros to its sums).
    const v8 zero = {}, floor = zero - 3.0e38f;
    v8 m = floor, denom = zero;
    for (int64_t j = 0; j < n; ++j) {
      const v8 cand = seen[j] > zero ? sc[j] : floor;
      m = cand > m ? cand : m;
    }
    for (int64_t j = 0; j < n; ++j) {
      const v8 e = exp_nonpositive(seen[j] > zero ? sc[j] - m : zero - 100.f);
      sc[j] = seen[j] > zero ? e : zero;
      denom += sc[j];
    }
    // out[r, i] = sum_j p[j, r] v_j[i] / denom[r]: the block's rows (only those it has) in groups of PV_ROWS,
    // PV_COLS columns at a time in v16 accumulators (one register file's worth), each output one FMA
    // chain over the entries in order: the same multiply-adds per (row, column, entry) as when this loop
    // ran 8 columns x all 8 rows, so the same floats. A decode step has 3 rows of 8, whose wasted FMAs
    // and lane broadcasts were most of a long context's attention.
    const float* pj = reinterpret_cast<const float*>(sc);  // sc[j] lane r = pj[8 j + r]
    for (int64_t r0g = 0; r0g < rows; r0g += PV_ROWS) {
      const int gr = int(std::min<int64_t>(PV_ROWS, rows - r0g));
      for (int64_t i0 = 0; i0 < A; i0 += PV_COLS) {
        const int64_t w = std::min<int64_t>(PV_COLS, A - i0);
        const int chunks = int((w + 15) / 16);
        v16 acc[PV_ROWS][PV_COLS / 16] = {};
        if (w == PV_COLS) {
          switch (gr) {
#define PV_CASE(G) case G: if constexpr (G <= PV_ROWS) pv_full<G>(acc, pj + r0g, vrows.data(), n, i0); break;
            PV_CASE(1) PV_CASE(2) PV_CASE(3) PV_CASE(4)
#undef PV_CASE
            default: break;
          }        } else {
          for (int64_t j = 0; j < n; ++j)
            for (int c = 0; c < chunks; ++c) {
              const v16 v = vload16n(vrows[j] + i0 + 16 * c, std::min<int64_t>(16, w - 16 * c));
              for (int g = 0; g < gr; ++g) acc[g][c] += pj[8 * j + r0g + g] * v;
            }
        }
        for (int g = 0; g < gr; ++g) {
          float* o = out + off[r0g + g];
          const float d = denom[r0g + g];
          for (int c = 0; c < chunks; ++c) {  // a vector division: each lane the scalar IEEE quotient
            const v16 val = d > 0.f ? acc[g][c] / d : v16{};  // sees nothing: zeros
            std::memcpy(o + i0 + 16 * c, &val, sizeof(float) * size_t(std::min<int64_t>(16, w - 16 * c)));
          }
        }
      }
    }
  }
}

// RoPE's rotation (rotate-half convention, as HF and specjax.model.rotate): x [R, heads, A] -> out;
// cos, sin [R, A/2], one table row per token. The floats are XLA:CPU's for x * cat(cos, cos) +
// cat(-x2, x1) * cat(sin, sin): LLVM contracts it to fma(x1, c, -(x2 s)) and fma(x2, c, x1 s) where the
// processor has FMA and computes it unfused where it has not, and so does this.
void rope_rotate(const float* x, const float* cos, const float* sin, float* out, int64_t R, int64_t heads,
                 int64_t A) {
  const int64_t half = A / 2;
  for (int64_t r = 0; r < R; ++r) {
    const float* c = cos + r * half;
    const float* s = sin + r * half;
    for (int64_t h = 0; h < heads; ++h) {
      const float* x1 = x + (r * heads + h) * A;
      const float* x2 = x1 + half;
      float* o1 = out + (r * heads + h) * A;
      float* o2 = o1 + half;
      for (int64_t i = 0; i < half; ++i) {
        const float t1 = x2[i] * s[i], t2 = x1[i] * s[i];
#ifdef __FMA__
        o1[i] = __builtin_fmaf(x1[i], c[i], -t1);
        o2[i] = __builtin_fmaf(x2[i], c[i], t2);
#else
        o1[i] = x1[i] * c[i] - t1;
        o2[i] = x2[i] * c[i] + t2;
#endif
      }
    }
  }
}

}  // namespace SKINNY_NS
}  // namespace specjax_skinny
