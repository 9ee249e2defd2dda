"""The planner's second input form: any module with a `layers` list plus a sample batch.

Process-free: the layers are profiled in this process (tp = 1, no process group); the
step's bookkeeping (overhead.py, which needs a process group) is given as measured
nothing, so these tests are about the module path, not about timing."""
import copy

import pytest
import torch
from torch import nn

from hcomm.parallel.plan import Cluster, model_state, plan
from hcomm.parallel.plan.module_profile import check_module, profile_module
from hcomm.parallel.plan.profile import shape_key

NO_OVERHEADS = {"overheads": {}, "piece_s": 0.0, "piece_rep_s": 0.0}


class Net(nn.Module):
    """Odd widths, a repeated layer (profiled once) and a last layer of another width."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.layers = nn.ModuleList([nn.Linear(11, 19), nn.Sequential(nn.Tanh(), nn.Linear(19, 19)),
                                     nn.Sequential(nn.Tanh(), nn.Linear(19, 19)), nn.Linear(19, 3)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _batch(n=5):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 11, generator=g), torch.randn(n, 3, generator=g)


@pytest.fixture(scope="module")
def profiled():
    net = Net()
    before = copy.deepcopy(net.state_dict())
    prof = profile_module(net, _batch(), [1, 2, 3, 6], loss_fn=nn.functional.mse_loss, repeat=2,
                          overheads=NO_OVERHEADS)
    return net, before, prof


def test_rows_are_the_modules_own_layers(profiled):
    net, _, prof = profiled
    for b in (1, 2, 3, 6):                          # 6 > the sample's 5 rows: rows are repeated
        rows = prof["shapes"][shape_key(1, b, False)]
        assert [r["params"] for r in rows] == [sum(p.numel() for p in layer.parameters()) for layer in net.layers]
        widths = [19, 19, 19, 3]
        assert [r["out_bytes"] for r in rows] == [b * w * 4 for w in widths]
        assert all(r["fwd_s"] > 0 and r["bwd_s"] >= 0 for r in rows)
        assert all(r["fwd_collectives"] == [] and r["bwd_collectives"] == [] for r in rows)
        assert rows[0]["saved_bytes"] == b * 11 * 4        # a Linear keeps its input for the weight gradient
        assert [r["units"] for r in rows] == [1, 1, 1, 1]


def test_profile_leaves_the_module_as_it_was(profiled):
    net, before, _ = profiled
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())


def test_plan_of_a_module_cuts_only_its_layers(profiled):
    net, _, prof = profiled
    result = plan(module=net, sample_batch=_batch(), global_batch_size=6, cluster="hosts of 2+1 ranks",
                  profile=prof, loss_fn=nn.functional.mse_loss)
    cands = [e.cand for e in result.ranked]
    assert cands and all(c.tp == 1 and not c.sequence_parallel for c in cands)
    assert {(c.dp, c.pp) for c in cands} == {(3, 1), (1, 3)}      # 3 ranks, pp <= 4 layers, dp | 6
    assert result.model == {"module": "Net", "layers": 4, "seq_len": 1}
    cfg = result.config()
    assert cfg["tensor_parallel_size"] == 1 and cfg["global_batch_size"] == 6
    # model state of the fullest stage by memory.py's formulas
    for e in result.ranked:
        c = e.cand
        sizes = [2, 1, 1] if c.pp == 3 else [4]
        counts = [sum(p.numel() for p in layer.parameters()) for layer in net.layers]
        per_stage, at = [], 0
        for n in sizes:
            per_stage.append(sum(counts[at:at + n]))
            at += n
        want = max((model_state(psi, c.dp, c.zero_stage, 4, 0, 8) for psi in per_stage),
                   key=lambda m: sum(m.values()))
        for k, v in want.items():
            assert e.memory[k] == pytest.approx(v), (c.name, k)


def test_bad_module_input_is_named():
    with pytest.raises(ValueError, match="no non-empty `layers`"):
        check_module(nn.Linear(2, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="batch size 5"):
        check_module(Net(), (torch.zeros(5, 11), torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="batch dimension"):
        check_module(Net(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="not both"):
        plan({"n_layers": 2}, 4, cluster=Cluster.describe("2 ranks"), module=Net(), sample_batch=_batch())
    with pytest.raises(ValueError, match="needs sample_batch"):
        plan(module=Net(), global_batch_size=4, cluster="2 ranks")
