// The layout of the shm transport's segments, shared by its two files: shm_segment.cc
// creates its own segment, maps the peers' and probes cross-memory attach to each;
// shm.cc moves messages through the queues. One segment a rank, in /dev/shm, holding an
// inbound queue per local sender (see shm.h).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace hcomm {

constexpr int kSlots = 8;
constexpr size_t kSlotBytes = 128 << 10;
constexpr int kAcks = 1024;  // rendezvous messages one pair may have outstanding
constexpr uint32_t kData = 1, kRendezvous = 2;

struct ShmSlot {
  uint64_t tag;
  uint64_t total;   // message bytes
  uint64_t offset;  // of this chunk (data) ; 0 for rendezvous
  uint32_t len;     // bytes in this chunk
  uint32_t kind;
  int64_t pid;      // rendezvous: sender process and buffer
  uint64_t addr;
  uint64_t seq;
  uint64_t fingerprint;  // the sender's collective signature
  char data[kSlotBytes];
};

struct alignas(64) ShmQueue {
  alignas(64) std::atomic<uint64_t> head;  // slots published (sender writes)
  alignas(64) std::atomic<uint64_t> tail;  // slots consumed (receiver writes)
  alignas(64) std::atomic<uint64_t> acks[kAcks];  // rendezvous done: acks[seq % kAcks] = seq
  ShmSlot slots[kSlots];
};

constexpr int kBoardSlots = 64;  // communicators one rank can publish progress for
constexpr uint64_t kClosed = 1ull << 63;  // the communicator was closed: slot reusable, still readable

// One communicator's progress on the segment's owner (see ShmTransport::noteStarted).
struct alignas(64) ShmProgress {
  std::atomic<uint64_t> comm;     // communicator id + 1, | kClosed once closed; 0: never used
  std::atomic<uint64_t> started;  // (seq + 1) << 8 | kind of the last collective entered; 0: none
  std::atomic<uint64_t> ended;    // seq + 1 of the last collective finished; 0: none
};

struct alignas(64) ShmSegment {
  std::atomic<uint64_t> magic;
  int64_t pid;
  uint64_t probeAddr;
  int32_t nLocal;
  alignas(64) std::atomic<uint32_t> bell;      // bumped by anyone who changed my queues
  alignas(64) std::atomic<uint32_t> sleepers;  // threads of mine in futex wait
  alignas(64) uint8_t canRead[256];            // canRead[i]: I can read local rank i's memory
  ShmProgress board[kBoardSlots];              // written by the owner only
  // Why the owner aborted (set once, then `failed`): a rank waiting on it fails at once
  // with the first cause instead of timing out or blaming the rank that merely gave up.
  alignas(64) std::atomic<uint32_t> failed;
  char failure[448];
  ShmQueue queues[1];                          // nLocal of them, by sender's local index
};

// Reads `len` bytes at `addr` of process `pid` into `dst` (process_vm_readv; a plain copy
// from this process). False with the reason in *err (when given) if the kernel refuses.
bool cmaRead(int64_t pid, uint64_t addr, void* dst, size_t len, std::string* err);

}  // namespace hcomm
