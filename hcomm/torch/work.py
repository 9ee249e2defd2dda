"""c10d Work objects backed by torch futures that the core completes.

Lifetime: an HcommWork owns the core Work handles (which own the buffers the core is
writing) until its torch future is completed.

Which thread completes the future: the core's progress thread calls our done-callback,
which hands the completion to the group's small completion pool (threads made only
when all are busy; no thread per operation). Completing the future runs its .then()
callbacks inline, and those are user code that may block on another collective: torch's
own PowerSGD hook waits on a nested all_reduce inside .then(). Run on the progress
thread, that wait would stop the very thread that must finish the nested op (a
deadlock); on the pool it is just a busy worker, and the next completion gets another.
Two shortcuts skip that hand-off on the CPU, where each hop is a thread wake-up that
costs milliseconds on a loaded machine: a Work whose core works were all done when
posted (an eager send, a receive of a message that had arrived) completes at once on the
caller's thread, and a thread in wait() is woken by the last core callback itself and
completes the future there (no pool thread). Whichever comes first completes it, once.

CUDA tensors: `stream` is the caller's stream at the call; the future is CUDA-aware
and the completion runs with that stream current (streams.py says what that orders).

A Python subclass of dist.Work is used rather than torch's future-wrapping work
because the latter's wait() does not re-raise the future's error in torch 2.13, which
would turn a timed-out collective into a silent success.
"""
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from . import streams


def _value(fut):
    return fut.value()  # raises the operation's error inside then(): a real error downstream


def _as_error(what, message):
    return dist.DistBackendError(f"hcomm {what} failed: {message}")


class HcommWork(dist.Work):
    """One c10d call: one or more core works, then `finish` (copy-outs), then the future."""

    def __init__(self, what, result, core_works=(), finish=None, source=None, completions=None, stream=None):
        super().__init__()
        self._what = what
        self._core = core_works
        self._source = source  # a core recv Work whose .source is the sender (any-source recv)
        self._stream = stream  # the caller's CUDA stream, None for CPU tensors
        if not core_works:
            # Already done (a blocking call): the future is made only if someone asks.
            if finish is not None:
                finish()
            self._fut = None
            self._result = result
            return
        self._fut = streams.new_future(stream)
        self._completions = completions  # an Executor; None completes on the core's thread
        self._result, self._finish = result, finish
        self._pending = len(self._core)
        self._lock = threading.Lock()
        self._first_error = None
        self._settled = False  # the completion is claimed: it runs exactly once, by whoever comes first
        self._attaching = True  # callbacks that finish before all are attached leave completion to us
        self._waiters = 0  # threads in wait(): the last callback wakes them instead of using the pool
        self._ready = None  # their threading.Event, made by the first of them
        for w in self._core:
            w.add_done_callback(self._one_done)
        with self._lock:
            self._attaching = False
            ready = self._pending == 0
        if ready:
            # Every core work was done when posted (an eager send, a receive whose message
            # had arrived): complete here, with no hop to a completion thread and back.
            self._hand_off(inline=stream is None)

    # -- completion (progress thread, the caller's thread, or a waiter) ------------------
    def _one_done(self, err):
        with self._lock:
            self._pending -= 1
            if err and self._first_error is None:
                self._first_error = err
            if self._pending or self._attaching:
                return
            ready = self._ready if self._waiters else None
        if ready is not None:  # a waiter completes it: one wake-up, no pool thread
            ready.set()
            return
        self._hand_off(inline=self._completions is None)

    def _hand_off(self, inline):
        if inline:
            self._settle(self._first_error)
            return
        try:
            self._completions.submit(lambda: self._settle(self._first_error))
        except RuntimeError:  # the pool is shut down (group destroyed): finish here
            self._settle(self._first_error)

    def _settle(self, err):
        with self._lock:
            if self._settled:
                return
            self._settled = True
        self._complete(self._result, self._finish, err)

    def _complete(self, result, finish, err):
        # The core works (and the callbacks they hold, which hold self) are no longer
        # needed: dropping them here breaks that cycle and frees the staging buffers.
        core, self._core = self._core, ()
        with streams.completing(self._stream):
            if err is None:
                try:
                    streams.order_after(core, self._stream)
                    if finish is not None:
                        finish()
                except Exception as e:  # noqa: BLE001 - handed to whoever waits
                    err = f"{type(e).__name__}: {e}"
            if err is None:
                self._fut.set_result(result)  # a CUDA-aware future records its event here
            else:
                self._fut.set_exception(_as_error(self._what, err))

    # -- the c10d Work interface -------------------------------------------------------
    def wait(self, timeout=timedelta(0)):
        if self._fut is None:
            return True
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout or 0)
        if seconds > 0 and not self._fut.done():
            for w in self._core:
                try:
                    done = w.wait(seconds)
                except Exception:  # noqa: BLE001 - the same error reaches the future, raised below
                    done = True
                if not done:
                    raise _as_error(self._what, f"not completed within {seconds:g} s (Work.wait timeout)")
        if self._stream is None and not self._fut.done():
            self._wait_ready()
        self._fut.wait()  # raises the operation's error
        return True

    def _wait_ready(self):
        """Wait for the last core work's callback, then complete the future here.

        One wake-up (the progress thread's callback sets our event) instead of two
        (callback -> completion pool -> the future's waiter): on a loaded machine each is a
        scheduler hop (benchmarks/p2p_latency.py). Not the core works' own wait, although
        it wakes us sooner: it wakes us before the progress thread has run our callback,
        which then waits for the GIL while we compute and takes it at our next call that
        releases it (the next post): measured in the planner's post_s pattern (compute
        holding the GIL between posts), a turn cost 3.3-4.1 ms that way against 1.1-4.0
        before any of this; p2p_latency.py, which has no compute between posts, favoured it."""
        with self._lock:
            ready = self._pending == 0
            if not ready:
                if self._ready is None:
                    self._ready = threading.Event()
                self._waiters += 1
                event = self._ready
        if not ready:
            event.wait()
        self._settle(self._first_error)

    def get_future(self):
        if self._fut is None:  # a blocking call: its result is already ordered on the caller's stream
            self._fut = streams.new_future(self._stream)
            self._fut.set_result(self._result)
            return self._fut
        # torch's Python Future.set_exception stores the exception as the future's value:
        # a C++ reader (DDP's default allreduce hook takes the value as tensors) sees no
        # error and crashes on it. A then() whose callback re-raises carries a real error.
        if getattr(self, "_cpp_fut", None) is None:
            self._cpp_fut = self._fut.then(_value)
        return self._cpp_fut

    def is_completed(self):
        return self._fut is None or self._fut.done()

    def is_success(self):
        return self.is_completed() and self.exception() is None

    def exception(self):
        if self._fut is None:
            return None
        if not self._fut.done():
            return None
        try:
            self._fut.value()
        except Exception as e:  # noqa: BLE001 - returned, not raised
            return e
        return None

    def result(self):
        self.wait()
        return self.get_future().value()

    def synchronize(self):
        """As ProcessGroupNCCL's: the current stream waits for the result (wait() does that)."""
        self.wait()

    def source_rank(self):
        if self._source is None:
            raise RuntimeError("source_rank() is only defined for a recv from any source")
        self.wait()
        return self._source.source

    _source_rank = source_rank

    def __repr__(self):
        return f"<HcommWork {self._what} {'done' if self.is_completed() else 'pending'}>"
