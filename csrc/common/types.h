// Data types, reduction ops and the error type shared by every layer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace hcomm {

enum class DataType : int { F16, BF16, F32, F64, I8, U8, I32, I64, BOOL };
enum class ReduceOp : int { SUM, PROD, MIN, MAX, AVG, PREMUL_SUM };

size_t dtypeSize(DataType dt);
const char* dtypeName(DataType dt);
const char* opName(ReduceOp op);
DataType parseDataType(const std::string& s);  // throws Error naming the bad value
ReduceOp parseReduceOp(const std::string& s);
bool tryParseReduceOp(const std::string& s, ReduceOp* op);  // false for an unknown name
bool isFloating(DataType dt);

// Every failure the core reports, with a message that names what went wrong.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A timeout is an Error too; kept distinct so callers can tell a slow peer from bad input.
class TimeoutError : public Error {
 public:
  // detail: what the transports held when the wait ended (Transport::waitState), said
  // after the progress report that the engine appends: the report is what a reader needs
  // first, and an abort notice carries only the start of the text (tcp: 448 bytes).
  explicit TimeoutError(const std::string& what, std::string detail = "") : Error(what), detail_(std::move(detail)) {}
  const std::string& detail() const { return detail_; }

 private:
  std::string detail_;
};

}  // namespace hcomm
