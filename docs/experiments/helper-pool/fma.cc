#include <immintrin.h>
#include <thread>
#include <chrono>
#include <cstdio>
#include <vector>
float run(long n) {
  __m256 a[12]; for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(i * 0.001f);
  __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(0.0001f);
  for (long i = 0; i < n; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) a[j] = _mm256_fmadd_ps(a[j], b, c);
  }
  float s = 0; for (int i = 0; i < 12; ++i) { float t[8]; _mm256_storeu_ps(t, a[i]); s += t[0]; } return s;
}
int main() {
  long n = 200000000;
  for (int th : {1, 2}) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> v; std::vector<float> r(th);
    for (int i = 0; i < th; ++i) v.emplace_back([&, i] { r[i] = run(n); });
    for (auto& x : v) x.join();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("%d threads: %.3f s, %.1f GFLOP/s total (%f)\n", th, s, th * n * 12.0 * 16 / s / 1e9, r[0]);
  }
}
