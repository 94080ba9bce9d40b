// Skinny matmul y[M, N] = x[M, K] @ W[K, N] over a panel-packed W, for one instruction set.
//
// Compiled once per ISA by build.py with SKINNY_NS and SKINNY_MR set and that ISA's -m flags,
// so every variant comes from this one source: the vector type below is one zmm (AVX-512), one
// ymm (AVX2 + FMA), one xmm (SSE2) or a scalar (other processors), and a 16-column panel row is
// 1, 2, 4 or 16 of them.
//
// Packed layout: W [K, N] is stored as panels P [NP, K, 16], P[p, k, j] = W[k, 16 p + j] (zero
// past N). A 16-column panel is contiguous, so a micro-tile streams it once while MR rows of x
// accumulate in registers. x comes k-major, xt [K, M] (skinny.cc transposes it once per call): the
// values a tile broadcasts at one k share a cache line, so x is read as one more sequential stream
// instead of MR streams with stride K that, beside the panel, overflow L1 from ~12 rows on.
#include <cstdint>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace specjax_skinny {
namespace SKINNY_NS {

constexpr int NB = 16;  // panel width (columns)

// One vector register: W floats. Loads of bf16 widen exactly (the 16 bits go to the top of an f32).
#if defined(__AVX512F__)
typedef __m512 vec;
constexpr int W = 16;
static inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
static inline vec vload(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline vec vset1(float s) { return _mm512_set1_ps(s); }
static inline vec vzero() { return _mm512_setzero_ps(); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vec;
constexpr int W = 8;
static inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
static inline vec vload(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline vec vset1(float s) { return _mm256_set1_ps(s); }
static inline vec vzero() { return _mm256_setzero_ps(); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
#elif defined(__SSE2__)
typedef __m128 vec;
constexpr int W = 4;
static inline vec vload(const float* p) { return _mm_loadu_ps(p); }
static inline vec vload(const uint16_t* p) {
  return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i*)p)));
}
static inline vec vset1(float s) { return _mm_set1_ps(s); }
static inline vec vzero() { return _mm_setzero_ps(); }
static inline vec vfma(vec a, vec b, vec c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
static inline void vstore(float* p, vec v) { _mm_storeu_ps(p, v); }
#else  // portable scalar code (the compiler may vectorize it)
typedef float vec;
constexpr int W = 1;
static inline vec vload(const float* p) { return *p; }
static inline vec vload(const uint16_t* p) {
  uint32_t u = uint32_t(*p) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline vec vset1(float s) { return s; }
static inline vec vzero() { return 0.f; }
static inline vec vfma(vec a, vec b, vec c) { return a * b + c; }
static inline void vstore(float* p, vec v) { *p = v; }
#endif
constexpr int P = NB / W;  // registers per panel row
#ifndef SKINNY_PREFETCH
#define SKINNY_PREFETCH 64
#endif
#ifndef SKINNY_KB
#define SKINNY_KB 128  // k per block when several tiles share a panel (KB x 64 bytes of f32 panel)
#endif
#ifndef SKINNY_FAR
#define SKINNY_FAR 256  // k rows ahead for the second, L2-only prefetch (16 KB of f32 panel)
#endif
#ifndef SKINNY_PREFETCH_BLOCKED
#define SKINNY_PREFETCH_BLOCKED (SKINNY_KB + 64)
#endif

// y[r, 0:nc] = sum_k x[r, k] * panel[k, 0:nc] for r < R: R x P accumulators stay in registers while
// the panel streams through once. Each output is one FMA chain over k in order, whatever R is, so a
// row's result does not depend on how many rows share the call (a tree verification computes the same
// floats as an incremental step). Few rows leave the FMA units idle, but they are far faster than
// memory then.
// acc[r][:] += sum_{k0 <= k < k1} x[r, k] * panel[k, 0:16] for r < R, one FMA chain per output over k
// in order; the panel is prefetched `ahead` k rows on into L1 (a k row of a float panel is one 64-byte
// line) and SKINNY_FAR rows on into L2 only, to keep the memory stream busy while the FMAs run. L1
// tracks few misses at once; with only the L1 prefetch a core kept too few lines in flight once 8-16
// rows of FMAs slowed the loop (Zen 4, scripts/ab_kernel.py: 16 rows 0.87x, 8 rows 0.95x, 1-5 level).
template <int R, int64_t ahead, typename WT>
static inline __attribute__((always_inline)) void fma_rows(vec (&acc)[R][P], const float* __restrict x, int64_t ldk,
                                                          const WT* __restrict panel, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k) {
    __builtin_prefetch(panel + (k + ahead) * NB);
    __builtin_prefetch(panel + (k + SKINNY_FAR) * NB, 0, 2);
    vec w[P];
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) w[j] = vload(panel + k * NB + j * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vec xb = vset1(x[k * ldk + r]);
#pragma GCC unroll 16
      for (int j = 0; j < P; ++j) acc[r][j] = vfma(xb, w[j], acc[r][j]);
    }
  }
}

// y[r, 0:nc] = sum_k x[r, k] * panel[k, 0:nc] for r < R: R x P accumulators stay in registers while
// the panel streams through once. Each output is one FMA chain over k in order, whatever R is, so a
// row's result does not depend on how many rows share the call (a tree verification computes the same
// floats as an incremental step). Few rows leave the FMA units idle, but they are far faster than
// memory then.
template <int R, typename WT>
static inline __attribute__((always_inline)) void tile(const float* __restrict x, int64_t ldk,
                                                      const WT* __restrict panel, int64_t K,
                                                      float* __restrict y, int64_t ldy, int nc) {
  vec acc[R][P];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) acc[r][j] = vzero();
  fma_rows<R, SKINNY_PREFETCH>(acc, x, ldk, panel, 0, K);  // 4 KB ahead
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    if (nc == NB) {
#pragma GCC unroll 16
      for (int j = 0; j < P; ++j) vstore(y + r * ldy + j * W, acc[r][j]);
    } else {
      float tmp[NB];
      for (int j = 0; j < P; ++j) vstore(tmp + j * W, acc[r][j]);
      std::memcpy(y + r * ldy, tmp, sizeof(float) * nc);
    }
  }
}

