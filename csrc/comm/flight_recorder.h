// Flight recorder: the last N calls of a communicator (HCOMM_FLIGHT_RECORDER_SIZE,
// default 2000) with their signature, the algorithm planned, what actually ran (a native
// engine, or the algorithm and the transports it went over), state and timestamps, so
// that after a hang or an error each rank can say what it was doing. Dumped as JSON on error (into
// HCOMM_DEBUG_DUMP_DIR) and on demand (comm.flight_record(), SIGUSR1 from Python).
#pragma once
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace hcomm {

struct FlightEntry {
  uint64_t seq = 0;
  std::string op, dtype, algo, error;
  std::string ran;          // what ran: "native nccl", "ring over cuda_ipc", ... (Links::ran)
  const char* state = "queued";
  uint64_t count = 0;
  int root = -1;
  int device = -1;          // -1: host memory; else the device of the buffers
  const char* deviceKind = "cuda";  // "cuda" or "npu"
  uint64_t stream = 0;      // the caller's stream for a device call
  double queued = 0, started = 0, ended = 0;  // seconds since the recorder was made
};

class FlightRecorder {
 public:
  explicit FlightRecorder(size_t capacity);
  using Clock = std::chrono::steady_clock;
  // Returns the entry's id for the updates below. Callers pass the time they already
  // read: a clock read costs more than the rest of recording a small call.
  uint64_t record(uint64_t seq, const std::string& op, const std::string& dtype, uint64_t count, int root,
                  const std::string& algo, Clock::time_point when);
  // For a call on device memory: its kind ("cuda", "npu"), the device and the caller's stream.
  void placed(uint64_t id, const char* kind, int device, const void* stream);
  void started(uint64_t id, Clock::time_point when);
  // Also when the call is known to run over something (an async point-to-point call).
  void ran(uint64_t id, const std::string& what);
  // `what` ran over `over` (either may be empty): the entry's "ran" is "what over over",
  // composed in the slot's kept capacity (no allocation once the ring is warm).
  void ended(uint64_t id, const std::string& error, const char* what, const std::string& over);
  std::string json(int rank, int size, uint32_t commId);
  // Writes json() to <dir>/hcomm_flight_<comm>_rank<r>.json; returns the path ("" on failure).
  std::string dump(const std::string& dir, int rank, int size, uint32_t commId);

 private:
  FlightEntry* find(uint64_t id);
  double since(Clock::time_point t) const { return std::chrono::duration<double>(t - t0_).count(); }

  size_t capacity_;
  uint64_t next_ = 0;  // id of the next entry; the ring holds ids [next_ - size, next_)
  // A ring overwritten in place: once every slot has been used, recording a call
  // allocates nothing (the strings keep their capacity), which small collectives feel.
  std::vector<FlightEntry> entries_;
  std::chrono::steady_clock::time_point t0_;
  std::mutex mu_;
};

}  // namespace hcomm
