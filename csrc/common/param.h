// Tunables are read from the environment through these helpers, always with the
// HCOMM_ prefix, so that every knob is greppable and documented in one table (README).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <string>

namespace hcomm {

inline std::string envStr(const char* name, const std::string& dflt = "") {
  const char* v = std::getenv(name);
  return (v && *v) ? std::string(v) : dflt;
}

inline int64_t envInt(const char* name, int64_t dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  long long x = std::strtoll(v, &end, 0);
  return (end && *end == '\0') ? x : dflt;
}

inline double envDouble(const char* name, double dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  double x = std::strtod(v, &end);
  return (end && *end == '\0') ? x : dflt;
}

}  // namespace hcomm
