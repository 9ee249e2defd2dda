// Opening a vendor library at run time (NCCL, the CUDA runtime, HCCL): the candidate
// paths, most specific first, and dlopen of the first that has every symbol.
#pragma once
#include <dlfcn.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "common/param.h"
#include "common/types.h"

namespace hcomm {

// The directories and names tried for a library, most specific first.
inline std::vector<std::string> libraryCandidates(const char* envVar, const std::vector<std::string>& given,
                                           std::initializer_list<const char*> systemNames) {
  std::vector<std::string> out;
  std::string env = envStr(envVar);
  if (!env.empty()) out.push_back(env);
  out.insert(out.end(), given.begin(), given.end());
  for (const char* n : systemNames) out.push_back(n);
  return out;
}

// dlopen of the first candidate that opens and has every symbol; `resolve(handle)`
// returns the missing symbol's name or "". The handle is never closed: the library's
// functions stay in use for the life of the process.
template <typename Resolve>
std::string openFirst(const std::vector<std::string>& candidates, const char* what, Resolve resolve) {
  std::string tried;
  for (const std::string& path : candidates) {
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* err = dlerror();
      tried += "\n  " + (err ? std::string(err) : path + ": cannot open");  // dlerror names the path
      continue;
    }
    std::string missing = resolve(h);
    if (missing.empty()) return path;
    tried += "\n  " + path + ": no symbol " + missing;
    dlclose(h);
  }
  throw Error(std::string(what) + " could not be loaded; tried:" + tried);
}

}  // namespace hcomm
