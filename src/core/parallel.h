// The library's only thread pool. Work items must be independent (rows of a tensor, whole
// tensors): results never depend on how many threads ran or in which order items finished.
#pragma once

#include <cstddef>
#include <functional>
#include <thread>
#include <vector>

namespace arrowquant {

// Calls fn(begin, end, worker) for disjoint contiguous ranges covering [0, n); worker < threads.
void ParallelFor(size_t n, int threads, const std::function<void(size_t, size_t, int)>& fn);

// Calls fn(i) for every i in [0, n), `threads` at a time, items handed out in index order as
// workers free up (so callers sort large items first to balance the load).
void ParallelForEach(size_t n, int threads, const std::function<void(size_t)>& fn);

// `threads` threads running fn(worker) until it returns; Join() (or the destructor) waits.
// For producer/consumer loops where the calling thread has its own work meanwhile.
class WorkerGroup {
 public:
  WorkerGroup(int threads, const std::function<void(int)>& fn);
  ~WorkerGroup();
  WorkerGroup(const WorkerGroup&) = delete;
  WorkerGroup& operator=(const WorkerGroup&) = delete;
  void Join();

 private:
  std::vector<std::thread> threads_;
};

}  // namespace arrowquant
