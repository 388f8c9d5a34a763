// Reads every tensor of a >= 1 GB SafeTensors checkpoint through the reader (mmap, validated
// header, per-tensor spans) and, in the same run, the same file with plain sequential read(2).
// Both paths fold every byte into the same checksum, so both touch all data and the results
// must agree. The file is read once first so that both runs see the page cache warm.
//
//   bench_read_throughput [FILE] [GIB]   (FILE is created with GIB GiB of F16 tensors if absent)
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "arrowquant/checkpoint.h"

namespace {

using Clock = std::chrono::steady_clock;

uint64_t Fold(const std::byte* p, size_t n, uint64_t acc) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    acc += w;
  }
  for (; i < n; ++i) acc += static_cast<uint8_t>(p[i]);
  return acc;
}

// SD1.5-like mix of tensor sizes: many small, some large.
void MakeCheckpoint(const std::string& path, double gib) {
  std::mt19937_64 rng(42);
  std::vector<std::pair<std::string, std::vector<uint64_t>>> tensors;
  uint64_t total = 0;
  const uint64_t target = static_cast<uint64_t>(gib * (1ull << 30));
  const std::vector<std::vector<uint64_t>> shapes = {
      {1280, 1280}, {320}, {5120, 1280}, {640, 640, 3, 3}, {1280, 1280, 3, 3}, {320, 768}};
  for (size_t i = 0; total < target; ++i) {
    const auto& s = shapes[i % shapes.size()];
    uint64_t n = 2;
    for (auto d : s) n *= d;
    tensors.push_back({"layer." + std::to_string(i) + ".weight", s});
    total += n;
  }
  std::string header = "{";
  uint64_t off = 0;
  for (const auto& [name, shape] : tensors) {
    uint64_t n = 2;
    std::string dims;
    for (auto d : shape) {
      n *= d;
      dims += (dims.empty() ? "" : ",") + std::to_string(d);
    }
    header += (header.size() > 1 ? "," : "") + std::string("\"") + name +
              "\":{\"dtype\":\"F16\",\"shape\":[" + dims + "],\"data_offsets\":[" +
              std::to_string(off) + "," + std::to_string(off + n) + "]}";
    off += n;
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::ofstream out(path, std::ios::binary);
  const uint64_t hn = header.size();
  out.write(reinterpret_cast<const char*>(&hn), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  std::vector<uint64_t> buf(1 << 20);
  for (uint64_t written = 0; written < off;) {
    for (auto& w : buf) w = rng();
    const uint64_t n = std::min<uint64_t>(buf.size() * 8, off - written);
    out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(n));
    written += n;
  }
}

// Sums the data section only, so both methods fold exactly the same bytes.
uint64_t SequentialRead(const std::string& path, uint64_t data_offset, double* seconds) {
  const auto t0 = Clock::now();
  const int fd = ::open(path.c_str(), O_RDONLY);
  std::vector<std::byte> buf(8 << 20);
  uint64_t acc = 0, pos = 0;
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0) {
    const uint64_t begin = pos, end = pos + static_cast<uint64_t>(n);
    pos = end;
    if (end <= data_offset) continue;
    const uint64_t skip = begin < data_offset ? data_offset - begin : 0;
    acc = Fold(buf.data() + skip, static_cast<size_t>(n) - skip, acc);
  }
  ::close(fd);
  *seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return acc;
}

uint64_t ReaderRead(const std::string& path, double* seconds, uint64_t* data_offset) {
  const auto t0 = Clock::now();
  auto ck = arrowquant::Checkpoint::Open(path);
  if (!ck.ok()) {
    std::fprintf(stderr, "%s\n", ck.status().ToString().c_str());
    std::exit(2);
  }
  uint64_t acc = 0;
  for (const auto& t : (*ck)->tensors()) {
    const auto d = t.data();
    acc = Fold(d.data(), d.size(), acc);
  }
  *data_offset = (*ck)->tensors().front().file->header().data_offset();
  *seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return acc;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "bench-out/read_throughput.safetensors";
  const double gib = argc > 2 ? std::atof(argv[2]) : 1.0;
  if (!std::filesystem::exists(path)) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::printf("creating %s (%.2f GiB of F16 tensors)\n", path.c_str(), gib);
    MakeCheckpoint(path, gib);
  }
  const double gb = static_cast<double>(std::filesystem::file_size(path)) / 1e9;
  double t_seq = 0, t_rd = 0, best_seq = 1e30, best_rd = 1e30;
  uint64_t data_offset = 0;
  ReaderRead(path, &t_rd, &data_offset);  // warm the page cache
  uint64_t sum_seq = 0, sum_rd = 0;
  for (int rep = 0; rep < 5; ++rep) {
    sum_seq = SequentialRead(path, data_offset, &t_seq);
    sum_rd = ReaderRead(path, &t_rd, &data_offset);
    best_seq = std::min(best_seq, t_seq);
    best_rd = std::min(best_rd, t_rd);
  }
  if (sum_seq != sum_rd) {
    std::fprintf(stderr, "checksum mismatch: %llx vs %llx\n", (unsigned long long)sum_seq,
                 (unsigned long long)sum_rd);
    return 1;
  }
  std::printf("file: %s, %.3f GB, best of 5, page cache warm\n", path.c_str(), gb);
  std::printf("plain sequential read(2): %6.2f GB/s\n", gb / best_seq);
  std::printf("arrowquant reader:        %6.2f GB/s\n", gb / best_rd);
  std::printf("ratio reader / read(2):   %6.2f (target >= 0.8)\n", best_seq / best_rd);
  return 0;
}