// y[r, 0:16] partial sums for r < R over k in [k0, k1), carried in acc_buf [R][16] between calls
// (zeros when k0 == 0): the same FMA chain over k in order as `tile`, so the floats are the same.
template <int R, typename WT>
static inline __attribute__((always_inline)) void tile_k(const float* __restrict x, int64_t ldk,
                                                        const WT* __restrict panel, int64_t k0, int64_t k1,
                                                        int64_t K, float* __restrict acc_buf) {
  vec acc[R][P];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) acc[r][j] = k0 == 0 ? vzero() : vload(acc_buf + r * NB + j * W);
  // Ahead of the block, so the memory stream keeps going while later tiles reuse it from L1.
  fma_rows<R, SKINNY_PREFETCH_BLOCKED>(acc, x, ldk, panel, k0, k1);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) vstore(acc_buf + r * NB + j * W, acc[r][j]);
}

// All `rows` rows against one panel, in as few tiles as possible, of near-equal size (8 rows as 4 + 4
// rather than 6 + 2: a tile of few rows has too few independent FMA chains to hide their latency).
// One tile streams the panel once from memory. Several tiles go through it together, a block of KB k
// at a time (the block stays in L1 while each tile takes its turn): one tile after another over the
// whole panel would read it from memory once and then from cache with the memory stream idle, which
// made 8 rows cost ~1.4x 6 rows.
template <int MR, typename W>
static void tile_rows(const float* x, int64_t ldk, int64_t rows, int64_t K, const W* panel, float* y, int64_t N,
                      int nc) {
  const int64_t tiles = (rows + MR - 1) / MR;
  if (tiles == 1) {
    switch (rows) {
#define SKINNY_ROWS(n) case n: if constexpr (n <= MR) tile<n>(x, ldk, panel, K, y, N, nc); break;
      SKINNY_ROWS(1) SKINNY_ROWS(2) SKINNY_ROWS(3) SKINNY_ROWS(4) SKINNY_ROWS(5) SKINNY_ROWS(6)
      SKINNY_ROWS(7) SKINNY_ROWS(8) SKINNY_ROWS(9) SKINNY_ROWS(10) SKINNY_ROWS(11) SKINNY_ROWS(12)
      SKINNY_ROWS(13) SKINNY_ROWS(14) SKINNY_ROWS(15) SKINNY_ROWS(16)
#undef SKINNY_ROWS
      default: break;
    }
    return;
  }
  alignas(64) float acc[MR * 8][NB];  // rows <= MB = 8 MR (run_panels)
  for (int64_t k0 = 0; k0 < K; k0 += SKINNY_KB) {
    const int64_t k1 = K - k0 < SKINNY_KB ? K : k0 + SKINNY_KB;
    for (int64_t t = 0, m = 0; t < tiles; ++t) {
      const int r = int((rows - m) / (tiles - t));  // rows left spread over the tiles left
      switch (r) {
#define SKINNY_ROWS(n) case n: if constexpr (n <= MR) tile_k<n>(x + m, ldk, panel, k0, k1, K, acc[m]); break;
        SKINNY_ROWS(1) SKINNY_ROWS(2) SKINNY_ROWS(3) SKINNY_ROWS(4) SKINNY_ROWS(5) SKINNY_ROWS(6)
        SKINNY_ROWS(7) SKINNY_ROWS(8) SKINNY_ROWS(9) SKINNY_ROWS(10) SKINNY_ROWS(11) SKINNY_ROWS(12)
        SKINNY_ROWS(13) SKINNY_ROWS(14) SKINNY_ROWS(15) SKINNY_ROWS(16)
#undef SKINNY_ROWS
        default: break;
      }
      m += r;
    }
  }
  for (int64_t r = 0; r < rows; ++r) std::memcpy(y + r * N, acc[r], sizeof(float) * nc);
}

