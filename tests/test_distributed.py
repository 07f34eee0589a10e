"""Scale-out: DistributedDataParallel (2 processes, gloo, CPU) training a small
model that uses masked_softmax and MaskGenerator gives the parameters of one
process training on the whole batch."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import maskext
from maskext.nn import MaskGenerator

B, T, D, STEPS = 8, 9, 6, 3


class TinyAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = MaskGenerator(D, D, temperature=0.8)
        self.qk = torch.nn.Linear(D, 2 * D)
        self.head = torch.nn.Linear(D, 1)

    def forward(self, x, lengths):
        g = self.gate.gate(x, lengths)                         # (B, T, D), padding 0
        q, k = self.qk(g).chunk(2, -1)
        p = maskext.masked_softmax(q @ k.transpose(1, 2), lengths=lengths, causal=True,
                                   scale=D ** -0.5)            # (B, T, T)
        return self.head(maskext.masked_mean(p @ g, lengths)).squeeze(-1)  # (B,)


def _model():
    torch.manual_seed(0)
    return TinyAttention().double()


def _batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    y = torch.randn(B, generator=gen, dtype=torch.float64)
    return x, lengths, y


def _train(model, rows):
    """STEPS of SGD; the loss is a mean over the batch rows given, so the mean
    of two halves' gradients (what DDP all-reduces) is the whole batch's."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(STEPS):
        x, lengths, y = (t[rows] for t in _batch(step))
        loss = ((model(x, lengths) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worker(rank, world, init_file, out_file):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        half = B // world
        _train(model, slice(rank * half, (rank + 1) * half))
        if rank == 0:
            torch.save(model.module.state_dict(), out_file)
        # Both ranks done with gloo before either tears it down: a rank that
        # destroyed the group while its peer's last all-reduce was still
        # winding down aborted once ("terminate called without an active
        # exception", SIGABRT) on the loaded 2-core CI machine.
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_two_processes_match_one_process():
    single = _model()
    _train(single, slice(0, B))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), out), nprocs=2, join=True)
        ddp = torch.load(out)
    start = _model().state_dict()
    for name, p in single.state_dict().items():
        assert not torch.equal(p, start[name]), f"{name} did not train"
        torch.testing.assert_close(ddp[name], p, atol=1e-10, rtol=1e-10, msg=name)
