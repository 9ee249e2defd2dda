// Pieces shared by the host-memory test doubles in this folder (fake_cudart.cc,
// fake_nccl.cc, fake_hccl.cc, fake_ascendcl.cc): a stream worker (a FIFO of operations
// run in order by one thread) and polling with back-off for waits that cross processes.
//
// These are test doubles. They live in tests/, are built by tests/fake_device.py with
// g++ -O1 -shared -fPIC -pthread, and are never part of hcomm.
#pragma once
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace fake {

// Waits until pred() holds. Spins briefly (the common case on an idle machine is a wait
// of microseconds), then yields, then sleeps in short steps so that several processes
// polling on a 2-core machine do not starve the one that would make progress.
// `every` is called about every 20 ms of waiting; returning false ends the wait early
// (an abort, a dead peer) and pollUntil returns false.
template <class Pred, class Check>
bool pollUntil(Pred pred, Check every) {
  auto next = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
  for (int i = 0;; ++i) {
    if (pred()) return true;
    if (i < 64) continue;
    if (i < 256) {
      sched_yield();
      continue;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(i < 2048 ? 20 : 200));
    if (std::chrono::steady_clock::now() >= next) {
      if (!every()) return pred();
      next = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
    }
  }
}

template <class Pred>
void pollUntil(Pred pred) {
  pollUntil(pred, [] { return true; });
}

// A FIFO of operations executed in order by one thread: the model of a CUDA (or ACL)
// stream. push() returns the operation's ticket (1, 2, ...); done() is the ticket of the
// last finished operation, so "has everything queued before time T finished" is
// done() >= the pushed() seen at T. The worker owns itself through a shared_ptr, so a
// stream destroyed with work still queued finishes that work first, as CUDA's does.
class Worker : public std::enable_shared_from_this<Worker> {
 public:
  static std::shared_ptr<Worker> start() {
    std::shared_ptr<Worker> w(new Worker);
    std::thread([self = w] { self->loop(); }).detach();
    return w;
  }

  uint64_t push(std::function<void()> op) {
    std::lock_guard<std::mutex> l(mu_);
    ops_.push_back(std::move(op));
    ++pushed_;
    cv_.notify_all();
    return pushed_;
  }
  uint64_t pushed() {
    std::lock_guard<std::mutex> l(mu_);
    return pushed_;
  }
  uint64_t done() const { return done_.load(std::memory_order_acquire); }
  void waitDone(uint64_t ticket) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return done_.load() >= ticket; });
  }
  // Finish what is queued, then let the thread end (cudaStreamDestroy).
  void retire() {
    std::lock_guard<std::mutex> l(mu_);
    retired_ = true;
    cv_.notify_all();
  }

 private:
  Worker() = default;
  void loop() {
    for (;;) {
      std::function<void()> op;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return retired_ || !ops_.empty(); });
        if (ops_.empty()) return;
        op = std::move(ops_.front());
        ops_.pop_front();
      }
      op();
      {
        std::lock_guard<std::mutex> l(mu_);
        done_.fetch_add(1, std::memory_order_release);
      }
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> ops_;
  uint64_t pushed_ = 0;
  std::atomic<uint64_t> done_{0};
  bool retired_ = false;
};

}  // namespace fake
