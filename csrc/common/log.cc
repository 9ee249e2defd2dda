#include "common/log.h"

#include <cstdio>

#include "common/param.h"

namespace hcomm {

LogLevel logLevel() {
  static const LogLevel level = [] {
    std::string v = envStr("HCOMM_DEBUG");
    if (v == "TRACE" || v == "trace") return LogLevel::TRACE;
    if (v == "INFO" || v == "info") return LogLevel::INFO;
    return LogLevel::NONE;
  }();
  return level;
}

void logLine(LogLevel level, int rank, const std::string& msg) {
  if (static_cast<int>(level) > static_cast<int>(logLevel())) return;
  std::fprintf(stderr, "[hcomm rank %d] %s\n", rank, msg.c_str());  // one call: lines do not interleave
}

}  // namespace hcomm
