"""QAT under torch.distributed on CPU (gloo, 2 processes): one self-distillation step with DDP and
with FSDP2 (fully_shard) gives the loss and gradients of the same step in one process on the
whole batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

lowbit = pytest.importorskip("lowbit")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 96))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 64, generator=g)


def _step(student, teacher, x, world=1):
    """Local loss (mean over the local rows) and its backward."""
    with torch.no_grad():
        t = teacher(x)
    s = student(x)
    from lowbit.kl_loss import kl_div_loss

    loss = kl_div_loss(s, t, kind="cakld", gamma=0.3)
    loss.backward()
    return loss.detach()


def _single():
    model = _model()
    teacher = lowbit.distill.make_teacher(model)
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32), skip=()))
    loss = _step(model, teacher, _data())
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank, world, port, mode, q):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = _model()
        teacher = lowbit.distill.make_teacher(model)
        lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32), skip=()))
        x = _data().chunk(world)[rank]
        if mode == "ddp":
            wrapped = nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in (model[0], model[2]):
                fully_shard(layer)
            wrapped = fully_shard(model)
        loss = _step(wrapped, teacher, x)
        dist.all_reduce(loss)
        grads = {}
        for n, p in model.named_parameters():
            gr = p.grad
            if hasattr(gr, "full_tensor"):  # FSDP2: DTensor shards
                gr = gr.full_tensor()
            grads[n.replace("module.", "")] = gr.detach().numpy().copy()  # by value
        if rank == 0:
            q.put(((loss / world).item(), grads))
            q.close()
            q.join_thread()  # the result has left this process
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Skip interpreter teardown: gloo/torch worker threads racing static destructors at exit
    # occasionally abort a finished worker ("terminate called without an active exception").
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_distributed_qat_step_matches_single_process(mode):
    loss1, grads1 = _single()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, mode, q)) for r in range(2)]
    for p in procs:
        p.start()
    loss2, grads2 = q.get(timeout=240)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert loss2 == pytest.approx(loss1.item(), rel=1e-5)
    assert set(grads2) == set(grads1)
    for n in grads1:
        torch.testing.assert_close(torch.from_numpy(grads2[n]), grads1[n], rtol=1e-4, atol=1e-6)
