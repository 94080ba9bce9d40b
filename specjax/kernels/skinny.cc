// XLA FFI entry points of the skinny matmul: y[..., N] = x[..., K] @ W[K, N], W panel-packed
// (see skinny_isa.cc), f32 or bf16 weights, f32 activations and accumulation.
//
// The instruction set is chosen once, at load, from what the processor supports (AVX-512F, AVX2 +
// FMA, or the baseline: SSE2 on x86-64); SPECJAX_SKINNY_ISA=avx512|avx2|generic forces one (tests use it). The N panels are
// split over XLA's intra-op thread pool: the calling thread and pool tasks take chunks of panels
// from an atomic counter, so the call finishes even if no pool thread is free to help.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "xla/ffi/api/ffi.h"

#ifndef SKINNY_BUILD_ID
#define SKINNY_BUILD_ID "unknown"
#endif

namespace ffi = xla::ffi;

namespace specjax_skinny {

using RunF32 = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t);
using RunBF16 = void (*)(const float*, int64_t, int64_t, const uint16_t*, int64_t, float*, int64_t, int64_t);

#define SKINNY_DECLARE(ns)                                                                           \
  namespace ns {                                                                                     \
  void run_f32(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t);    \
  void run_bf16(const float*, int64_t, int64_t, const uint16_t*, int64_t, float*, int64_t, int64_t); \
  }
SKINNY_DECLARE(generic)
#if defined(__x86_64__)
SKINNY_DECLARE(avx2)
SKINNY_DECLARE(avx512)
#endif

struct Isa {
  const char* name;
  RunF32 f32;
  RunBF16 bf16;
};

static Isa choose_isa() {
  const char* force = std::getenv("SPECJAX_SKINNY_ISA");
  const Isa generic_isa{"generic", generic::run_f32, generic::run_bf16};
#if defined(__x86_64__)
  const Isa avx2_isa{"avx2", avx2::run_f32, avx2::run_bf16};
  const Isa avx512_isa{"avx512", avx512::run_f32, avx512::run_bf16};
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (force && *force) {
    if (!std::strcmp(force, "avx512") && has512) return avx512_isa;
    if (!std::strcmp(force, "avx2") && has2) return avx2_isa;
    if (!std::strcmp(force, "generic")) return generic_isa;
    return Isa{nullptr, nullptr, nullptr};  // asked for what this processor lacks
  }
  if (has512) return avx512_isa;
  if (has2) return avx2_isa;
#else
  if (force && *force && std::strcmp(force, "generic")) return Isa{nullptr, nullptr, nullptr};
#endif
  return generic_isa;
}

static const Isa& isa() {
  static const Isa chosen = choose_isa();
  return chosen;
}

constexpr int64_t NB = 16;
// Below this many weight bytes per call a single thread is faster than waking the pool.
constexpr int64_t kMinParallelBytes = 192 * 1024;

struct Job {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t chunks = 0, chunk = 0, panels = 0;
};

template <typename W, typename Run>
static void matmul(ffi::ThreadPool& pool, Run run, const float* x, int64_t M, int64_t K, const W* w,
                   int64_t N, float* y) {
  const int64_t panels = (N + NB - 1) / NB;
  const int64_t bytes = panels * K * NB * int64_t(sizeof(W));
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (threads == 1 || bytes < kMinParallelBytes || panels < 2) {
    run(x, M, K, w, N, y, 0, panels);
    return;
  }
  auto job = std::make_shared<Job>();
  job->chunks = std::min<int64_t>(panels, threads * 4);
  job->chunk = (panels + job->chunks - 1) / job->chunks;
  job->chunks = (panels + job->chunk - 1) / job->chunk;
  job->panels = panels;
  // A task may start after the call has returned: it holds the job alive, finds no chunk left and
  // never touches x, w or y.
  auto work = [job, run, x, M, K, w, N, y]() {
    for (int64_t c; (c = job->next.fetch_add(1, std::memory_order_relaxed)) < job->chunks;) {
      const int64_t p0 = c * job->chunk, p1 = std::min(job->panels, p0 + job->chunk);
      run(x, M, K, w, N, y, p0, p1);
      job->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (job->done.load(std::memory_order_acquire) < job->chunks) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
}

template <ffi::DataType WT>
static ffi::Error impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<WT> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t n) {
  const Isa& chosen = isa();
  if (!chosen.name) return ffi::Error::InvalidArgument("skinny matmul: SPECJAX_SKINNY_ISA names an instruction set this processor lacks");
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() < 1 || wd.size() != 3 || wd[2] != NB)
    return ffi::Error::InvalidArgument("skinny matmul: x must be [..., K] and w packed [NP, K, 16]");
  const int64_t K = xd.back();
  if (wd[1] != K) return ffi::Error::InvalidArgument("skinny matmul: x's last dimension differs from the weight's K");
  if (n <= 0 || (n + NB - 1) / NB != wd[0]) return ffi::Error::InvalidArgument("skinny matmul: n does not match the panel count");
  const int64_t M = x.element_count() / std::max<int64_t>(K, 1);
  if (y->element_count() != M * n) return ffi::Error::InvalidArgument("skinny matmul: output is not [..., n]");
  if (M == 0) return ffi::Error::Success();
  if (K == 0) {
    std::memset(y->typed_data(), 0, sizeof(float) * M * n);
    return ffi::Error::Success();
  }
  if constexpr (WT == ffi::F32) {
    matmul(pool, chosen.f32, x.typed_data(), M, K, w.typed_data(), n, y->typed_data());
  } else {
    matmul(pool, chosen.bf16, x.typed_data(), M, K, reinterpret_cast<const uint16_t*>(w.typed_data()), n,
           y->typed_data());
  }
  return ffi::Error::Success();
}

}  // namespace specjax_skinny

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecjaxSkinnyF32, specjax_skinny::impl<ffi::F32>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("n"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecjaxSkinnyBF16, specjax_skinny::impl<ffi::BF16>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("n"));

// The instruction set in use, for the one-line report ("avx512", "avx2", "generic"; null if forced to
// one this processor lacks).
extern "C" const char* specjax_skinny_isa() { return specjax_skinny::isa().name; }

// Which sources and jaxlib headers this library was built from (build.py's source_hash).
extern "C" const char* specjax_skinny_build_id() { return SKINNY_BUILD_ID; }
