"""What a NetnsCluster's shaped links do on their own, without hcomm: raw TCP streams
between the namespace hosts (one process per stream end), to separate the wire from
the machine (docs/tuner.md, "Round 5").

    sudo .venv/bin/python benchmarks/netns_streams.py --rate 10gbit --hosts 3 streams
    sudo .venv/bin/python benchmarks/netns_streams.py --rate 1gbit --hosts 2 pingpong

streams: 64 MiB (--bytes) per stream, the patterns `one` (h0->h1 alone), `ring` (every
host to the next at once, as a ring step), `all` (every host to every other at once, as
the direct reduce-scatter) and `loopback` (one stream inside h0: what the socket-CPU
probe sees); per stream its GB/s, and the machine's CPU busy (all cores, /proc/stat)
over the pattern. Repeated --repeats times, interleaved.

pingpong: h0 <-> h1 round trips at 8 B .. 2 MiB, each size in two modes: `rested`
(50 ms between trips, so a tc tbf bucket refills) and `back-to-back`; the fastest and
the median half round trip, and the per-byte slope against the 8-byte trip.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
PORT = 29911


def _cpu_busy():
    """(busy, total) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


# ---------------------------------------------------------------- stream ends

def recv_end(port, count):
    """Accept `count` connections, read each to its end; print each one's (bytes, end time)."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(count)
    print("ready", flush=True)
    conns = [ls.accept()[0] for _ in range(count)]
    import selectors

    sel = selectors.DefaultSelector()
    got = {}
    for c in conns:
        sel.register(c, selectors.EVENT_READ)
        got[c] = 0
    buf = bytearray(1 << 20)
    ends = []
    while got:
        for key, _ in sel.select():
            n = key.fileobj.recv_into(buf)
            if n == 0:
                ends.append((got.pop(key.fileobj), time.time()))
                sel.unregister(key.fileobj)
                key.fileobj.close()
            else:
                got[key.fileobj] += n
    print(json.dumps(ends), flush=True)


def send_end(addr, port, nbytes, start):
    s = socket.create_connection((addr, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = memoryview(bytearray(256 << 10))
    time.sleep(max(0.0, start - time.time()))
    left = nbytes
    while left > 0:
        left -= s.send(data[: min(len(data), left)])
    s.close()


# ---------------------------------------------------------------- driver

def _py(cluster, h, code):
    return cluster.popen(h, [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))


def run_pattern(cluster, pairs, nbytes, port):
    """Every (src, dst) pair streams nbytes at once; per stream GB/s, machine CPU busy."""
    head = "import sys; sys.path.insert(0, %r); from netns_streams import *; " % HERE
    dsts = sorted({d for _, d in pairs})
    recvs = {}
    for d in dsts:
        recvs[d] = _py(cluster, d, head + f"recv_end({port}, {sum(1 for _, x in pairs if x == d)})")
        assert recvs[d].stdout.readline().strip() == "ready"
    start = time.time() + 0.3
    addr = {d: ("127.0.0.1" if any(s == d for s, x in pairs if x == d) else cluster.address(d)) for d in dsts}
    sends = [_py(cluster, s, head + f"send_end({addr[d]!r}, {port}, {nbytes}, {start})") for s, d in pairs]
    time.sleep(max(0.0, start - time.time()))
    b0 = _cpu_busy()
    ends = []
    for d in dsts:
        ends += json.loads(recvs[d].communicate()[0].strip().splitlines()[-1])
    b1 = _cpu_busy()
    for p in sends:
        p.wait()
    rates = [n / (t - start) / 1e9 for n, t in ends]
    return rates, (b1[0] - b0[0]) / max(1, b1[1] - b0[1])


def streams(args):
    from hcomm.topology import NetnsCluster

    h = args.hosts
    patterns = {"one": [(0, 1)], "ring": [(k, (k + 1) % h) for k in range(h)],
                "all": [(a, b) for a in range(h) for b in range(h) if a != b], "loopback": [(0, 0)]}
    out = {k: [] for k in patterns}
    with NetnsCluster(h, rate=args.rate, prefix=f"ns{os.getpid() % 100000}") as c:
        for rep in range(args.repeats):
            for name, pairs in patterns.items():
                rates, busy = run_pattern(c, pairs, args.bytes, PORT + rep * 10 + len(out[name]))
                out[name].append((rates, busy))
                print(f"{name:>8} pass {rep}: per stream GB/s " + " ".join(f"{r:.3f}" for r in rates) +
                      f" | sum {sum(rates):.3f} | CPU busy {busy * 100:.0f} %", flush=True)
    return out


def pingpong_end(lead, addr, port, sizes, iters, rest):
    """h0 leads, h1 echoes: per size and mode the half round trips (seconds)."""
    if lead:
        s = socket.create_connection((addr, port))
    else:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", port))
        ls.listen(1)
        print("ready", flush=True)
        s = ls.accept()[0]
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(max(sizes))
    view = memoryview(buf)

    def move(n, send):
        if send:
            s.sendall(view[:n])
            return
        got = 0
        while got < n:
            got += s.recv_into(view[got:n])

    res = {}
    for n in sizes:
        for mode, pause in (("rested", rest), ("back-to-back", 0.0)):
            ts = []
            for _ in range(iters + 1):
                if lead:
                    if pause:
                        time.sleep(pause)
                    t0 = time.perf_counter()
                    move(n, True)
                    move(n, False)
                    ts.append((time.perf_counter() - t0) / 2)
                else:
                    move(n, False)
                    move(n, True)
            res[f"{n} {mode}"] = ts[1:]
    if lead:
        print(json.dumps(res), flush=True)


def pingpong(args):
    from hcomm.topology import NetnsCluster

    sizes = [8, 512, 4096, 32768, 131072, 262144, 2 << 20]
    head = "import sys; sys.path.insert(0, %r); from netns_streams import *; " % HERE
    with NetnsCluster(2, rate=args.rate, prefix=f"ns{os.getpid() % 100000}") as c:
        echo = _py(c, 1, head + f"pingpong_end(False, '', {PORT}, {sizes}, {args.iters}, 0.05)")
        assert echo.stdout.readline().strip() == "ready"
        lead = _py(c, 0, head + f"pingpong_end(True, {c.address(1)!r}, {PORT}, {sizes}, {args.iters}, 0.05)")
        res = json.loads(lead.communicate()[0].strip().splitlines()[-1])
        echo.wait()
    small = min(res["8 rested"])
    print(f"half round trip (us), fastest / median of {args.iters}; slope = (fastest - 8 B's) / bytes")
    for key, ts in res.items():
        n = int(key.split()[0])
        slope = (min(ts) - small) / n if n > 8 else float("nan")
        print(f"{key:>22}: {min(ts) * 1e6:9.1f} / {statistics.median(ts) * 1e6:9.1f}"
              f"   slope {1e-9 / slope if slope > 0 else float('inf'):.3f} GB/s")
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("streams", "pingpong"))
    p.add_argument("--rate", default="10gbit")
    p.add_argument("--hosts", type=int, default=3)
    p.add_argument("--bytes", type=int, default=64 << 20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    subprocess.run(["uptime"])
    (streams if args.what == "streams" else pingpong)(args)
    subprocess.run(["uptime"])


if __name__ == "__main__":
    main()
