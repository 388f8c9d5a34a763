// Quantize + pack speed on Stable Diffusion 1.5's UNet weight shapes (bench/sd15_unet_shapes.txt,
// every tensor of rank >= 2: 282 tensors, 859 M weights), from f32 and from f16, with 1 and 2
// threads; next to memcpy of the same bytes with the same threads in the same run.
//
//   bench_quant_speed SHAPES_FILE [SEARCH_STRIDE [FORMAT_SUBSTRING]]
// The error-minimizing grid is timed on every SEARCH_STRIDE-th tensor (default 8) to keep the
// run short; its GB/s is computed over exactly the bytes it processed.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "arrowquant/quantize.h"

namespace {

using Clock = std::chrono::steady_clock;
using arrowquant::DType;

struct Tensor {
  std::string name;
  std::vector<uint64_t> shape;
  uint64_t n = 0;
  std::vector<float> f32;
  std::vector<uint16_t> f16;
};

uint64_t Next(uint64_t& s) {  // xorshift64*
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return s * 2685821657736338717ull;
}

std::vector<Tensor> Load(const std::string& path) {
  std::ifstream in(path);
  std::vector<Tensor> out;
  std::string line;
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    Tensor t;
    ss >> t.name;
    uint64_t d;
    while (ss >> d) t.shape.push_back(d);
    if (t.shape.size() < 2) continue;
    t.n = 1;
    for (auto x : t.shape) t.n *= x;
    t.f32.resize(t.n);
    t.f16.resize(t.n);
    for (uint64_t i = 0; i < t.n; ++i) {
      // Sum of four uniforms: close enough to a Gaussian for timing, and fast to make.
      float acc = 0;
      for (int k = 0; k < 4; ++k) acc += static_cast<float>(Next(seed) >> 40) / 16777216.0f;
      t.f32[i] = (acc - 2.0f) * 0.035f;
      t.f16[i] = arrowquant::F32ToF16Bits(t.f32[i]);
    }
    out.push_back(std::move(t));
  }
  return out;
}

template <typename F>
double Time(F&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void ParallelMemcpy(std::byte* dst, const std::byte* src, size_t n, int threads) {
  if (threads <= 1) {
    std::memcpy(dst, src, n);
    return;
  }
  std::vector<std::thread> pool;
  const size_t chunk = (n + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    const size_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    pool.emplace_back([=] { std::memcpy(dst + b, src + b, e - b); });
  }
  std::memcpy(dst, src, std::min(n, chunk));
  for (auto& p : pool) p.join();
}

struct Row {
  double gbs = 0, memcpy_gbs = 0;
};

Row Run(const std::vector<Tensor>& ts, DType dtype, const arrowquant::QuantSpec& spec, int threads,
        size_t stride) {
  uint64_t bytes = 0, max_bytes = 0;
  for (size_t i = 0; i < ts.size(); i += stride) {
    const uint64_t b = ts[i].n * (dtype == DType::kF32 ? 4 : 2);
    bytes += b;
    max_bytes = std::max(max_bytes, b);
  }
  std::vector<std::byte> dst(max_bytes);
  double t_copy = 1e30, t_q = 1e30;
  for (int rep = 0; rep < 2; ++rep) {
    t_copy = std::min(
        t_copy, Time([&] {
          for (size_t i = 0; i < ts.size(); i += stride) {
            const auto* src = dtype == DType::kF32
                                  ? reinterpret_cast<const std::byte*>(ts[i].f32.data())
                                  : reinterpret_cast<const std::byte*>(ts[i].f16.data());
            ParallelMemcpy(dst.data(), src, ts[i].n * (dtype == DType::kF32 ? 4 : 2), threads);
          }
        }));
    t_q = std::min(t_q, Time([&] {
                     for (size_t i = 0; i < ts.size(); i += stride) {
                       const auto& t = ts[i];
                       arrowquant::TensorView v{
                           t.name, dtype, t.shape,
                           dtype == DType::kF32 ? std::as_bytes(std::span<const float>(t.f32))
                                                : std::as_bytes(std::span<const uint16_t>(t.f16))};
                       auto q = arrowquant::Quantize(v, spec, {threads});
                       if (!q.ok()) {
                         std::fprintf(stderr, "%s\n", q.status().ToString().c_str());
                         std::exit(1);
                       }
                     }
                   }));
  }
  return {bytes / t_q / 1e9, bytes / t_copy / 1e9};
}

}  // namespace

int main(int argc, char** argv) {
  const std::string shapes = argc > 1 ? argv[1] : "bench/sd15_unet_shapes.txt";
  const size_t stride = argc > 2 ? std::stoul(argv[2]) : 8;
  const std::string only = argc > 3 ? argv[3] : "";  // e.g. "q7": only the formats naming it
  const auto ts = Load(shapes);
  uint64_t n = 0;
  for (const auto& t : ts) n += t.n;
  std::printf("SD1.5 UNet weights: %zu tensors, %.1f M weights (%.2f GB as f32)\n", ts.size(),
              n / 1e6, n * 4 / 1e9);
  using arrowquant::Grid, arrowquant::QuantSpec, arrowquant::Scheme, arrowquant::ScaleStorage;
  const QuantSpec minmax{4, 128, Scheme::kAsymmetric, Grid::kMinMax, ScaleStorage::kF16};
  const QuantSpec search{4, 128, Scheme::kAsymmetric, Grid::kSearch, ScaleStorage::kF16};
  const QuantSpec rec = QuantSpec::Recommended(4);
  std::printf("%-34s %-5s %7s %10s %12s %7s\n", "format", "input", "threads", "GB/s in",
              "memcpy GB/s", "ratio");
  for (const auto& [spec, stride_used] :
       {std::pair{minmax, size_t{1}}, std::pair{search, stride}, std::pair{rec, stride}}) {
    if (spec.ToString().find(only) == std::string::npos) continue;
    for (DType dt : {DType::kF32, DType::kF16}) {
      for (int threads : {1, 2}) {
        const Row r = Run(ts, dt, spec, threads, stride_used);
        std::printf("%-34s %-5s %7d %10.3f %12.2f %7.3f%s\n", spec.ToString().c_str(),
                    dt == DType::kF32 ? "f32" : "f16", threads, r.gbs, r.memcpy_gbs,
                    r.gbs / r.memcpy_gbs, stride_used > 1 ? "  (subset)" : "");
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
