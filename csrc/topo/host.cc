#include "topo/host.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/param.h"

namespace hcomm {

namespace {
std::string firstLine(const char* path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}
}  // namespace

std::string hostName() {
  char buf[256] = {0};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

std::string machineIdentity() { return firstLine("/proc/sys/kernel/random/boot_id"); }

std::string hostIdentity() {
  std::string forced = envStr("HCOMM_HOST_ID");
  if (!forced.empty()) return forced;
  char ns[128] = {0};
  ssize_t n = readlink("/proc/self/ns/net", ns, sizeof ns - 1);
  std::ostringstream id;
  id << firstLine("/proc/sys/kernel/random/boot_id") << "/" << hostName() << "/"
     << (n > 0 ? std::string(ns, static_cast<size_t>(n)) : "");
  return id.str();
}

}  // namespace hcomm
