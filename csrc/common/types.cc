#include "common/types.h"

namespace hcomm {

size_t dtypeSize(DataType dt) {
  switch (dt) {
    case DataType::F16: case DataType::BF16: return 2;
    case DataType::F32: case DataType::I32: return 4;
    case DataType::F64: case DataType::I64: return 8;
    case DataType::I8: case DataType::U8: case DataType::BOOL: return 1;
  }
  throw Error("unknown dtype");
}

const char* dtypeName(DataType dt) {
  static const char* names[] = {"float16", "bfloat16", "float32", "float64", "int8",
                                "uint8", "int32", "int64", "bool"};
  return names[static_cast<int>(dt)];
}

const char* opName(ReduceOp op) {
  static const char* names[] = {"sum", "prod", "min", "max", "avg", "premul_sum"};
  return names[static_cast<int>(op)];
}

DataType parseDataType(const std::string& s) {
  for (int i = 0; i <= static_cast<int>(DataType::BOOL); ++i)
    if (s == dtypeName(static_cast<DataType>(i))) return static_cast<DataType>(i);
  throw Error("unsupported dtype '" + s + "' (supported: float16, bfloat16, float32, float64, "
              "int8, uint8, int32, int64, bool)");
}

bool tryParseReduceOp(const std::string& s, ReduceOp* op) {
  for (int i = 0; i <= static_cast<int>(ReduceOp::PREMUL_SUM); ++i) {
    if (s != opName(static_cast<ReduceOp>(i))) continue;
    *op = static_cast<ReduceOp>(i);
    return true;
  }
  return false;
}

ReduceOp parseReduceOp(const std::string& s) {
  ReduceOp op;
  if (tryParseReduceOp(s, &op)) return op;
  throw Error("unknown reduce op '" + s + "' (supported: sum, prod, min, max, avg, premul_sum)");
}

bool isFloating(DataType dt) {
  return dt == DataType::F16 || dt == DataType::BF16 || dt == DataType::F32 || dt == DataType::F64;
}

}  // namespace hcomm
