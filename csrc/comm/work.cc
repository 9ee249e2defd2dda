#include "comm/work.h"

#include <chrono>
#include <memory>

#include "common/types.h"

namespace hcomm {

bool Work::wait(double timeoutSec) {
  std::unique_lock<std::mutex> lock(mu_);
  if (timeoutSec < 0) {
    cv_.wait(lock, [&] { return done_; });
  } else if (!cv_.wait_for(lock, std::chrono::duration<double>(timeoutSec), [&] { return done_; })) {
    return false;
  }
  if (!error_.empty()) throw Error(error_);
  return true;
}

bool Work::isCompleted() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

bool Work::isSuccess() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_ && error_.empty();
}

std::string Work::error() {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void Work::onComplete(std::function<void(const std::string&)> fn) {
  std::string err;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done_) {
      callbacks_.push_back(std::move(fn));
      return;
    }
    err = error_;
  }
  fn(err);
}

void Work::waitStream(void* stream) {
  if (!streamWait_) {
    wait(-1);
    return;
  }
  streamWait_(stream);
}

void Work::finish(const std::string& error) {
  std::vector<std::function<void(const std::string&)>> cbs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    error_ = error;
    cbs.swap(callbacks_);
  }
  cv_.notify_all();
  for (auto& cb : cbs) cb(error);
}

void* holdWork(const WorkPtr& w) { return new WorkPtr(w); }

void waitHeldWork(void* held) {
  std::unique_ptr<WorkPtr> w(static_cast<WorkPtr*>(held));
  try {
    (*w)->wait(-1);
  } catch (const std::exception&) {
  }
}

void dropHeldWork(void* held) { delete static_cast<WorkPtr*>(held); }

}  // namespace hcomm
