// HCOMM_DEBUG=INFO|TRACE: one line per event on stderr, prefixed with the rank.
#pragma once
#include <string>

namespace hcomm {

enum class LogLevel : int { NONE = 0, INFO = 1, TRACE = 2 };

LogLevel logLevel();  // read once from HCOMM_DEBUG
void logLine(LogLevel level, int rank, const std::string& msg);

}  // namespace hcomm
