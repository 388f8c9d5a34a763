// Status and Result<T>: the only error channel of the C++ library.
// Library code never throws; the Python bindings turn a failed Status into a typed exception.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace arrowquant {

// Every distinct failure has its own code so callers (and tests) can tell them apart without
// parsing messages. Append only: the numeric values are exposed to Python.
enum class StatusCode : int32_t {
  kOk = 0,
  kInvalidArgument,
  kNotFound,
  kIoError,
  kUnsupported,
  kInternal,
  // SafeTensors container rules.
  kFileTooSmall,        // fewer than 8 bytes
  kHeaderTooLarge,      // header length above the configured limit
  kHeaderOutOfBounds,   // header length points past the end of the file
  kHeaderNotUtf8,       // header bytes are not valid UTF-8
  kHeaderInvalidJson,   // header is not JSON, or does not start with '{'
  kHeaderInvalidEntry,  // a tensor entry lacks or mistypes dtype/shape/data_offsets
  kUnknownDtype,        // dtype string not in the table
  kShapeOverflow,       // shape product times element size overflows 64 bits
  kSizeMismatch,        // shape x element size differs from the byte span
  kOffsetsInvalid,      // begin > end, or offsets not contiguous from 0 (gap or overlap)
  kDataOutOfBounds,     // a tensor ends past the data section
  kDataSizeMismatch,    // data section longer than the tensors it holds
  kDuplicateName,       // the same tensor name twice
  kMetadataInvalid,     // __metadata__ is not a map of strings to strings
  // Checkpoint layouts (sharded index, diffusers folders).
  kIndexInvalid,     // *.safetensors.index.json malformed
  kPathEscape,       // a shard or component path leaves the model folder
  kIndexMismatch,    // index and shards disagree (missing tensor, tensor in two shards)
  kAmbiguousLayout,  // a folder holds several candidate weight files
  kNotAModel,        // nothing that looks like a checkpoint
  kLimitExceeded,    // a configured cap (tensor count, bytes) was hit
  // Quantized model files (Parquet).
  kFormatInvalid,    // not an ArrowQuant model file, or a required column is missing/mistyped
  kCorrupt,          // unreadable or inconsistent content (checksum, lengths, truncation)
  kCancelled,        // the caller cancelled the run (progress callback, Ctrl-C)
  kThresholdMissed,  // a layer missed its quality threshold (with fail-fast)
  // Data errors: the values themselves cannot be quantized (not a configuration mistake).
  kNonFinite,      // NaN or Inf in a weight or an activation
  kScaleOverflow,  // a group's scale does not fit the chosen scale storage
};

// Stable, human-readable code name ("HeaderTooLarge"); used as the Python exception's `code`.
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status OK() { return {}; }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "HeaderTooLarge: <message>"
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace arrowquant

#define AQ_CONCAT_INNER(a, b) a##b
#define AQ_CONCAT(a, b) AQ_CONCAT_INNER(a, b)

#define AQ_RETURN_IF_ERROR(expr)          \
  do {                                    \
    ::arrowquant::Status _aq_st = (expr); \
    if (!_aq_st.ok()) return _aq_st;      \
  } while (0)

// `lhs` may be a declaration (`auto x`), `tmp` a fresh name: neither can be parenthesized.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define AQ_ASSIGN_OR_RETURN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                             \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)

#define AQ_ASSIGN_OR_RETURN(lhs, rexpr) \
  AQ_ASSIGN_OR_RETURN_IMPL(AQ_CONCAT(_aq_result_, __LINE__), lhs, rexpr)
