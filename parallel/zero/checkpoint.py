"""Sharded checkpoints: per-rank shard files + metadata, resharding on load, consolidation.

On disk (a directory):

    meta.json                     world size, stage, dtype, and every flat buffer's layout
                                  (parameter names, shapes, offsets; flat.py)
    shard-00000-of-00004.pt ...   per rank: for each flat buffer its fp32 master shard and
                                  the inner optimizer's state for it, plus param groups

One directory holds one dp group's checkpoint: meta.json records the group's global ranks,
and saving a different group into the same directory raises (with tp or pp > 1 every
(pp, tp) position has its own dp group; hcomm.parallel.checkpoint gives each its own
subdirectory and a manifest). An optional `coords` dict (e.g. {"pp": 0, "tp": 1}) is
stored in meta.json and in every shard file with the rank's dp coordinate.

Loading reads parameters by *name*, not by position: each element range the new rank
owns is looked up in the old layouts and read from the old rank files that hold it.
So a checkpoint loads into any dp size (4 -> 2, 2 -> 3, ...), any stage and any bucket
size. Per-element state (tensors the size of the shard, e.g. exp_avg) is resharded the
same way; other state (e.g. AdamW's scalar `step`) is taken as saved. Only the old files
a rank needs are opened (memory-mapped).
"""
import json
import os

import torch
import torch.distributed as dist

from .flat import FlatLayout

FORMAT = 1


def _shard_file(path, rank, world_size):
    return os.path.join(path, f"shard-{rank:05d}-of-{world_size:05d}.pt")


def _group_ranks(comm):
    return [comm.global_rank(r) for r in range(comm.size)]


def _claim(path, comm, coords):
    """Group rank 0 claims `path` for this group (atomically: os.link fails if another
    group's claim exists); the verdict is broadcast so every rank raises, before any
    shard is written, when the directory belongs to another group."""
    owner = {"group_ranks": _group_ranks(comm), "coords": coords}
    ok = torch.ones(1, dtype=torch.int64, device=comm.device)
    msg = ""
    if comm.rank == 0:
        os.makedirs(path, exist_ok=True)
        claim = os.path.join(path, "owner.json")
        tmp = f"{claim}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(owner, f)
        try:
            os.link(tmp, claim)
        except FileExistsError:
            with open(claim) as f:
                held = json.load(f)
            if held != owner:
                ok.zero_()
                msg = (f"{path} holds the checkpoint of dp group {held['group_ranks']} (coords {held['coords']}); "
                       f"this group is {owner['group_ranks']} (coords {coords}): saving would overwrite it. "
                       f"Use one directory per (pp, tp) position (hcomm.parallel.checkpoint.save_checkpoint)")
        finally:
            os.unlink(tmp)
    comm.broadcast(ok)
    if not ok.item():
        raise FileExistsError(msg or f"{path} holds another dp group's checkpoint (see group rank 0's error)")


