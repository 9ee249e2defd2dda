// Work: the handle of one collective or point-to-point call. Completed by whichever
// thread ran the call (the caller's, or the communicator's progress thread for
// async_op=True); callbacks run on that thread right after completion.
#pragma once
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace hcomm {

class Work : public std::enable_shared_from_this<Work> {
 public:
  // Waits up to timeoutSec (< 0: no limit). True when done; throws Error if the call
  // failed; false when the time ran out first.
  bool wait(double timeoutSec);
  bool isCompleted();
  bool isSuccess();
  std::string error();  // empty unless the call failed
  // fn(error) runs once when the work completes (at once if it already has).
  void onComplete(std::function<void(const std::string&)> fn);
  void finish(const std::string& error);
  // Device calls: makes `stream` wait for the call's result without blocking the host
  // (comm/device_context.h says how). A host call: waits here like wait(-1).
  void waitStream(void* stream);
  void setStreamWait(std::function<void(void* stream)> fn) { streamWait_ = std::move(fn); }
  bool onDevice() const { return static_cast<bool>(streamWait_); }

  int source = -1;   // receive from any source: the rank the message came from
  size_t received = 0;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::string error_;
  std::vector<std::function<void(const std::string&)>> callbacks_;
  std::function<void(void* stream)> streamWait_;  // set before finish(), read after it
};
using WorkPtr = std::shared_ptr<Work>;

// A stream callback that holds the stream until a Work completes (cudaLaunchHostFunc,
// aclrtLaunchCallback with ACL_CALLBACK_BLOCK): holdWork(w) is its argument, which
// waitHeldWork (the callback) or dropHeldWork (the launch failed) frees. The call's error
// is the Work's to report, not the stream's: waitHeldWork swallows it.
void* holdWork(const WorkPtr& w);
void waitHeldWork(void* held);
void dropHeldWork(void* held);

}  // namespace hcomm
