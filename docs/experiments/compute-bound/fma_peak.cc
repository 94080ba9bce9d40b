// Peak fp32 FMA throughput of this processor: 12 independent accumulators per thread (enough to hide the
// FMA latency on Zen 3 / Zen 4 / Intel), AVX-512 if the compiler targets it, else AVX2.
// g++ -O3 -march=native -fopenmp fma_peak.cc -o fma_peak && ./fma_peak
#include <immintrin.h>
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <initializer_list>

template <class V, V (*FMA)(V, V, V), V (*SET)(float), int W>
double run(long iters) {
  double flops = 0;
  auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : flops)
  {
    V a[12];
    for (int i = 0; i < 12; ++i) a[i] = SET(1.0f + i * 1e-3f);
    V b = SET(0.999999f), c = SET(1e-7f);
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) a[i] = FMA(a[i], b, c);
    }
    float sink = 0;
    for (int i = 0; i < 12; ++i) sink += ((float*)&a[i])[0];
    if (sink == 12345.f) printf("x");
    flops += 2.0 * W * 12 * iters;
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return flops / s / 1e9;
}
static __m256 set256(float x) { return _mm256_set1_ps(x); }
static __m256 fma256(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
#ifdef __AVX512F__
static __m512 set512(float x) { return _mm512_set1_ps(x); }
static __m512 fma512(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
#endif
int main() {
  long iters = 200000000;
  for (int threads : {1, omp_get_num_procs()}) {
    omp_set_num_threads(threads);
    double best256 = 0, best512 = 0;
    for (int r = 0; r < 3; ++r) {
      double g = run<__m256, fma256, set256, 8>(iters / 2);
      if (g > best256) best256 = g;
#ifdef __AVX512F__
      g = run<__m512, fma512, set512, 16>(iters / 4);
      if (g > best512) best512 = g;
#endif
    }
    printf("threads %d: AVX2 %.1f GFLOP/s, AVX-512 %.1f GFLOP/s\n", threads, best256, best512);
  }
}