def save_sharded(zopt, path, coords=None):
    """Every rank writes its shard file; group rank 0 writes meta.json. Collective.

    Raises FileExistsError (on every rank, before writing) when `path` holds the
    checkpoint of a different dp group; re-saving the same group overwrites it."""
    comm = zopt.comm
    coords = dict(coords or {})
    _claim(path, comm, coords)
    zopt.engine.inflight.drain()   # outstanding reduce-scatters land in the (unsaved) grad shards
    buffers = [{"master": s.master.detach().clone(),
                "state": {k: (v.clone() if torch.is_tensor(v) else v)
                          for k, v in zopt.inner.state.get(s.master, {}).items()}}
               for s in zopt.engine.shards]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in zopt.inner.param_groups]
    torch.save({"format": FORMAT, "rank": comm.rank, "coords": {**coords, "dp": comm.rank}, "buffers": buffers,
                "param_groups": groups}, _shard_file(path, comm.rank, comm.size))
    if comm.rank == 0:
        meta = {"format": FORMAT, "world_size": comm.size, "stage": zopt.stage, "coords": coords,
                "group_ranks": _group_ranks(comm),
                "param_dtype": str(zopt.param_dtype), "psi": zopt.psi,
                "optimizer": zopt.optimizer_cls.__name__,
                "layouts": [s.layout.to_dict() for s in zopt.engine.shards]}
        with open(os.path.join(path, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    if comm.size > 1:
        dist.barrier(group=comm.group)   # every file exists once any rank returns


class _OldShards:
    """Reads element ranges of named parameters out of a checkpoint's rank files."""

    def __init__(self, path):
        with open(os.path.join(path, "meta.json")) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{path}: checkpoint format {self.meta.get('format')!r}, expected {FORMAT}")
        self.path, self.world_size = path, self.meta["world_size"]
        self.layouts = [FlatLayout.from_dict(d) for d in self.meta["layouts"]]
        self.where = {s.name: (b, s) for b, lay in enumerate(self.layouts) for s in lay.slots}
        self._files = {}

    def file(self, rank):
        if rank not in self._files:
            f = _shard_file(self.path, rank, self.world_size)
            if not os.path.exists(f):
                raise FileNotFoundError(f"checkpoint {self.path} lacks {os.path.basename(f)}")
            self._files[rank] = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        return self._files[rank]

    def locate(self, name):
        if name not in self.where:
            raise KeyError(f"parameter '{name}' is not in checkpoint {self.path}")
        return self.where[name]

    def sharded_keys(self, b):
        lay, st = self.layouts[b], self.file(0)["buffers"][b]["state"]
        return [k for k, v in st.items() if torch.is_tensor(v) and v.dim() == 1 and v.numel() == lay.shard_numel]

    def read(self, name, lo, hi, key):
        """Elements [lo, hi) of parameter `name` (flattened) of `master` or a state key."""
        b, slot = self.locate(name)
        size = self.layouts[b].shard_numel
        a, z = slot.offset + lo, slot.offset + hi
        parts = []
        for r in range(a // size, (z - 1) // size + 1):
            buf = self.file(r)["buffers"][b]
            src = buf["master"] if key == "master" else buf["state"][key]
            parts.append(src[max(a, r * size) - r * size:min(z, (r + 1) * size) - r * size])
        return torch.cat(parts)


def _load_buffer(old, shard, rank):
    """(master, state) for one new shard, assembled from the old files."""
    ref_b, _ = old.locate(shard.layout.slots[0].name)
    return assemble_shard(shard.layout, rank, old.read, old.sharded_keys(ref_b),
                          old.file(0)["buffers"][ref_b]["state"])


def assemble_shard(lay, rank, read, keys, ref_state):
    """(master, state) of `rank`'s shard of layout `lay`, from read(name, lo, hi, key), which
    returns elements [lo, hi) of the flattened parameter `name` of `master` or state `key`.
    keys: the per-element state keys; ref_state: a saved state dict whose other entries
    (e.g. AdamW's `step`) are taken as they are."""
    master = torch.zeros(lay.shard_numel, dtype=torch.float32)
    state = {k: torch.zeros(lay.shard_numel, dtype=ref_state[k].dtype) for k in keys}   # cpu; moved on load
    for pc in lay.pieces(rank):
        for key, dst in [("master", master)] + list(state.items()):
            dst[pc.shard_lo:pc.shard_lo + pc.length] = read(pc.slot.name, pc.param_lo, pc.param_hi, key)
    for k, v in ref_state.items():   # non-element state (e.g. `step`): as saved
        if k not in state:
            state[k] = v.clone() if torch.is_tensor(v) else v
    return master, state


def load_sharded(zopt, path):
    """Load a checkpoint saved by save_sharded at any dp size. Collective (publishes params)."""
    old = _OldShards(path)
    install(zopt, [_load_buffer(old, s, zopt.comm.rank) for s in zopt.engine.shards], old.file(0)["param_groups"])


def install(zopt, buffers, saved_groups):
    """Put (master, state) per flat buffer and the saved param groups into zopt, then
    publish the parameters from the masters (collective over the dp group)."""
    zopt.engine.zero_grad()
    for s, (master, state) in zip(zopt.engine.shards, buffers):
        s.master.copy_(master)
        if any(torch.is_tensor(v) and v.dim() == 1 for v in state.values()):
            zopt.inner.state[s.master] = {k: (v.to(s.master.device) if torch.is_tensor(v) and v.dim() else v)
                                          for k, v in state.items()}
    if len(saved_groups) == len(zopt.inner.param_groups):
        for g, sg in zip(zopt.inner.param_groups, saved_groups):
            g.update(sg)
    zopt.engine.publish()


def full_state_dict(zopt):
    """The consolidated model state dict (fp32 master values) on group rank 0; {} elsewhere.

    Gathers one flat buffer at a time, so no rank ever holds more than the result plus
    one buffer. Buffers and frozen parameters of the module are added as they are.
    """
    comm = zopt.comm
    out = {}
    for s in zopt.engine.shards:
        full = torch.empty(s.layout.padded_numel, dtype=torch.float32, device=s.master.device)
        comm.all_gather(full, s.master, async_op=False)
        if comm.rank == 0:
            for slot in s.layout.slots:
                out[slot.name] = full[slot.offset:slot.offset + slot.numel].view(slot.shape).cpu().clone()
    if comm.rank != 0:
        return {}
    if zopt.module is None:
        return {n: out[n] for n in zopt.param_names}   # the order the parameters were given in
    # The module's keys and order; a tied parameter (two keys, one tensor) maps by identity.
    name_of = {id(p): n for n, p in zopt.module.named_parameters()}
    result = {}
    for k, v in zopt.module.state_dict(keep_vars=True).items():
        managed = name_of.get(id(v))
        result[k] = out[managed] if managed in out else v.detach().clone()
    return result
