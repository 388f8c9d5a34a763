// A Python progress callback as the library's progress function: called on the calling thread
// with the GIL held; an exception in it, or Ctrl-C, cancels the run, and Rethrow() raises it
// once the library has returned.
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>
#include <optional>
#include <string>

namespace arrowquant::py {

class ProgressBridge {
 public:
  explicit ProgressBridge(nanobind::object callback) : callback_(std::move(callback)) {}

  bool operator()(uint64_t done, uint64_t total, const std::string& name) {
    nanobind::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
      pending_.emplace();  // takes the pending KeyboardInterrupt
      return false;
    }
    if (callback_.is_none()) return true;
    try {
      nanobind::object r = callback_(done, total, name);
      return r.is_none() || nanobind::cast<bool>(r);
    } catch (nanobind::python_error& e) {
      pending_.emplace(std::move(e));
      return false;
    }
  }
  void Rethrow() {
    if (pending_) throw std::move(*pending_);
  }

 private:
  nanobind::object callback_;
  std::optional<nanobind::python_error> pending_;
};

}  // namespace arrowquant::py
