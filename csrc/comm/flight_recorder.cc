#include "comm/flight_recorder.h"

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

FlightRecorder::FlightRecorder(size_t capacity) : capacity_(capacity), t0_(std::chrono::steady_clock::now()) {}

double FlightRecorder::now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

uint64_t FlightRecorder::record(uint64_t seq, const std::string& op, const std::string& dtype, uint64_t count,
                                int root, const std::string& algo) {
  std::lock_guard<std::mutex> lock(mu_);
  FlightEntry e;
  e.seq = seq;
  e.op = op;
  e.dtype = dtype;
  e.count = count;
  e.root = root;
  e.algo = algo;
  e.state = "queued";
  e.queued = now();
  entries_.push_back(e);
  if (entries_.size() > capacity_) entries_.pop_front();
  return next_++;
}

FlightEntry* FlightRecorder::find(uint64_t id) {
  uint64_t first = next_ - entries_.size();
  return id >= first && id < next_ ? &entries_[id - first] : nullptr;
}

void FlightRecorder::started(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = find(id)) {
    e->state = "started";
    e->started = now();
  }
}

void FlightRecorder::ended(uint64_t id, const std::string& error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = find(id)) {
    e->state = error.empty() ? "completed" : "failed";
    e->error = error;
    e->ended = now();
  }
}

std::string FlightRecorder::json(int rank, int size, uint32_t commId) {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream s;
  s << "{\"rank\": " << rank << ", \"size\": " << size << ", \"communicator\": " << commId << ", \"entries\": [";
  for (size_t i = 0; i < entries_.size(); ++i) {
    const FlightEntry& e = entries_[i];
    s << (i ? ", " : "") << "{\"seq\": " << e.seq << ", \"op\": " << quoted(e.op) << ", \"dtype\": " << quoted(e.dtype)
      << ", \"count\": " << e.count << ", \"root\": " << e.root << ", \"algo\": " << quoted(e.algo)
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
