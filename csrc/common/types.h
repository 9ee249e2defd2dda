// Data types, reduction ops and the error type shared by every layer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

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
  explicit TimeoutError(const std::string& what) : Error(what) {}
};

}  // namespace hcomm
