// Setting up the shm transport: this rank's segment (created at construction, unlinked
// once every peer has mapped it), the peers' segments (mapped at connect()), and the
// cross-memory-attach probe each rank runs once per peer at connect(): one
// process_vm_readv of a known word, whose verdict the peer reads later (unlinkOwn).
// Connecting costs one shm_open + mmap per local peer; nothing here runs per message.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/param.h"
#include "transport/shm.h"
#include "transport/shm_segment.h"

namespace hcomm {

namespace {
constexpr uint64_t kMagic = 0x68636f6d6d534d31ull;  // "hcommSM1"
// A word whose address every peer reads once at connect() to see whether cross-memory
// attach works between the two processes. Constant, so not mutable state.
const volatile uint64_t kCmaProbe = 0x6863636d61707262ull;

size_t segmentBytes(int nLocal) {
  return sizeof(ShmSegment) + sizeof(ShmQueue) * (nLocal > 1 ? nLocal - 1 : 0);
}

}  // namespace

// Reads `len` bytes at `addr` of process `pid` into `dst`.
bool cmaRead(int64_t pid, uint64_t addr, void* dst, size_t len, std::string* err) {
  if (pid == getpid()) {
    std::memcpy(dst, reinterpret_cast<const void*>(addr), len);
    return true;
  }
  size_t done = 0;
  while (done < len) {
    struct iovec local = {static_cast<char*>(dst) + done, len - done};
    struct iovec remote = {reinterpret_cast<void*>(addr + done), len - done};
    ssize_t n = process_vm_readv(static_cast<pid_t>(pid), &local, 1, &remote, 1, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      if (err) *err = std::string("process_vm_readv from pid ") + std::to_string(pid) + ": " + strerror(errno);
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

ShmTransport::ShmTransport(int rank, std::vector<int> localRanks, std::string prefix, double timeoutSec)
    : rank_(rank),
      localRanks_(std::move(localRanks)),
      prefix_(std::move(prefix)),
      timeoutSec_(timeoutSec),
      hugePages_(static_cast<size_t>(std::max<int64_t>(0, envInt("HCOMM_SHM_HUGEPAGE_BYTES", 4 << 20)))) {
  if (localRanks_.size() > 256) throw Error("shm transport: more than 256 ranks on one host");
  // Let peers of any ancestry read our memory (Yama ptrace_scope=1 would refuse them).
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  int nLocal = static_cast<int>(localRanks_.size());
  mineName_ = prefix_ + "_" + std::to_string(rank_);
  mineBytes_ = segmentBytes(nLocal);
  int fd = shm_open(mineName_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) throw Error("shm_open(" + mineName_ + "): " + strerror(errno));
  if (ftruncate(fd, static_cast<off_t>(mineBytes_)) != 0) {
    int e = errno;
    close(fd);
    shm_unlink(mineName_.c_str());
    throw Error("shm segment of " + std::to_string(mineBytes_) + " bytes: " + strerror(e) +
                " (is /dev/shm large enough?)");
  }
  void* p = mmap(nullptr, mineBytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink(mineName_.c_str());
    throw Error(std::string("mmap of shm segment: ") + strerror(errno));
  }
  mine_ = static_cast<ShmSegment*>(p);  // fresh pages are zero: counters start at 0
  mine_->pid = getpid();
  mine_->probeAddr = reinterpret_cast<uint64_t>(&kCmaProbe);
  mine_->nLocal = nLocal;
  mine_->magic.store(kMagic, std::memory_order_release);
}

ShmTransport::~ShmTransport() {
  for (auto& kv : peers_)
    if (kv.second.seg && kv.second.seg != mine_) munmap(kv.second.seg, kv.second.segBytes);
  if (mine_) {
    shm_unlink(mineName_.c_str());  // no-op when already unlinked
    munmap(mine_, mineBytes_);
  }
}

bool ShmTransport::canConnect(int peer, MemKind mem) const {
  return mem == MemKind::HOST && std::find(localRanks_.begin(), localRanks_.end(), peer) != localRanks_.end();
}

void ShmTransport::connect() {
  bool allowCma = envInt("HCOMM_SHM_CMA", 1) != 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutSec_);
  int nLocal = static_cast<int>(localRanks_.size());
  int myIndex = static_cast<int>(std::find(localRanks_.begin(), localRanks_.end(), rank_) - localRanks_.begin());
  for (int i = 0; i < nLocal; ++i) {
    Peer& p = peers_[localRanks_[i]];
    p.rank = localRanks_[i];
    p.index = i;
    if (p.rank == rank_) {
      p.seg = mine_;
      p.segBytes = mineBytes_;
    } else {
      std::string name = prefix_ + "_" + std::to_string(p.rank);
      int fd = -1;
      while ((fd = shm_open(name.c_str(), O_RDWR, 0600)) < 0) {
        if (std::chrono::steady_clock::now() > deadline)
          throw TimeoutError("shm transport: rank " + std::to_string(p.rank) +
                             " did not create its segment " + name + " in time");
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      struct stat st;
      while (fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) < segmentBytes(nLocal))
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      p.segBytes = segmentBytes(nLocal);
      void* m = mmap(nullptr, p.segBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
      if (m == MAP_FAILED) throw Error(std::string("mmap of peer shm segment: ") + strerror(errno));
      p.seg = static_cast<ShmSegment*>(m);
      while (p.seg->magic.load(std::memory_order_acquire) != kMagic) {
        if (std::chrono::steady_clock::now() > deadline)
          throw TimeoutError("shm transport: segment of rank " + std::to_string(p.rank) + " never initialised");
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      uint64_t v = 0;
      mine_->canRead[i] = allowCma && cmaRead(p.seg->pid, p.seg->probeAddr, &v, sizeof v, nullptr) &&
                          v == kCmaProbe;
    }
    p.out = &p.seg->queues[myIndex];
    p.in = &mine_->queues[i];
  }
}

void ShmTransport::unlinkOwn() {
  // Every peer has mapped us once it has sent to us; the name is no longer needed and
  // removing it now means nothing is left in /dev/shm if the job dies.
  for (auto& kv : peers_) {
    Peer& p = kv.second;
    if (p.rank == rank_) continue;
    // The peer wrote its probe verdict on us before its first message; read it now.
    int myIndex = peers_[rank_].index;
    p.cma = p.seg->canRead[myIndex] != 0;
  }
  shm_unlink(mineName_.c_str());
}

bool ShmTransport::usesCma(int peer) const {
  auto it = peers_.find(peer);
  return it != peers_.end() && it->second.cma;
}

}  // namespace hcomm
