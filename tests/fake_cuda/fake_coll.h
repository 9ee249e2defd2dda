// The multi-process collective engine under the NCCL and HCCL fakes (fake_nccl.cc,
// fake_hccl.cc): a communicator is a shared-memory file that every rank maps; ranks
// meet at barriers (counters in that file) and pass data through per-rank staging
// slots (collectives) and per-pair rings (send/recv). Header-only, so each fake library
// carries its own copy; the libraries differ only in their API, dtypes and streams.
//
// Semantics, shared by both fakes:
//   - a collective first publishes what this rank called (kind, count, dtype, op,
//     root) and compares it with every rank's call: a difference fails the collective
//     on every rank with a message naming the ranks and the field, and writes nothing;
//   - reductions run in rank order 0..n-1 in the accumulation type (float for f16,
//     bf16 and f32, double for f64, the type itself with wrap-around for integers) and
//     round once; avg divides the sum by n (integer division for integers); premul-sum
//     scales each rank's input by that rank's own scalar;
//   - send/recv match in posting order per (sender, receiver); a receive whose size
//     differs from the send takes min(sizes) bytes and fails;
//   - a rank whose process exited makes every wait on it fail; a rank that destroyed or
//     aborted its communicator does not (its peers wait, as NCCL's do); a local abort
//     ends this rank's own waits at once.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "fake_common.h"

namespace fake {

enum DType : int { I8, U8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64 };
enum Op : int { OpSum, OpProd, OpMax, OpMin, OpAvg, OpPreMulSum };
enum Kind : int { KAllReduce, KReduce, KBroadcast, KAllGather, KReduceScatter };

inline size_t dtypeSize(DType t) {
  static const size_t s[] = {1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8};
  return s[t];
}
inline const char* dtypeName(DType t) {
  static const char* n[] = {"int8", "uint8", "int16", "uint16", "int32", "uint32",
                            "int64", "uint64", "float16", "bfloat16", "float32", "float64"};
  return n[t];
}
inline const char* opName(int op) {
  static const char* n[] = {"sum", "prod", "max", "min", "avg", "premul_sum"};
  return op >= 0 && op <= OpPreMulSum ? n[op] : "?";
}
inline const char* kindName(int k) {
  static const char* n[] = {"AllReduce", "Reduce", "Broadcast", "AllGather", "ReduceScatter"};
  return n[k];
}

constexpr size_t kSlotBytes = size_t(1) << 20;  // one rank's staging for a collective piece
constexpr size_t kPipeBytes = size_t(128) << 10;  // one entry of a send/recv ring
constexpr int kPipeDepth = 4;

// What a rank called; compared across ranks (scale is per rank by design).
struct Call {
  int32_t kind, dtype, op, root;
  uint64_t count;
  double scale;
};

struct RankSlot {
  std::atomic<int32_t> state;  // 0 absent, 1 joined
  std::atomic<int32_t> pid;
  int32_t device;
  char busId[32];
  Call call;
  int32_t color, key;  // split
};

struct PipeEntry {
  uint64_t header;  // 1: message header, `bytes` is the message size; 0: payload
  uint64_t bytes;
  char data[kPipeBytes];
};

struct Pipe {  // one direction of one pair
  std::atomic<uint64_t> produced, consumed;       // entries
  std::atomic<uint64_t> sendsDone, recvsDone;     // messages, for posting order
  PipeEntry ring[kPipeDepth];
};

struct Header {
  std::atomic<int32_t> nranks;
  std::atomic<int32_t> joined;
  std::atomic<uint64_t> barrier[2];  // 0: stream-ordered work, 1: host calls (init, split)
};

// This process's view of one communicator's shared file.
struct Core {
  char* base = nullptr;
  size_t size = 0;
  int rank = 0, nranks = 0;
  uint64_t barriers[2] = {0, 0};
  std::atomic<bool> aborted{false};
  std::string why;  // set by a failed wait

  Header* header() { return reinterpret_cast<Header*>(base); }
  RankSlot* slot(int r) { return reinterpret_cast<RankSlot*>(base + sizeof(Header)) + r; }
  char* staging(int r) { return base + layoutStaging(nranks) + size_t(r) * kSlotBytes; }
  Pipe* pipe(int from, int to) {
    return reinterpret_cast<Pipe*>(base + layoutPipes(nranks)) + (size_t(from) * nranks + to);
  }

  static size_t align(size_t n) { return (n + 4095) / 4096 * 4096; }
  static size_t layoutStaging(int n) { return align(sizeof(Header) + sizeof(RankSlot) * size_t(n)); }
  static size_t layoutPipes(int n) { return layoutStaging(n) + kSlotBytes * size_t(n); }
  static size_t layoutSize(int n) { return layoutPipes(n) + sizeof(Pipe) * size_t(n) * size_t(n); }

