#include "transport/hugepages.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1; older kernels refuse it, and each buffer is tried once
#endif

namespace hcomm {

namespace {
constexpr uintptr_t kHuge = uintptr_t(2) << 20;
constexpr size_t kEntries = 64;
constexpr int kLeftAlone = 2;  // costly collapses after which a buffer is not advised again
// A collapse over memory that is already huge walks the page tables only (measured
// ~0.2 us per 2 MiB); one that copies takes milliseconds per 2 MiB.
constexpr double kCheapSecondsPerHugePage = 20e-6;
}  // namespace

HugePageAdvisor::Entry& HugePageAdvisor::entryFor(uintptr_t start, size_t len) {
  for (Entry& e : entries_)
    if (e.start == start && e.len == len) return e;
  if (entries_.size() < kEntries) {
    entries_.emplace_back();
  } else {
    auto oldest = std::min_element(entries_.begin(), entries_.end(),
                                   [](const Entry& a, const Entry& b) { return a.used < b.used; });
    *oldest = Entry();
    std::rotate(oldest, oldest + 1, entries_.end());  // keep it last, where a new one goes
  }
  Entry& e = entries_.back();
  e.start = start;
  e.len = len;
  return e;
}

void HugePageAdvisor::sent(const void* buf, size_t bytes) {
  if (minBytes_ == 0 || bytes < minBytes_) return;
  uintptr_t begin = reinterpret_cast<uintptr_t>(buf);
  uintptr_t start = (begin + kHuge - 1) & ~(kHuge - 1), end = (begin + bytes) & ~(kHuge - 1);
  if (end <= start) return;
  Entry& e = entryFor(start, end - start);
  e.used = ++clock_;
  if (++e.seen < 2 || e.costly >= kLeftAlone) return;  // once is no pattern; a churning buffer is left alone
  auto t0 = std::chrono::steady_clock::now();
  if (madvise(reinterpret_cast<void*>(start), e.len, MADV_COLLAPSE) != 0) {
    // EAGAIN: pages busy right now (another peer still reading this buffer) or memory
    // short: tried again at a later send, at most twice. Anything else: not for this
    // buffer (shared or file memory, or a kernel without MADV_COLLAPSE, where every
    // buffer ends here once, one syscall each).
    e.costly = errno == EAGAIN ? e.costly + 1 : kLeftAlone;
    return;
  }
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (e.seen > 2 && took > kCheapSecondsPerHugePage * static_cast<double>(e.len / kHuge)) ++e.costly;
}

}  // namespace hcomm
