// Standalone: 30 layers of the default LLM's matmuls + head through run_f32, 2 threads.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <thread>
#include <vector>
#include <algorithm>
#include <mutex>
#include <condition_variable>
std::mutex mu; std::condition_variable cv; bool SLEEP = getenv("SLEEP") != nullptr;
namespace specjax_skinny { namespace avx2 {
void run_f32(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t);
}}
using namespace specjax_skinny;
struct Mat { int64_t K, N; std::vector<float> p; };
std::atomic<int64_t> gen{0}, nextc{0}, donec{0};
const float* gx; const Mat* gm; float* gy; int64_t gM, gchunks, gchunk, gnp;
std::atomic<bool> quit{false};
void work() {
  for (int64_t c; (c = nextc.fetch_add(1)) < gchunks;) {
    int64_t p0 = c * gchunk, p1 = std::min(gnp, p0 + gchunk);
    avx2::run_f32(gx, gM, gm->K, gm->p.data(), gm->N, gy, p0, p1);
    donec.fetch_add(1);
  }
}
void worker() {
  int64_t seen = 0;
  while (!quit) {
    if (SLEEP) { std::unique_lock<std::mutex> l(mu); cv.wait(l, [&] { return gen.load() != seen || quit; }); }
    int64_t g = gen.load(); if (g != seen) { seen = g; work(); } else __builtin_ia32_pause(); }
}
void mm(const float* x, int64_t M, const Mat& m, float* y) {
  gx = x; gm = &m; gy = y; gM = M; gnp = (m.N + 15) / 16;
  gchunks = std::min<int64_t>(gnp, 8); gchunk = (gnp + gchunks - 1) / gchunks; gchunks = (gnp + gchunk - 1) / gchunk;
  donec = 0; nextc = 0; if (SLEEP) { std::lock_guard<std::mutex> l(mu); gen.fetch_add(1); cv.notify_one(); } else gen.fetch_add(1);
  work();
  while (donec.load() < gchunks) __builtin_ia32_pause();
}
int main(int argc, char** argv) {
  std::vector<Mat> mats;
  auto add = [&](int64_t K, int64_t N) { Mat m{K, N, std::vector<float>(((N + 15) / 16) * 16 * K)}; for (auto& v : m.p) v = (rand() % 100) * 1e-4f; mats.push_back(std::move(m)); };
  for (int l = 0; l < 30; ++l) { add(576, 960); add(576, 576); add(576, 3072); add(1536, 576); }
  add(576, 49152);
  std::thread th(worker);
  std::vector<float> x(64 * 3072, 0.01f), y(64 * 49152);
  std::vector<int> sizes = {1, 4, 8, 12, 16};
  if (argc > 1) { sizes.clear(); for (int i = 1; i < argc; ++i) sizes.push_back(atoi(argv[i])); }
  std::vector<std::vector<double>> t(sizes.size());
  for (int rep = 0; rep < 12; ++rep)
    for (size_t si = 0; si < sizes.size(); ++si) {
      auto t0 = std::chrono::steady_clock::now();
      for (auto& m : mats) mm(x.data(), sizes[si], m, y.data());
      t[si].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
    }
  double base = 0;
  for (size_t si = 0; si < sizes.size(); ++si) {
    auto v = t[si]; std::sort(v.begin(), v.end());
    if (si == 0) base = v[0];
    printf("M=%d min %.1f med %.1f ms (%.2fx)  ", sizes[si], v[0], v[v.size() / 2], v[0] / base);
  }
  printf("\n");
  { std::lock_guard<std::mutex> l(mu); quit = true; cv.notify_all(); } th.join();
}
