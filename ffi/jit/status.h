// A small error carrier for the JIT layer, independent of XLA so it can be unit-tested from Python.
#pragma once

#include <string>
#include <utility>

namespace dgpt {

class Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Error(std::string message) { return Status(std::move(message)); }

  bool ok() const { return message_.empty(); }
  const std::string& message() const { return message_; }

 private:
  explicit Status(std::string message) : message_(std::move(message)) {
    if (message_.empty()) message_ = "unknown error";
  }
  std::string message_;
};

// Returns early from the enclosing function when `expr` yields a failed Status.
#define DGPT_RETURN_IF_ERROR(expr)             \
  do {                                         \
    ::dgpt::Status dgpt_status_ = (expr);      \
    if (!dgpt_status_.ok()) return dgpt_status_; \
  } while (0)

}  // namespace dgpt
