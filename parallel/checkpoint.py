"""Checkpoints across the whole mesh: every (pp, tp) position's ZeRO shards, one manifest.

On disk (a directory), for a job at pp=2 tp=2 dp=1:

    manifest.json          the mesh (pp, dp, tp), ZeRO stage, and for every parameter of the
                           dense model its global name, dense shape, tp dim (None =
                           replicated over tp) and, per tp rank, the part and local name
    pp00-tp00/ ...         one part per (pp, tp) position: save_sharded's files for its dp
    pp00-tp01/             group (meta.json, owner.json, shard-<dp>-of-<dp size>.pt; each shard
    pp01-tp00/             file carries its (pp, tp, dp) coordinates)
    pp01-tp01/

A parameter is named by its name in the dense model (e.g. "layers.3.mlp.fc1.weight"), so
the checkpoint does not depend on how the layers were cut into stages or split over tp.
Loading at another mesh (any pp, tp, dp, vpp) rebuilds, for each parameter this rank
holds, the dense tensor from the old tp shards (concatenated along its tp dim), cuts this
rank's new tp shard, and fills the new ZeRO shards from it; optimizer state that is per
element (AdamW's exp_avg, exp_avg_sq) goes the same way, other state (`step`) is taken
as saved. Cost: a rank reads the dense values of its own parameters (memory-mapped), not
only its shard: simple, and fine while one stage's dense parameters fit in host memory.

A parameter whose name, tp dim or dense shape differs from the checkpoint (another
model) raises naming it, before anything is installed.

Names: the caller says which dense parameter each local one is. `param_specs(dense_named,
module)` builds that from a model built whole and then cut (the usual recipe: build the
tp-sharded model on every rank, keep this rank's stages; see examples/train_gpt.py).
"""
import json
import os
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

from .tensor.layers import partition_dim
from .zero.checkpoint import _OldShards, assemble_shard, install, save_sharded

FORMAT = 1
MANIFEST = "manifest.json"

# local parameter name -> (dense parameter name, tp dim or None)
Specs = Dict[str, Tuple[str, Optional[int]]]


