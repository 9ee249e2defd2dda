// Huge pages for buffers that peers read again and again (process_vm_readv).
//
// A peer's process_vm_readv pins every source page before it copies; out of 4 KiB pages
// that costs about as much as the copy itself. Measured on the 2-core development
// machine: 32 MiB read from another process at 5 GB/s out of 4 KiB pages, 17 GB/s out
// of 2 MiB ones; a 2-rank 64 MiB halving-doubling allreduce on 4 KiB-page buffers
// 18.6 -> 13.6 ms once they were collapsed. numpy asks for huge pages for its large
// arrays; torch's CPU allocator does not (unless THP_MEM_ALLOC_ENABLE=1). So a large
// send buffer seen a second time is collapsed into huge pages (MADV_COLLAPSE, Linux
// 6.1+; contents and addresses unchanged): a one-time copy, about 1 ms per MiB, that
// every later send of it earns back. A buffer whose memory is replaced between sends
// (freed and allocated again at the same address) would pay that copy each time: after
// two later collapses that did real work, that buffer is left alone, as is one the
// kernel refuses to collapse (shared or file-backed memory) or finds busy twice (pages
// pinned by another peer's read of the same buffer).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace hcomm {

class HugePageAdvisor {
 public:
  // Buffers of at least minBytes are considered; 0 turns the advisor off.
  explicit HugePageAdvisor(size_t minBytes) : minBytes_(minBytes) {}
  // `buf` is about to be offered to a peer's process_vm_readv.
  void sent(const void* buf, size_t bytes);

 private:
  struct Entry {
    uintptr_t start = 0;  // the 2 MiB-aligned interior of the buffer
    size_t len = 0;
    int seen = 0;
    int costly = 0;       // later collapses that had to copy, and refusals while busy
    uint64_t used = 0;    // for least-recently-used eviction
  };
  Entry& entryFor(uintptr_t start, size_t len);

  const size_t minBytes_;
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace hcomm
