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
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

#ifndef SKINNY_BUILD_ID
#define SKINNY_BUILD_ID "unknown"
#endif

namespace ffi = xla::ffi;

namespace specjax_skinny {

using RunF32 = void (*)(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t);
using RunBF16 = void (*)(const float*, int64_t, int64_t, int64_t, const uint16_t*, int64_t, float*, int64_t, int64_t);
using RunAttend = void (*)(const float*, const float*, const float*, const float*, const float*, const bool*,
                           const bool*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t);
using RunRope = void (*)(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t);

#define SKINNY_DECLARE(ns)                                                                           \
  namespace ns {                                                                                     \
  void run_f32(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t); \
  void run_bf16(const float*, int64_t, int64_t, int64_t, const uint16_t*, int64_t, float*, int64_t, int64_t); \
  int64_t block_rows();                                                                              \
  void attend(const float*, const float*, const float*, const float*, const float*, const bool*,      \
              const bool*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t); \
  int64_t attend_tasks(int64_t, int64_t, int64_t, int64_t);                                          \
  void rope_rotate(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t);     \
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
  RunAttend attend;
  RunRope rope;
  int64_t (*block_rows)();
};

static Isa choose_isa() {
  const char* force = std::getenv("SPECJAX_SKINNY_ISA");
  const Isa generic_isa{"generic", generic::run_f32, generic::run_bf16, generic::attend, generic::rope_rotate, generic::block_rows};
#if defined(__x86_64__)
  const Isa avx2_isa{"avx2", avx2::run_f32, avx2::run_bf16, avx2::attend, avx2::rope_rotate, avx2::block_rows};
  const Isa avx512_isa{"avx512", avx512::run_f32, avx512::run_bf16, avx512::attend, avx512::rope_rotate, avx512::block_rows};
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (force && *force) {
    if (!std::strcmp(force, "avx512") && has512) return avx512_isa;
    if (!std::strcmp(force, "avx2") && has2) return avx2_isa;
    if (!std::strcmp(force, "generic")) return generic_isa;
    return Isa{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};  // asked for what this processor lacks
  }
  if (has512) return avx512_isa;
  if (has2) return avx2_isa;
#else
  if (force && *force && std::strcmp(force, "generic")) return Isa{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
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
  int64_t chunks = 0, chunk = 0, items = 0;
};

// fn(i0, i1) over [0, items) in chunks taken from an atomic counter by the calling thread and XLA's
// intra-op pool tasks (the call finishes even if no pool thread is free to help); one thread when
// `parallel` is false.
template <typename Fn>
static void parallel_for(ffi::ThreadPool& pool, int64_t items, bool parallel, Fn fn) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (threads == 1 || !parallel || items < 2) {
    fn(int64_t(0), items);
    return;
  }
  auto job = std::make_shared<Job>();
  job->chunks = std::min<int64_t>(items, threads * 4);
  job->chunk = (items + job->chunks - 1) / job->chunks;
  job->chunks = (items + job->chunk - 1) / job->chunk;
  job->items = items;
  // A task may start after the call has returned: it holds the job alive, finds no chunk left and
  // never touches the buffers fn reads.
  auto work = [job, fn]() {
    for (int64_t c; (c = job->next.fetch_add(1, std::memory_order_relaxed)) < job->chunks;) {
      const int64_t i0 = c * job->chunk, i1 = std::min(job->items, i0 + job->chunk);
      fn(i0, i1);
      job->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule(decltype(work)(work));
  work();
  // The last chunks are running on pool threads: spin briefly, then give the core away, so that a pool
  // thread the OS has preempted (another process busy on the machine) can finish its chunk here.
  for (int spins = 0; job->done.load(std::memory_order_acquire) < job->chunks; ++spins) {
    if (spins < 4096) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

// Below this many floats of x its transposition runs on the calling thread alone.
constexpr int64_t kMinParallelTranspose = 128 * 1024;

// The leading dimension of a k-major block of `rows` rows: rows itself up to one panel row (16
// floats, one cache line), else whole lines and an odd count of them. With an even count the k rows
// a tile reads (stride ld floats) fall into a fraction of L1's sets: 128 rows (8 lines) used 8 of
// Zen 4's 64 sets, and a many-row prefill ran ~20% slower per row than 64 rows.
static int64_t leading(int64_t rows) {
  if (rows <= NB) return rows;
  const int64_t r = (rows + NB - 1) / NB * NB;
  return (r / NB) % 2 ? r : r + NB;
}

// x [M, K] -> k-major blocks of MB rows in `buf` (the kernels read x k-major): block b (rows b MB ..)
// is [K, ld] at b K ld; x itself when M == 1 (ld = 1). A large x is transposed by the pool too.
static const float* k_major(ffi::ThreadPool& pool, const float* x, int64_t M, int64_t K, int64_t MB,
                            std::vector<float>& buf, int64_t& ld) {
  ld = leading(std::min(M, MB));
  if (M == 1) return x;
  const int64_t blocks = (M + MB - 1) / MB;
  buf.resize(size_t(blocks * K * ld));
  float* xt = buf.data();
  constexpr int64_t KB = 64;  // a block of k for a block's rows: reads short runs, writes one contiguous block
  const int64_t kblocks = (K + KB - 1) / KB;
  const int64_t lead = ld;
  parallel_for(pool, blocks * kblocks, M * K >= kMinParallelTranspose, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / kblocks, k0 = (i % kblocks) * KB, k1 = std::min(K, k0 + KB);
      const int64_t m0 = b * MB, rows = std::min(MB, M - m0);
      float* xb = xt + b * K * lead;
      for (int64_t m = 0; m < rows; ++m)
        for (int64_t k = k0; k < k1; ++k) xb[k * lead + m] = x[(m0 + m) * K + k];
    }
  });
  return xt;
}

template <typename W, typename Run>
static void matmul(ffi::ThreadPool& pool, Run run, int64_t MB, const float* x, int64_t M, int64_t K, const W* w,
                   int64_t N, float* y) {
  const int64_t panels = (N + NB - 1) / NB;
  const int64_t bytes = panels * K * NB * int64_t(sizeof(W));
  thread_local std::vector<float> buf;  // per calling thread: XLA may run two calls at once
  int64_t ld;
  const float* xt = k_major(pool, x, M, K, MB, buf, ld);
  parallel_for(pool, panels, bytes >= kMinParallelBytes,
               [run, xt, M, K, ld, w, N, y](int64_t p0, int64_t p1) { run(xt, M, K, ld, w, N, y, p0, p1); });
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
    matmul(pool, chosen.f32, chosen.block_rows(), x.typed_data(), M, K, w.typed_data(), n, y->typed_data());
  } else {
    matmul(pool, chosen.bf16, chosen.block_rows(), x.typed_data(), M, K, reinterpret_cast<const uint16_t*>(w.typed_data()), n,
           y->typed_data());
  }
  return ffi::Error::Success();
}

// Below this many multiply-adds (T H S A) one thread is faster than waking the pool.
constexpr int64_t kMinParallelAttend = 256 * 1024;

// One layer's attention step: rotates q and the new keys by RoPE (when cos / sin have A/2 columns; with 0
// columns they are used as given), attends over the cache as it was plus the new keys, then writes the
// new keys and values into the caches at their slots (0 <= slot < S; others are written nowhere). The
// caches' results alias their operands (specjax.skinny.attend), so the writes are in place; were XLA
// to give fresh buffers, the old caches are copied into them first.
static ffi::Error attend_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kn,
                              ffi::Buffer<ffi::F32> vn, ffi::Buffer<ffi::F32> kc, ffi::Buffer<ffi::F32> vc,
                              ffi::Buffer<ffi::PRED> old_mask, ffi::Buffer<ffi::PRED> new_mask,
                              ffi::Buffer<ffi::S32> slots, ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                              ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> kc_out,
                              ffi::ResultBuffer<ffi::F32> vc_out) {
  const Isa& chosen = isa();
  if (!chosen.name) return ffi::Error::InvalidArgument("attend: SPECJAX_SKINNY_ISA names an instruction set this processor lacks");
  auto qd = q.dimensions(), kd = kn.dimensions(), cd = kc.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || cd.size() != 4)
    return ffi::Error::InvalidArgument("attend: q, k, v must be [B, T, heads, A] and the caches [B, K, S, A]");
  const int64_t B = qd[0], T = qd[1], H = qd[2], A = qd[3], K = kd[2], S = cd[2];
  auto same = [](auto d, std::initializer_list<int64_t> want) {
    if (d.size() != want.size()) return false;
    size_t i = 0;
    for (int64_t w : want)
      if (d[i++] != w) return false;
    return true;
  };
  const auto rd = cos.dimensions();
  const int64_t half = rd.size() == 3 ? rd[2] : -1;
  if (K == 0 || H % K || !same(kd, {B, T, K, A}) || !same(vn.dimensions(), {B, T, K, A}) ||
      !same(cd, {B, K, S, A}) || !same(vc.dimensions(), {B, K, S, A}) ||
      !same(old_mask.dimensions(), {B, T, S}) || !same(new_mask.dimensions(), {B, T, T}) ||
      !same(slots.dimensions(), {B, T}) || !(half == 0 || (A % 2 == 0 && half == A / 2)) ||
      !same(rd, {B, T, half}) || !same(sin.dimensions(), {B, T, half}) || !same(out->dimensions(), {B, T, H, A}) ||
      !same(kc_out->dimensions(), {B, K, S, A}) || !same(vc_out->dimensions(), {B, K, S, A}))
    return ffi::Error::InvalidArgument("attend: shapes disagree (q [B,T,H,A], k/v [B,T,K,A], caches [B,K,S,A], "
                                       "masks [B,T,S] and [B,T,T], slots [B,T], cos/sin [B,T,A/2] or [B,T,0], "
                                       "H a multiple of K)");
  const float *qp = q.typed_data(), *knp = kn.typed_data(), *vnp = vn.typed_data(), *kcp = kc.typed_data(),
              *vcp = vc.typed_data();
  float *kco = kc_out->typed_data(), *vco = vc_out->typed_data();
  const size_t cache_bytes = size_t(B * K * S * A) * sizeof(float);
  if (kco != kcp) std::memcpy(kco, kcp, cache_bytes);  // not aliased: start from the old cache
  if (vco != vcp) std::memcpy(vco, vcp, cache_bytes);
  if (B * T == 0) return ffi::Error::Success();
  thread_local std::vector<float> qbuf, kbuf;  // per calling thread: XLA may run two calls at once
  if (half > 0) {
    qbuf.resize(size_t(B * T * H * A));
    kbuf.resize(size_t(B * T * K * A));
    chosen.rope(qp, cos.typed_data(), sin.typed_data(), qbuf.data(), B * T, H, A);
    chosen.rope(knp, cos.typed_data(), sin.typed_data(), kbuf.data(), B * T, K, A);
    qp = qbuf.data();
    knp = kbuf.data();
  }
  if (H > 0) {
    const int64_t tasks = generic::attend_tasks(B, T, H, K);  // the same in every ISA's attend
    const bool *om = old_mask.typed_data(), *nm = new_mask.typed_data();
    float* o = out->typed_data();
    RunAttend run = chosen.attend;
    // Reads the caches before any write below (the writes may be in place).
    parallel_for(pool, tasks, B * T * H * S * A >= kMinParallelAttend,
                 [=](int64_t t0, int64_t t1) { run(qp, knp, vnp, kcp, vcp, om, nm, o, B, T, H, K, S, A, t0, t1); });
  }
  const int32_t* sl = slots.typed_data();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t slot = sl[b * T + t];
      if (slot < 0 || slot >= S) continue;  // written nowhere (a row not running, or past the cache)
      for (int64_t kh = 0; kh < K; ++kh) {
        const int64_t src = ((b * T + t) * K + kh) * A, dst = ((b * K + kh) * S + slot) * A;
        std::memcpy(kco + dst, knp + src, size_t(A) * sizeof(float));
        std::memcpy(vco + dst, vnp + src, size_t(A) * sizeof(float));
      }
    }
  return ffi::Error::Success();
}

}  // namespace specjax_skinny

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecjaxAttendF32, specjax_skinny::attend_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

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
