"""Probe parsing on fabricated /sys trees, topology files and dumps, sizes: no processes."""
import json

import pytest

import hcomm
from hcomm import _C, topology


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_sys(tmp_path):
    """Two NUMA nodes of 4 CPUs; eth0 at 25 Gb/s, ib0 at 100 Gb/s, a veth with no
    speed (the kernel answers -1), a bridge whose speed read fails, and loopback."""
    root = tmp_path / "sys"
    _write(root / "devices/system/node/node0/cpulist", "0-3\n")
    _write(root / "devices/system/node/node1/cpulist", "4-5,6,7\n")
    _write(root / "devices/system/node/possible", "0-1\n")
    for name, mac, speed in (("eth0", "aa:bb:cc:00:00:01", "25000"), ("ib0", "80:00:00:00:fe:80", "100000"),
                             ("veth1", "12:34:56:78:9a:bc", "-1"), ("lo", "00:00:00:00:00:00", "")):
        _write(root / "class/net" / name / "address", mac + "\n")
        if speed:
            _write(root / "class/net" / name / "speed", speed + "\n")
    _write(root / "class/net/br0/address", "02:00:00:00:00:09\n")
    return root


def test_probe_reads_nics_and_numa_from_sys(fake_sys):
    p = topology.probe_sys(fake_sys, [5, 6])
    assert p["numa"] == 1
    assert p["cpus"] == "5-6"
    assert [(n["name"], n["mac"], n["speed_mbps"]) for n in p["nics"]] == [
        ("br0", "02:00:00:00:00:09", 0), ("eth0", "aa:bb:cc:00:00:01", 25000),
        ("ib0", "80:00:00:00:fe:80", 100000), ("veth1", "12:34:56:78:9a:bc", 0)]
    assert topology.probe_sys(fake_sys, [0])["numa"] == 0
    assert topology.probe_sys(fake_sys, [42])["numa"] == -1   # a CPU no node lists
    assert topology.probe_sys(fake_sys / "missing", [0]) ["nics"] == []


def test_probe_without_numa_information(tmp_path):
    _write(tmp_path / "class/net/eth0/address", "aa:aa:aa:aa:aa:aa\n")
    p = topology.probe_sys(tmp_path, [0, 1, 2])
    assert p["numa"] == -1 and [n["name"] for n in p["nics"]] == ["eth0"]


def test_cpu_lists():
    assert _C._parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert _C._parse_cpu_list("") == []
    for bad in ("3-1", "a", "1-x", "0,,2-"):
        with pytest.raises(hcomm.Error, match="malformed CPU list"):
            _C._parse_cpu_list(bad)


def test_local_probe_sees_this_process():
    p = topology.probe_local()
    assert p["hostname"] and p["host_id"]
    assert p["cpus"]                         # the affinity mask is never empty
    assert all(n["name"] != "lo" for n in p["nics"])
    assert isinstance(p["gpus"], list)       # empty without NVML


TWO_RACKS = {"hosts": [{"name": "a", "rack": "r0", "ranks": [0, 1]},
                       {"name": "b", "rack": "r0", "ranks": [2]},
                       {"name": "c", "rack": "r1", "ranks": [3]}],
             "links": {"tcp": {"alpha": 4e-5, "beta": 8e-9}}}


def test_described_topology_loads_into_hosts_racks_and_links():
    t = topology.load(TWO_RACKS)
    assert [(h["name"], h["rack"], h["ranks"]) for h in t["hosts"]] == [
        ("a", "r0", [0, 1]), ("b", "r0", [2]), ("c", "r1", [3])]
    assert t["links"]["tcp"] == {"alpha": 4e-5, "beta": 8e-9, "source": "file"}
    assert t["links"]["shm"]["source"] == "default"
    assert [r["rank"] for r in t["ranks"]] == [0, 1, 2, 3]
    # a dump reads back into the same topology
    again = topology.load(json.dumps(t))
    assert again["hosts"] == t["hosts"] and again["links"]["tcp"]["beta"] == 8e-9


def test_topology_file_from_path(tmp_path):
    path = tmp_path / "topo.json"
    path.write_text(json.dumps(TWO_RACKS))
    assert len(topology.load(str(path))["hosts"]) == 3


@pytest.mark.parametrize("text, words", [
    ('{"hosts": [1, 2', "offset"),
    ('{"hosts": []} x', "trailing"),
    ('{"nohosts": 1}', "neither"),
])
def test_bad_topology_json_names_the_problem(text, words):
    with pytest.raises(hcomm.Error, match=words):
        topology.load(text)


def test_format_tree_lists_racks_hosts_and_links():
    text = topology.format_tree(topology.load(TWO_RACKS))
    for word in ("rack r0", "rack r1", "host a", "host c", "rank 3", "shm", "tcp", "file"):
        assert word in text


@pytest.mark.parametrize("text, n", [("8", 8), ("4K", 4096), ("64M", 64 << 20), ("1.5KiB", 1536),
                                     ("2g", 2 << 30), (100, 100)])
def test_parse_size(text, n):
    assert topology.parse_size(text) == n


def test_parse_size_rejects_garbage():
    with pytest.raises(hcomm.InvalidArgument, match="cannot read size"):
        topology.parse_size("64Q")


def test_cli_prints_tree_and_explain_as_json():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "hcomm.topo_cli", "--np", "2", "--hosts", "2", "--json",
                        "--explain", "allreduce", "64M"], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "HCOMM_DETERMINISTIC": "1"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["topology"]["hosts"]) == 2
    assert out["explain"]["nbytes"] == 64 << 20
    assert {c["algo"] for c in out["explain"]["candidates"]} == set(topology.ALLREDUCE_ALGOS)
    assert out["explain"]["chosen"] in topology.ALLREDUCE_ALGOS


def test_cli_netns_needs_a_command():
    from hcomm import topo_cli

    with pytest.raises(SystemExit, match="command"):
        topo_cli.main(["netns", "--hosts", "2"])


def test_garbled_numa_node_is_skipped(fake_sys):
    _write(fake_sys / "devices/system/node/node0/cpulist", "garbage\n")
    assert topology.probe_sys(fake_sys, [5])["numa"] == 1
    assert topology.probe_sys(fake_sys, [0])["numa"] == -1
