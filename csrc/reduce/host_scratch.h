// Host memory whose scratch buffers are kept for the next call: one per communicator.
//
// Why: algorithms ask their Memory for scratch every call (Links::scratch). new[] of a
// large buffer is an mmap whose pages fault in on first touch and an munmap when it is
// freed, every call: measured on 3 simulated hosts (HCOMM_TOPO_FILE, 3 ranks, 2 cores,
// load 8), the hierarchical reduce-scatter, which packs its input and its partials into
// scratch, took 410-452 ms at 64 MiB against 157 ms with glibc told to keep freed memory
// (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_), while the tuner priced warm memory.
//
// Blocks are rounded up to a power of two (at least 4 KiB) and handed back to a free
// list when their last owner lets go, so a communicator keeps about the scratch of its
// largest concurrent calls (at most twice the bytes asked, by the rounding); the blocks
// are freed with the communicator (a block that outlives it is freed by its owner).
// Everything else (copies, reductions) is HostMemory's.
#pragma once
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "reduce/host_memory.h"

namespace hcomm {

class HostScratchMemory final : public HostMemory {
 public:
  HostScratchMemory();
  ~HostScratchMemory() override;
  HostScratchMemory(const HostScratchMemory&) = delete;
  HostScratchMemory& operator=(const HostScratchMemory&) = delete;

  std::shared_ptr<char> alloc(size_t bytes) const override;

 private:
  // The free list, shared with the deleters of the blocks handed out, so that a block
  // released after the communicator is gone finds the list closed and frees itself.
  struct Pool {
    std::mutex mu;
    bool open = true;
    std::multimap<size_t, char*> free;  // capacity -> block
  };
  std::shared_ptr<Pool> pool_;
};

}  // namespace hcomm
