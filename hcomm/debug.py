"""Diagnosis helpers: the flight recorder dumped on SIGUSR1.

    HCOMM_DEBUG_DUMP_DIR=/tmp/dumps python train.py    # then: kill -USR1 <pid>

hcomm.init() installs the handler when HCOMM_DEBUG_DUMP_DIR is set (from the main
thread only, as Python requires); each handler dumps its communicator and then calls the
handler that was there before, so several communicators chain without a global registry.
"""
import os
import signal
import threading
import weakref


def install_dump_on_signal(comm, directory=None, signum=signal.SIGUSR1):
    directory = directory or os.environ.get("HCOMM_DEBUG_DUMP_DIR")
    if not directory or threading.current_thread() is not threading.main_thread():
        return False
    os.makedirs(directory, exist_ok=True)
    ref = weakref.ref(comm)
    previous = signal.getsignal(signum)

    def handler(sig, frame):
        c = ref()
        if c is not None and not c.closed:
            c.dump_flight_record(directory)
        if callable(previous):
            previous(sig, frame)

    signal.signal(signum, handler)
    return True
