"""Go on after a rank died, without restarting processes: hcomm does the agreement, torch
is initialised again on the survivors.

    try:
        train_step()
    except RuntimeError:                      # hcomm.Error, or torch's wrapper of it
        rank, world, old = hcomm.torch.shrink_world()
        ...rebuild the model wrappers and groups (DDP, DeviceMesh, new_group) on the new world

Why re-initialise rather than swap the default group in place: every torch group on
hcomm is its own hcomm world (one creator call per group), the default group's store
may have lived in the dead rank (rank 0 serves torch's TCPStore), and torch 2.13's own
dist.shrink_group needs the dead ranks named up front and a C++ backend that supports
shrinking (NCCL). Here the survivors find out who is left themselves
(Communicator.shrink on the default group's communicator), the new rank 0 starts a
fresh store whose address travels over the shrunk communicator, and
init_process_group("hcomm") runs again. Ranks keep their old order, renumbered densely.
"""
import datetime
import os
import socket

import numpy as np
import torch.distributed as dist

from .backend import ProcessGroupHcomm


def _reachable_ip():
    """An address of this host that the other survivors can reach: the source of the
    route towards the old MASTER_ADDR (the old rank 0's host may be gone, but the route
    is still the one to the cluster's network)."""
    towards = os.environ.get("MASTER_ADDR", "127.0.0.1")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(towards), 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def _share_store(comm, timeout):
    """A new TCPStore served by the new rank 0; its address goes to the others over comm."""
    buf = np.zeros(64, np.uint8)
    store = None
    if comm.rank == 0:
        host = _reachable_ip()
        store = dist.TCPStore(host, 0, comm.size, is_master=True, timeout=timeout, wait_for_workers=False)
        text = f"{host}:{store.port}".encode()
        buf[:len(text)] = np.frombuffer(text, np.uint8)
    comm.broadcast(buf, root=0)
    if store is None:
        host, port = bytes(buf).rstrip(b"\0").decode().rsplit(":", 1)
        store = dist.TCPStore(host, int(port), comm.size, is_master=False, timeout=timeout)
    return store


def _abort_every_group(reason):
    """Abort the in-flight work of every hcomm group of this process, not only the default
    group's: each torch group is its own hcomm world, so aborting the default one leaves
    the others running. A survivor whose peer is blocked in another group's collective
    (a pipeline or gradient-norm all_reduce the dead rank never broke, issue 22) would
    keep that peer waiting until its timeout, and the agreement waiting for it in turn;
    the abort notice ends that wait at once and sends the peer to shrink_world() too."""
    for pg in list(dist.distributed_c10d._world.pg_map):
        if isinstance(pg, ProcessGroupHcomm) and not pg.comm.closed:
            pg.comm.abort(reason)


def shrink_world(exclude=None, timeout=None):
    """Call on every survivor after a rank died (or to drop ranks on purpose: exclude=
    global ranks, who do not call). Aborts the old groups' in-flight work, agrees on who
    is left, destroys every old process group and initialises torch.distributed again
    on the survivors with the hcomm backend. Returns (rank, world_size, old_ranks), where
    old_ranks[r] is the old global rank of new rank r. Raises hcomm.Error naming the
    ranks it could not hear from within the timeout (default: the old group's)."""
    pg = dist.distributed_c10d._get_default_group()
    if not isinstance(pg, ProcessGroupHcomm):
        raise TypeError(f"shrink_world needs the default group on the hcomm backend, not {type(pg).__name__}")
    old = pg.comm
    if timeout is None:
        timeout = datetime.timedelta(seconds=old.timeout)
    elif not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    _abort_every_group(f"aborted for shrink_world() on global rank {old.rank}")
    new = old.shrink(exclude=exclude)
    try:
        members = np.zeros(new.size, np.int64)
        new.allgather(np.array([old.rank], np.int64), members)
        store = _share_store(new, timeout)
        rank, size = new.rank, new.size
    finally:
        new.close()
    dist.destroy_process_group()
    dist.init_process_group("hcomm", store=store, rank=rank, world_size=size, timeout=timeout)
    return rank, size, members.tolist()
