"""Worker for tests/test_distributed.py: evaluate_kd on tiny models under torch.distributed.

Also runnable by hand on CPU, e.g.::

    torchrun --nproc_per_node 2 tests/distributed_worker.py OUT_DIR

Each rank writes OUT_DIR/rank{r}.json (index sharding) and OUT_DIR/sampler_rank{r}.json
(a DataLoader with DistributedSampler), and OUT_DIR/error_rank{r}.txt (the error each
rank raised when rank 1 met a NaN batch).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from tiny_models import TinyNet
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

N_SAMPLES, BATCH = 30, 6  # 5 batches: ranks get 3 and 2 of them
SAMPLER_BATCH = 5  # with a DistributedSampler: 15 samples per rank, 3 batches each


def build():
    """Models, dataset, layers and label embeddings, identical in every process."""
    torch.manual_seed(0)
    student, base = TinyNet(4).eval(), TinyNet(5).eval()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.rand(N_SAMPLES, 3, 16, 16, generator=g), torch.arange(N_SAMPLES) % 3)
    layers = {"L1": (student.layer1, base.layer1), "L2": (student.layer2, base.layer2)}
    emb = torch.randn(3, 5, generator=g)
    return student, base, data, layers, emb


def evaluate(loader, student, base, layers, emb, **kwargs):
    from captum_unicam.metrics import evaluate_kd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UniCAM degenerate-case warnings on random nets
        return evaluate_kd(
            student,
            layers,
            loader,
            base_forward_func=base,
            label_embeddings=emb,
            progress=False,
            n_bootstrap=100,
            **kwargs,
        )


def run(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        student, base, data, layers, emb = build()
        out = Path(out_dir)
        # 1. a plain loader: evaluate_kd shards the batches by index
        #    (road_impute with its default noise: random, yet the same on any rank)
        from captum_unicam.perturb import road_impute

        result = evaluate(
            DataLoader(data, batch_size=BATCH), student, base, layers, emb, perturbation=road_impute
        )
        (out / f"rank{rank}.json").write_text(result.to_json())
        # 2. the caller shards with a DistributedSampler
        sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=False)
        loader = DataLoader(data, batch_size=SAMPLER_BATCH, sampler=sampler)
        result = evaluate(loader, student, base, layers, emb, maps=("none", "distilled"))
        (out / f"sampler_rank{rank}.json").write_text(result.to_json())
        # 3. a bad batch on rank 1 only: every rank raises, none waits forever
        x, y = data.tensors
        bad = [(x[:6], y[:6]), (torch.full_like(x[:6], float("nan")), y[:6])]
        try:
            evaluate(bad, student, base, layers, emb, maps=("none",))
        except ValueError as err:
            (out / f"error_rank{rank}.txt").write_text(str(err))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # under torchrun
    run(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ["MASTER_PORT"]),
        sys.argv[1],
    )
