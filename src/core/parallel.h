// The library's only thread pool. Work items must be independent (rows of a tensor, whole
// tensors): results never depend on how many threads ran or in which order items finished.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "arrowquant/status.h"

namespace arrowquant {

// Calls fn(begin, end, worker) for disjoint contiguous ranges covering [0, n); worker < threads.
void ParallelFor(size_t n, int threads, const std::function<void(size_t, size_t, int)>& fn);

// Calls fn(i) for every i in [0, n), `threads` at a time, items handed out in index order as
// workers free up (so callers sort large items first to balance the load).
void ParallelForEach(size_t n, int threads, const std::function<void(size_t)>& fn);

// Workers call work(i) for i in index order, at most `window` items ahead of the consumer; the
// calling thread calls in_order(i) for i = 0, 1, ... as each work(i) finishes (so whatever it
// writes comes out in index order, whatever the thread count). work(i) keeps its result where
// in_order(i) finds it (a slot per item). The first error from in_order stops the workers and is
// returned once they have all returned.
// With `cost`, an item also waits while the items started and not yet consumed, with it, would
// cost more than `budget` (bytes held, say); the oldest unconsumed item always starts. A count
// window alone lets one large item stall every other worker behind it (they run out of window
// while it runs); a budget lets them go on with small items.
Status ParallelOrdered(size_t n, int threads, size_t window,
                       const std::function<void(size_t)>& work,
                       const std::function<Status(size_t)>& in_order,
                       const std::function<uint64_t(size_t)>& cost = nullptr, uint64_t budget = 0);

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
