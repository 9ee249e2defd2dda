"""Collectives priced by hcomm's tuner on the links a placement uses.

`Pricer.collective(kind, nbytes, groups)` prices one collective that every group of an
axis runs at the same time (all tp groups after a row-parallel layer, all dp groups at
the step's end) and returns the slowest group's time:

  * each group is priced by `hcomm.explain(kind, nbytes, topology=..., ranks=group)`: the
    tuner's pick among ring / tree / halving-doubling / hierarchical on exactly the link
    classes (shm, tcp, rack) between the group's ranks, with its fitted alpha and beta;
  * groups that run at once share a host's NIC: when k groups of the axis each have
    ranks on both sides of one host's boundary, their inter-host bytes share that link,
    so the group is priced on the topology with the tcp and rack beta multiplied by k
    (the tuner already charges a host's NIC for its own ranks within one group);
  * reduce-scatter has a single algorithm in hcomm (ring: n-1 steps of total/n bytes,
    what the ring allgather moves), so it is priced as the tuner's ring allgather of the
    same total; a point-to-point send as a two-rank broadcast (alpha + bytes * beta).

Prices are cached by (collective, bytes, k, the group's sequence of (rack, host) labels
renumbered in order of appearance): two groups spread alike over the cluster cost alike.
"""
import copy
import json
from typing import Dict, List, Sequence


class Pricer:
    def __init__(self, cluster):
        self.cluster = cluster
        self._host = cluster.host_of()
        self._rack = cluster.rack_of()
        self._topos: Dict[int, dict] = {}
        self._cache: Dict[tuple, float] = {}        # by (kind, bytes, k, group shape): the tuner's answers
        self._by_groups: Dict[tuple, float] = {}    # by (kind, bytes, groups): collective()'s answers
        self._sharing: Dict[tuple, int] = {}
        self.calls = 0     # tuner queries made (for the report)

    # ----------------------------------------------------------------- public
    def collective(self, kind: str, nbytes: int, groups: Sequence[Sequence[int]]) -> float:
        """Seconds of `kind` (allreduce, allgather, reduce_scatter, broadcast, send) of
        nbytes run by all `groups` at once: the slowest group (the cost model adds the
        measured per-call overhead, cost.py)."""
        if nbytes <= 0:
            return 0.0
        gkey = tuple(tuple(g) for g in groups if len(g) > 1)
        if not gkey:
            return 0.0
        key = (kind, int(nbytes), gkey)
        if key not in self._by_groups:
            if gkey not in self._sharing:
                self._sharing[gkey] = self.sharing(gkey)
            k = self._sharing[gkey]
            self._by_groups[key] = max(self._price(kind, nbytes, g, k) for g in set(gkey))
        return self._by_groups[key]

    def sharing(self, groups: Sequence[Sequence[int]]) -> int:
        """The most groups that cross one host's boundary at once (>= 1)."""
        worst = 1
        for h in set(self._host):
            crossing = sum(1 for g in groups
                           if any(self._host[r] == h for r in g) and any(self._host[r] != h for r in g))
            worst = max(worst, crossing)
        return worst

    def link_class(self, a: int, b: int) -> str:
        if self._host[a] == self._host[b]:
            return "shm"
        return "tcp" if self._rack[a] == self._rack[b] else "rack"

    # --------------------------------------------------------------- internals
    def _shape_key(self, group):
        hosts, racks = {}, {}
        return tuple((racks.setdefault(self._rack[r], len(racks)), hosts.setdefault(self._host[r], len(hosts)))
                     for r in group)

    def _price(self, kind, nbytes, group, k):
        crosses = len({self._host[r] for r in group}) > 1
        k = k if crosses else 1
        key = (kind, int(nbytes), k, self._shape_key(group))
        if key not in self._cache:
            self._cache[key] = self._ask_tuner(kind, int(nbytes), group, k)
        return self._cache[key]

    def _topology(self, k):
        if k not in self._topos:
            topo = copy.deepcopy(self.cluster.topology)
            for name in ("tcp", "rack"):
                if name in topo["links"]:
                    topo["links"][name]["beta"] *= k
            self._topos[k] = json.loads(json.dumps(topo))
        return self._topos[k]

    def _ask_tuner(self, kind, nbytes, group, k):
        from hcomm.topology import explain

        self.calls += 1
        topo = self._topology(k)
        if kind == "send":
            return explain("broadcast", nbytes, topology=topo, ranks=group[:2]).candidate("binomial").seconds
        if kind == "reduce_scatter":
            return explain("allgather", nbytes, topology=topo, ranks=group).candidate("ring").seconds
        if kind not in ("allreduce", "allgather", "broadcast"):
            raise ValueError(f"cannot price collective {kind!r}")
        e = explain(kind, nbytes, topology=topo, ranks=group)
        return e.candidate(e.chosen).seconds

