#include "core/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace arrowquant {

void ParallelFor(size_t n, int threads, const std::function<void(size_t, size_t, int)>& fn) {
  const size_t workers =
      std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(std::max(threads, 1)), n));
  if (workers <= 1) {
    if (n > 0) fn(0, n, 0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  const size_t chunk = (n + workers - 1) / workers;
  for (size_t w = 1; w < workers; ++w) {
    const size_t begin = std::min(n, w * chunk), end = std::min(n, begin + chunk);
    if (begin < end) pool.emplace_back(fn, begin, end, static_cast<int>(w));
  }
  fn(0, std::min(n, chunk), 0);
  for (auto& t : pool) t.join();
}

void ParallelForEach(size_t n, int threads, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  auto work = [&](int) {
    for (size_t i = 0; (i = next.fetch_add(1)) < n;) fn(i);
  };
  const int extra =
      static_cast<int>(std::min<size_t>(n, static_cast<size_t>(std::max(threads, 1)))) - 1;
  WorkerGroup helpers(std::max(0, extra), work);
  work(0);
  helpers.Join();
}

Status ParallelOrdered(size_t n, int threads, size_t window,
                       const std::function<void(size_t)>& work,
                       const std::function<Status(size_t)>& in_order,
                       const std::function<uint64_t(size_t)>& cost, uint64_t budget) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint8_t> finished(n, 0);
  size_t next_task = 0, next_consumed = 0;
  uint64_t held = 0;  // cost of the items started and not yet consumed
  bool stop = false;
  window = std::max<size_t>(window, 1);
  auto may_start = [&] {
    if (next_task >= next_consumed + window) return false;
    return !cost || next_task == next_consumed || held + cost(next_task) <= budget;
  };
  auto worker = [&](int) {
    for (;;) {
      size_t i;
      {
        std::unique_lock lk(mu);
        cv.wait(lk, [&] { return stop || next_task >= n || may_start(); });
        if (stop || next_task >= n) return;
        i = next_task++;
        if (cost) held += cost(i);
      }
      work(i);
      {
        std::lock_guard lk(mu);
        finished[i] = 1;
      }
      cv.notify_all();
    }
  };
  WorkerGroup pool(std::max(1, threads), worker);
  Status status;
  for (size_t i = 0; i < n && status.ok(); ++i) {
    {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return finished[i] != 0; });
      next_consumed = i + 1;
    }
    cv.notify_all();
    status = in_order(i);
    if (cost) {
      {
        std::lock_guard lk(mu);
        held -= cost(i);
      }
      cv.notify_all();
    }
  }
  {
    std::lock_guard lk(mu);
    stop = true;
  }
  cv.notify_all();
  pool.Join();
  return status;
}

WorkerGroup::WorkerGroup(int threads, const std::function<void(int)>& fn) {
  threads_.reserve(static_cast<size_t>(std::max(0, threads)));
  for (int t = 0; t < threads; ++t) threads_.emplace_back(fn, t);
}

WorkerGroup::~WorkerGroup() {
  Join();
}

void WorkerGroup::Join() {
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

}  // namespace arrowquant