  // A process that exited, even one its parent has not reaped yet (a zombie).
  static bool alive(int pid) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return false;
    char path[64], stat[256] = {};
    std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE* f = std::fopen(path, "r");
    if (!f) return true;  // no /proc: trust kill()
    size_t n = std::fread(stat, 1, sizeof stat - 1, f);
    std::fclose(f);
    const char* close = std::strrchr(stat, ')');  // "pid (name) S ..."
    return !(n && close && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X'));
  }

  // Every wait checks that no peer process exited and that we were not aborted.
  bool healthy() {
    if (aborted.load()) {
      why = "the communicator was aborted";
      return false;
    }
    for (int r = 0; r < nranks; ++r) {
      RankSlot* s = slot(r);
      int pid = s->pid.load();
      if (pid > 0 && !alive(pid)) {
        why = "rank " + std::to_string(r) + " (pid " + std::to_string(pid) + ") exited";
        return false;
      }
    }
    return true;
  }

  template <class Pred>
  bool wait(Pred pred) {
    return pollUntil(pred, [this] { return healthy(); });
  }

  bool barrier(int channel) {
    uint64_t target = ++barriers[channel] * uint64_t(nranks);
    std::atomic<uint64_t>& c = header()->barrier[channel];
    c.fetch_add(1);
    return wait([&] { return c.load() >= target; });
  }
};

// Maps (creating if first) the communicator file `name` in /dev/shm and joins as `rank`.
// Blocks until all ranks joined. Returns an empty string or why it failed.
inline std::string joinCore(Core* c, const std::string& name, int nranks, int rank, int device, const char* busId) {
  std::string path = "/dev/shm/" + name;
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return "cannot open " + path + ": " + std::strerror(errno);
  size_t size = Core::layoutSize(nranks);
  struct stat st;
  if (fstat(fd, &st) != 0 || (size_t(st.st_size) < size && ftruncate(fd, off_t(size)) != 0)) {
    close(fd);
    return "cannot size " + path + ": " + std::strerror(errno);
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return "cannot map " + path;
  c->base = static_cast<char*>(p);
  c->size = size;
  c->rank = rank;
  c->nranks = nranks;
  int32_t expected = 0;
  Header* h = c->header();
  if (!h->nranks.compare_exchange_strong(expected, nranks) && expected != nranks)
    return "ranks disagree on the size: " + std::to_string(expected) + " and " + std::to_string(nranks);
  RankSlot* me = c->slot(rank);
  int32_t absent = 0;
  if (!me->state.compare_exchange_strong(absent, 1))
    return "rank " + std::to_string(rank) + " joined twice";
  me->device = device;
  std::snprintf(me->busId, sizeof me->busId, "%s", busId);
  me->pid.store(getpid());
  if (h->joined.fetch_add(1) + 1 == nranks) unlink(path.c_str());  // all mapped it: the name can go
  if (!c->wait([&] { return h->joined.load() >= nranks; })) return c->why;
  return "";
}

inline void leaveCore(Core* c) {
  if (c->base) munmap(c->base, c->size);
  c->base = nullptr;
}

// ---------------------------------------------------------------- arithmetic

inline float bf16ToFloat(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t floatToBf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <class T>
struct Acc {  // integers: their own type, wrapping (done in the unsigned twin)
  using type = T;
  static type load(const void* p, size_t i) { return static_cast<const T*>(p)[i]; }
  static void store(void* p, size_t i, type v) { static_cast<T*>(p)[i] = v; }
};
template <>
struct Acc<_Float16> {
  using type = float;
  static float load(const void* p, size_t i) { return float(static_cast<const _Float16*>(p)[i]); }
  static void store(void* p, size_t i, float v) { static_cast<_Float16*>(p)[i] = _Float16(v); }
};
struct Bf16 {};
template <>
struct Acc<Bf16> {
  using type = float;
  static float load(const void* p, size_t i) { return bf16ToFloat(static_cast<const uint16_t*>(p)[i]); }
  static void store(void* p, size_t i, float v) { static_cast<uint16_t*>(p)[i] = floatToBf16(v); }
};

template <class A>
A combine(A a, A b, int op) {
  if constexpr (std::is_integral<A>::value) {
    using U = typename std::make_unsigned<A>::type;
    if (op == OpProd) return A(U(a) * U(b));
    if (op == OpMax) return std::max(a, b);
    if (op == OpMin) return std::min(a, b);
    return A(U(a) + U(b));
  } else {
    if (op == OpProd) return a * b;
    if (op == OpMax) return a != a || a > b ? a : b;  // NaN wins, as on the device
    if (op == OpMin) return a != a || a < b ? a : b;
    return a + b;
  }
}

// out[i] = op over ranks of in[r][i] (rank order), with avg and premul-sum.
template <class T>
void reduceTyped(void* out, char* const* in, int n, size_t elems, int op, const double* scales) {
  using A = typename Acc<T>::type;
  int base = op == OpAvg || op == OpPreMulSum ? OpSum : op;
  for (size_t i = 0; i < elems; ++i) {
    A acc{};
    for (int r = 0; r < n; ++r) {
      A v = Acc<T>::load(in[r], i);
      if (op == OpPreMulSum) v = A(v * A(scales[r]));
      acc = r == 0 ? v : combine(acc, v, base);
    }
    if (op == OpAvg) acc = A(acc / A(n));
    Acc<T>::store(out, i, acc);
  }
}

inline void reduce(DType t, void* out, char* const* in, int n, size_t elems, int op, const double* scales) {
  switch (t) {
    case I8: return reduceTyped<int8_t>(out, in, n, elems, op, scales);
    case U8: return reduceTyped<uint8_t>(out, in, n, elems, op, scales);
    case I16: return reduceTyped<int16_t>(out, in, n, elems, op, scales);
    case U16: return reduceTyped<uint16_t>(out, in, n, elems, op, scales);
    case I32: return reduceTyped<int32_t>(out, in, n, elems, op, scales);
    case U32: return reduceTyped<uint32_t>(out, in, n, elems, op, scales);
    case I64: return reduceTyped<int64_t>(out, in, n, elems, op, scales);
    case U64: return reduceTyped<uint64_t>(out, in, n, elems, op, scales);
    case F16: return reduceTyped<_Float16>(out, in, n, elems, op, scales);
    case BF16: return reduceTyped<Bf16>(out, in, n, elems, op, scales);
    case F32: return reduceTyped<float>(out, in, n, elems, op, scales);
    case F64: return reduceTyped<double>(out, in, n, elems, op, scales);
  }
}

// ---------------------------------------------------------------- collectives

struct Collective {
  Call call;
  const void* send;
  void* recv;
};

inline std::string describe(const Call& c) {
  return std::string(kindName(c.kind)) + "(count " + std::to_string(c.count) + ", " +
         dtypeName(DType(c.dtype)) + (c.kind == KAllGather || c.kind == KBroadcast ? "" : std::string(", ") +
         opName(c.op)) + (c.kind == KReduce || c.kind == KBroadcast ? ", root " + std::to_string(c.root) : "") + ")";
}

// Every rank's call against rank 0's; "" when they agree.
inline std::string compareCalls(Core* c) {
  const Call& a = c->slot(0)->call;
  for (int r = 1; r < c->nranks; ++r) {
    const Call& b = c->slot(r)->call;
    bool rooted = a.kind == KReduce || a.kind == KBroadcast;
    bool reducing = a.kind != KAllGather && a.kind != KBroadcast;
    if (a.kind != b.kind || a.count != b.count || a.dtype != b.dtype || (reducing && a.op != b.op) ||
        (rooted && a.root != b.root))
      return "mismatched collective: rank 0 called " + describe(a) + ", rank " + std::to_string(r) + " called " +
             describe(b);
  }
  return "";
}

// One pass: each rank stages `bytes` of `in` piece by piece; after each piece every rank
// runs consume(offset, length, staging pointers of all ranks). `publisher` >= 0: only
// that rank's input matters (the others stage nothing).
template <class Consume>
bool exchange(Core* c, const char* in, size_t bytes, size_t unit, int publisher, Consume consume) {
  size_t piece = kSlotBytes / unit * unit;
  std::vector<char*> slots(size_t(c->nranks));
  for (int r = 0; r < c->nranks; ++r) slots[size_t(r)] = c->staging(r);
  for (size_t off = 0; off < bytes; off += piece) {
    size_t len = std::min(piece, bytes - off);
    if (publisher < 0 || publisher == c->rank) std::memcpy(c->staging(c->rank), in + off, len);
    if (!c->barrier(0)) return false;
    consume(off, len, slots.data());
    if (!c->barrier(0)) return false;
  }
  return true;
}

// Runs one collective to the end on this rank. Returns "" or why it failed (then no
// output byte was written when the calls disagreed).
inline std::string runCollective(Core* c, const Collective& op) {
  c->slot(c->rank)->call = op.call;
  if (!c->barrier(0)) return c->why;
  std::string mismatch = compareCalls(c);
  std::vector<double> scales(size_t(c->nranks));
  for (int r = 0; r < c->nranks; ++r) scales[size_t(r)] = c->slot(r)->call.scale;
  if (!c->barrier(0)) return c->why;  // nobody rewrites its call before all compared
  if (!mismatch.empty()) return mismatch;
  const Call& k = op.call;
  DType t = DType(k.dtype);
  size_t es = dtypeSize(t), bytes = k.count * es;
  const char* in = static_cast<const char*>(op.send);
  char* out = static_cast<char*>(op.recv);
  int n = c->nranks, me = c->rank;
  bool ok = true;
  auto reduceTo = [&](char* dst, size_t off, size_t len, char* const* slots) {
    reduce(t, dst + off, slots, n, len / es, k.op, scales.data());
  };
  switch (k.kind) {
    case KAllReduce:
      ok = exchange(c, in, bytes, es, -1, [&](size_t off, size_t len, char* const* s) { reduceTo(out, off, len, s); });
      break;
    case KReduce:
      ok = exchange(c, in, bytes, es, -1, [&](size_t off, size_t len, char* const* s) {
        if (me == k.root) reduceTo(out, off, len, s);
      });
      break;
    case KBroadcast:
      ok = exchange(c, in, bytes, es, k.root, [&](size_t off, size_t len, char* const* s) {
        std::memcpy(out + off, s[k.root], len);
      });
      break;
    case KAllGather:
      ok = exchange(c, in, bytes, es, -1, [&](size_t off, size_t len, char* const* s) {
        for (int r = 0; r < n; ++r) std::memmove(out + size_t(r) * bytes + off, s[r], len);
      });
      break;
    case KReduceScatter:
      for (int d = 0; d < n && ok; ++d)
        ok = exchange(c, in + size_t(d) * bytes, bytes, es, -1, [&](size_t off, size_t len, char* const* s) {
          if (me == d) reduceTo(out, off, len, s);
        });
      break;
  }
  return ok ? "" : c->why;
}

// ---------------------------------------------------------------- send / recv

// One posted send or receive, advanced a step at a time so that a group of them on one
// stream progresses together (NCCL's grouped send/recv do not deadlock).
struct P2P {
  bool isSend;
  int peer;
  char* buf;
  uint64_t bytes;
  uint64_t ticket;  // this op's place among the pair's messages in this direction
  bool started = false, done = false;
  uint64_t moved = 0, incoming = 0;  // payload bytes so far; the sender's size (receives)
  std::string error;

  // Makes what progress it can; true if it moved anything.
  bool step(Core* c) {
    if (done) return false;
    Pipe* p = isSend ? c->pipe(c->rank, peer) : c->pipe(peer, c->rank);
    std::atomic<uint64_t>& turn = isSend ? p->sendsDone : p->recvsDone;
    if (turn.load() != ticket) return false;
    return isSend ? stepSend(p) : stepRecv(p);
  }

  bool stepSend(Pipe* p) {
    uint64_t head = p->produced.load();
    if (head - p->consumed.load() >= uint64_t(kPipeDepth)) return false;
    PipeEntry& e = p->ring[head % kPipeDepth];
    if (!started) {
      e.header = 1;
      e.bytes = bytes;
      started = true;
    } else {
      e.header = 0;
      e.bytes = std::min<uint64_t>(kPipeBytes, bytes - moved);
      std::memcpy(e.data, buf + moved, e.bytes);
      moved += e.bytes;
    }
    p->produced.store(head + 1);
    if (moved == bytes) finish(p->sendsDone);
    return true;
  }

  bool stepRecv(Pipe* p) {
    uint64_t tail = p->consumed.load();
    if (p->produced.load() == tail) return false;
    PipeEntry& e = p->ring[tail % kPipeDepth];
    if (!started) {
      incoming = e.bytes;
      started = true;
      if (incoming != bytes)
        error = "size mismatch: rank " + std::to_string(peer) + " sent " + std::to_string(incoming) +
                " bytes, the receive expects " + std::to_string(bytes);
    } else {
      if (moved < bytes) std::memcpy(buf + moved, e.data, std::min<uint64_t>(e.bytes, bytes - moved));
      moved += e.bytes;
    }
    p->consumed.store(tail + 1);
    if (moved == incoming) finish(p->recvsDone);
    return true;
  }

  void finish(std::atomic<uint64_t>& turn) {
    done = true;
    turn.fetch_add(1);
  }
};

// Runs the posted sends and receives of one group to the end. Returns "" or the first
// failure (a size mismatch still completes the transfer, as far as sizes allow).
inline std::string runP2P(Core* c, std::vector<P2P>& ops) {
  auto allDone = [&] {
    bool progress = true;
    while (progress) {
      progress = false;
      for (P2P& op : ops) progress = op.step(c) || progress;
    }
    return std::all_of(ops.begin(), ops.end(), [](const P2P& op) { return op.done; });
  };
  if (!c->wait(allDone)) return c->why;
  for (const P2P& op : ops)
    if (!op.error.empty()) return op.error;
  return "";
}

}  // namespace fake
