// The one place where a failed Status becomes a C++ exception; a translator registered in
// module.cc turns it into the matching typed Python exception from arrowquant.errors.
#pragma once

#include <nanobind/nanobind.h>

#include <exception>

#include "arrowquant/status.h"

namespace arrowquant::py {

class StatusError : public std::exception {
 public:
  explicit StatusError(Status status) : status_(std::move(status)), what_(status_.ToString()) {}
  const Status& status() const { return status_; }
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  Status status_;
  std::string what_;
};

inline void ThrowIfError(const Status& st) {
  if (!st.ok()) throw StatusError(st);
}

template <typename T>
T ValueOrThrow(Result<T> r) {
  if (!r.ok()) throw StatusError(r.status());
  return std::move(r).value();
}

void RegisterStatusTranslator(nanobind::module_& m);

}  // namespace arrowquant::py