// Panels [p0, p1) of y = x @ W, all M rows, x given k-major in blocks of MB rows: block b (rows
// b MB .. b MB + MB - 1) is [K, ld] at xt + b K ld (skinny.cc's k_major).
template <int MR, typename W>
static void run_panels(const float* xt, int64_t M, int64_t K, int64_t ld, const W* panels, int64_t N, float* y,
                       int64_t p0, int64_t p1) {
  constexpr int64_t MB = MR * 8;
  for (int64_t m0 = 0, b = 0; m0 < M; m0 += MB, ++b) {
    const int64_t rows = M - m0 < MB ? M - m0 : MB;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t left = N - p * NB;
      const int nc = left < NB ? int(left) : NB;
      tile_rows<MR>(xt + b * K * ld, ld, rows, K, panels + p * K * NB, y + m0 * N + p * NB, N, nc);
    }
  }
}

// Rows per k-major block of x (run_panels' MB).
int64_t block_rows() { return int64_t(SKINNY_MR) * 8; }

void run_f32(const float* xt, int64_t M, int64_t K, int64_t ld, const float* panels, int64_t N, float* y,
             int64_t p0, int64_t p1) {
  run_panels<SKINNY_MR>(xt, M, K, ld, panels, N, y, p0, p1);
}

void run_bf16(const float* xt, int64_t M, int64_t K, int64_t ld, const uint16_t* panels, int64_t N, float* y,
              int64_t p0, int64_t p1) {
  run_panels<SKINNY_MR>(xt, M, K, ld, panels, N, y, p0, p1);
}

}  // namespace SKINNY_NS
}  // namespace specjax_skinny
