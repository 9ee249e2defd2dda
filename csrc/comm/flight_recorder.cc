#include "comm/flight_recorder.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace hcomm {

namespace {
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') { out += "\\n"; continue; }
    out += c;
  }
  return out + "\"";
}
}  // namespace

FlightRecorder::FlightRecorder(size_t capacity)
    : capacity_(std::max<size_t>(1, capacity)), t0_(std::chrono::steady_clock::now()) {}

uint64_t FlightRecorder::record(uint64_t seq, const std::string& op, const std::string& dtype, uint64_t count,
                                int root, const std::string& algo, Clock::time_point when) {
  double t = since(when);
  std::lock_guard<std::mutex> lock(mu_);
  if (entries_.size() < capacity_) entries_.emplace_back();
  FlightEntry& e = entries_[next_ % capacity_];
  e.seq = seq;
  e.op = op;
  e.dtype = dtype;
  e.count = count;
  e.root = root;
  e.device = -1;
  e.deviceKind = "cuda";
  e.stream = 0;
  e.algo = algo;
  e.ran.clear();
  e.state = "queued";
  e.error.clear();
  e.queued = t;
  e.started = e.ended = 0;
  return next_++;
}

void FlightRecorder::placed(uint64_t id, const char* kind, int device, const void* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = find(id)) {
    e->deviceKind = kind;
    e->device = device;
    e->stream = reinterpret_cast<uint64_t>(stream);
  }
}

FlightEntry* FlightRecorder::find(uint64_t id) {
  uint64_t first = next_ - entries_.size();
  return id >= first && id < next_ ? &entries_[id % capacity_] : nullptr;
}

void FlightRecorder::started(uint64_t id, Clock::time_point when) {
  double t = since(when);
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = find(id)) {
    e->state = "started";
    e->started = t;
  }
}

void FlightRecorder::ran(uint64_t id, const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = find(id)) e->ran = what;
}

void FlightRecorder::ended(uint64_t id, const std::string& error, const char* what, const std::string& over) {
  double t = since(Clock::now());
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = find(id)) {
    if (*what || !over.empty()) {
      e->ran.assign(what);
      if (!over.empty()) e->ran.append(*what ? " over " : "over ").append(over);
    }
    e->state = error.empty() ? "completed" : "failed";
    e->error = error;
    e->ended = t;
  }
}

std::string FlightRecorder::json(int rank, int size, uint32_t commId) {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream s;
  s << "{\"rank\": " << rank << ", \"size\": " << size << ", \"communicator\": " << commId << ", \"entries\": [";
  for (uint64_t id = next_ - entries_.size(); id < next_; ++id) {  // oldest first
    const FlightEntry& e = entries_[id % capacity_];
    bool first = id == next_ - entries_.size();
    s << (first ? "" : ", ") << "{\"seq\": " << e.seq << ", \"op\": " << quoted(e.op) << ", \"dtype\": " << quoted(e.dtype)
      << ", \"count\": " << e.count << ", \"root\": " << e.root << ", \"algo\": " << quoted(e.algo)
      << ", \"ran\": " << quoted(e.ran)
      << ", \"device\": "
      << (e.device < 0 ? std::string("\"host\"") : "\"" + std::string(e.deviceKind) + ":" + std::to_string(e.device) + "\"")
      << ", \"stream\": " << e.stream
      << ", \"state\": " << quoted(e.state) << ", \"queued\": " << e.queued << ", \"started\": " << e.started
      << ", \"ended\": " << e.ended << ", \"error\": " << quoted(e.error) << "}";
  }
  s << "]}";
  return s.str();
}

std::string FlightRecorder::dump(const std::string& dir, int rank, int size, uint32_t commId) {
  std::string path = dir + "/hcomm_flight_" + std::to_string(commId) + "_rank" + std::to_string(rank) + ".json";
  std::string text = json(rank, size, commId);
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return "";
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  return path;
}

}  // namespace hcomm
