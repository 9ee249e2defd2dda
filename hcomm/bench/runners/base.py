"""What the sweep needs from an implementation: run one collective on bound buffers.

A runner is built per rank once the ranks exist (a `World`), runs the `Spec`'s
collective on numpy buffers it may wrap in its own types (`bind`), and reduces the
per-rank statistics over its own communicator so no second channel is needed.
"""


class Unsupported(Exception):
    """The implementation cannot run this benchmark (missing library, op or dtype).

    Raised identically on every rank before any collective, so the sweep of that
    implementation is skipped and reported with this reason instead of failing."""


class Runner:
    name = "?"

    def __init__(self, world, spec):
        self.rank, self.size, self.spec = world.rank, world.size, spec

    def supports_in_place(self):
        """Whether the collective has an in-place form here; sendrecv and barrier do not."""
        return self.spec.collective not in ("sendrecv", "barrier")

    def bind(self, send, recv):
        """Native handles for numpy buffers: sharing memory with them on the host; on a
        device (spec.device "cuda") holding a copy of them, which fetch() brings back."""
        return send, recv

    def fetch(self):
        """After a checked call: the results into the numpy buffers bind() was given
        (device runners copy them back; host handles share memory already)."""

    def sync(self):
        """Block until the calls issued so far are done (device runners wait for the GPU,
        whose work a call only queues), so a timed call is the whole call."""

    def run(self, send, recv, in_place):
        getattr(self, "_" + self.spec.collective)(send, recv, in_place)

    def output(self, send, recv, in_place):
        """The numpy view that holds this rank's result after run()."""
        return recv

    def peer_next(self):
        return (self.rank + 1) % self.size

    def peer_prev(self):
        return (self.rank - 1) % self.size

    def reduce_floats(self, values, op):
        """Elementwise 'max' or 'sum' of a short list of floats over all ranks (numpy array)."""
        raise NotImplementedError

    def barrier(self):
        raise NotImplementedError

    def info(self):
        """Versions and settings recorded in the JSON report."""
        return {}

    def close(self):
        pass