def param_specs(model: torch.nn.Module, module: torch.nn.Module) -> Specs:
    """Specs of `module`'s parameters, which must be parameters of `model` (the whole
    tp-sharded model, before it was cut into stages): names and tp dims come from `model`."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    specs = {}
    for local, p in module.named_parameters():
        if id(p) not in name_of:
            raise ValueError(f"parameter '{local}' of the module is not a parameter of the model")
        specs[local] = (name_of[id(p)], partition_dim(model, name_of[id(p)]))
    return specs


def _part(pp_rank: int, tp_rank: int) -> str:
    return f"pp{pp_rank:02d}-tp{tp_rank:02d}"


def save_checkpoint(path: str, mesh, zopt, specs: Specs) -> None:
    """Every rank writes its shard into its (pp, tp) part; global rank 0 writes the
    manifest. Collective over the world. Raises FileExistsError on every rank, before
    writing, when `path` already holds a manifest (a checkpoint is never overwritten)."""
    exists = torch.tensor([int(os.path.exists(os.path.join(path, MANIFEST)))])
    dist.broadcast(exists, src=0)   # rank 0's view decides, so every rank raises or none does
    if exists.item():
        raise FileExistsError(f"{path} already holds a checkpoint ({MANIFEST}); choose a new directory")
    coords = {"pp": mesh.pp_rank, "tp": mesh.tp_rank}
    part = _part(mesh.pp_rank, mesh.tp_rank)
    save_sharded(zopt, os.path.join(path, part), coords=coords)
    shapes = _local_shapes(zopt)
    mine = {dense: {"part": part, "local": local, "tp_dim": dim, "shape": shapes[local]}
            for local, (dense, dim) in specs.items()}
    everyone = [None] * mesh.world_size
    dist.all_gather_object(everyone, (mesh.tp_rank, mine))
    if mesh.rank == 0:
        manifest = {"format": FORMAT, "mesh": {name: degree for name, degree in mesh.cfg.axes},
                    "zero_stage": zopt.stage, "params": _merge(everyone, mesh.cfg.tp)}
        with open(os.path.join(path, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
    dist.barrier()


def _local_shapes(zopt) -> Dict[str, list]:
    return {slot.name: list(slot.shape) for s in zopt.engine.shards for slot in s.layout.slots}


def _merge(everyone, tp: int) -> dict:
    """{dense name: {tp_dim, shape (dense), shards: [{part, local, shape}] per tp rank}}."""
    params = {}
    for tp_rank, mine in everyone:
        for dense, e in mine.items():
            entry = params.setdefault(dense, {"tp_dim": e["tp_dim"], "shards": [None] * tp})
            entry["shards"][tp_rank] = {"part": e["part"], "local": e["local"], "shape": e["shape"]}
    for dense, entry in params.items():
        shards, dim = entry["shards"], entry["tp_dim"]
        if any(s is None for s in shards):
            raise ValueError(f"parameter '{dense}' is missing on tp ranks "
                             f"{[t for t, s in enumerate(shards) if s is None]}")
        shape = list(shards[0]["shape"])
        if dim is not None:
            shape[dim] = sum(s["shape"][dim] for s in shards)
        entry["shape"] = shape
    return params


class _Dense:
    """Reads dense values of named parameters out of a mesh checkpoint."""

    def __init__(self, path: str):
        with open(os.path.join(path, MANIFEST)) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: mesh checkpoint format {self.manifest.get('format')!r}, expected {FORMAT}")
        self.path, self.params = path, self.manifest["params"]
        self._parts: Dict[str, _OldShards] = {}

    def part(self, name: str) -> _OldShards:
        if name not in self._parts:
            self._parts[name] = _OldShards(os.path.join(self.path, name))
        return self._parts[name]

    def entry(self, dense: str) -> dict:
        if dense not in self.params:
            raise KeyError(f"parameter '{dense}' is not in checkpoint {self.path}")
        return self.params[dense]

    def value(self, dense: str, key: str = "master") -> torch.Tensor:
        """The dense tensor of `dense` for `master` or a per-element optimizer state key."""
        e = self.entry(dense)
        shards = e["shards"] if e["tp_dim"] is not None else e["shards"][:1]   # replicated: any copy
        parts = [self.part(s["part"]).read(s["local"], 0, _numel(s["shape"]), key).view(s["shape"])
                 for s in shards]
        return parts[0].clone() if e["tp_dim"] is None else torch.cat(parts, dim=e["tp_dim"])

    def any_part(self) -> _OldShards:
        return self.part(next(iter(self.params.values()))["shards"][0]["part"])


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_spec(ckpt: _Dense, local: str, dense: str, dim: Optional[int], shape, tp: int) -> None:
    """Raise naming the parameter when it cannot be resharded from the checkpoint."""
    e = ckpt.entry(dense)
    if e["tp_dim"] != dim:
        raise ValueError(f"parameter '{dense}' (local '{local}'): tp dim {dim} here, {e['tp_dim']} in the checkpoint")
    want = list(shape)
    if dim is not None:
        want[dim] *= tp
    if want != e["shape"]:
        raise ValueError(f"parameter '{dense}' (local '{local}'): dense shape {want} here "
                         f"(shard {list(shape)} x tp {tp}), {e['shape']} in the checkpoint")


def load_checkpoint(path: str, mesh, zopt, specs: Specs) -> None:
    """Load a save_checkpoint directory into this mesh (any pp, tp, dp). Collective over dp."""
    ckpt = _Dense(path)
    shapes = _local_shapes(zopt)
    for local, (dense, dim) in specs.items():   # every check before any state changes
        _check_spec(ckpt, local, dense, dim, shapes[local], mesh.cfg.tp)
    missing = sorted(set(shapes) - set(specs))
    if missing:
        raise KeyError(f"parameters {missing} of the optimizer have no spec (no dense name)")
    ref = ckpt.any_part()
    ref_b = 0
    keys, ref_state = ref.sharded_keys(ref_b), ref.file(0)["buffers"][ref_b]["state"]
    cache: Dict[Tuple[str, str], torch.Tensor] = {}

    def read(local, lo, hi, key):
        if (local, key) not in cache:
            dense, dim = specs[local]
            full = ckpt.value(dense, key)
            mine = full if dim is None else full.chunk(mesh.cfg.tp, dim)[mesh.tp_rank]
            cache[(local, key)] = mine.reshape(-1)
        return cache[(local, key)][lo:hi]

    buffers = [assemble_shard(s.layout, zopt.comm.rank, read, keys, ref_state) for s in zopt.engine.shards]
    install(zopt, buffers, ref.file(0)["param_groups"])


def consolidate(path: str, keys=("master",)) -> Dict[str, Dict[str, torch.Tensor]]:
    """{key: {dense name: dense tensor}} for `master` (the fp32 parameters) and any
    per-element optimizer state keys (e.g. "exp_avg"); one process, no group needed."""
    ckpt = _Dense(path)
    return {key: {name: ckpt.value(name, key) for name in ckpt.params} for key in keys}
