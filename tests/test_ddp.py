"""Data-parallel training on CPU: 2 processes, gloo backend; ranks must end with identical weights."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from m3amba.train import train
    from test_train import tiny_config, tiny_scene  # the spawned process shares the test's sys.path
    cfg = tiny_config(epochs=2, device="cpu", ema_decay=0.9)
    cfg["train"]["samples_per_epoch"] = 16  # 8 windows per rank, 2 steps of 4
    summary = train(cfg, os.path.join(out_dir, "run"), scene=tiny_scene(), log=lambda *_: None)
    state = {k: v.detach().contiguous() for k, v in summary["model"].state_dict().items()}
    save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    from safetensors.torch import load_file
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    run = tmp_path / "run"
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "epoch_0002"  # written by rank 0 only
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    # the model really changed during training (DDP did step)
    state = torch.load(run / "checkpoints" / "epoch_0002" / "state.pt", weights_only=True)
    assert state["step"] == 4
