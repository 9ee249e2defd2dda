"""This rank's optimizer-side view of one flat buffer: fp32 master shard + reduced gradient shard.

Ownership: the inner torch optimizer holds `master` (and its state, e.g. AdamW's
exp_avg / exp_avg_sq, the same size); the engines write averaged gradients into `grad`
and read `master` back into the parameters after each step.
"""
import torch


def flatten_params(params, layout, dtype):
    """A zero-padded flat tensor of the parameters' current values, in dtype."""
    flat = torch.zeros(layout.padded_numel, dtype=dtype, device=params[0].device)
    for p, s in zip(params, layout.slots):
        flat[s.offset:s.offset + s.numel].copy_(p.detach().reshape(-1))
    return flat


class ShardState:
    def __init__(self, layout, rank, master):
        if master.dtype != torch.float32 or master.numel() != layout.shard_numel:
            raise ValueError(f"master shard must be fp32 with {layout.shard_numel} elements, "
                             f"got {master.dtype} with {master.numel()}")
        self.layout = layout
        self.rank = rank
        self.master = master
        # Averaged gradient of this shard in the parameter dtype; micro-steps add into it
        # (gradient accumulation) until zero_grad() drops it.
        self.grad = None

    def add_reduced(self, summed, world_size):
        """Fold one reduce-scatter output (a SUM over ranks) into the averaged gradient."""
        summed.div_(world_size)
        if self.grad is None:
            self.grad = summed
        else:
            self.grad.add_(summed)

    def master_grad(self):
        """fp32 gradient for the optimizer (a transient copy when parameters are bf16), or
        None when no backward reached this buffer: the optimizer then skips it, as torch
        skips parameters whose .grad is None."""
        if self.grad is None:
            return None
        return self.grad if self.grad.dtype == torch.float32 else self.grad.float()
