// Splits [0, n) into contiguous ranges, one per worker. Work items must be independent (rows of
// a tensor): the result never depends on how many threads ran.
#pragma once

#include <cstddef>
#include <functional>

namespace arrowquant {

// Calls fn(begin, end, worker) for disjoint ranges covering [0, n); worker < threads.
void ParallelFor(size_t n, int threads, const std::function<void(size_t, size_t, int)>& fn);

}  // namespace arrowquant
