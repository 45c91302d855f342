"""evaluate_kd under torch.distributed (2 CPU processes, gloo) equals one process."""

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

from captum_unicam.metrics import KDEvaluation  # noqa: E402
from captum_unicam.output.tables import METRICS  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_values(got: KDEvaluation, want: KDEvaluation, tol=1e-6):
    assert got.layers == want.layers and got.map_kinds == want.map_kinds
    for layer in want.layers:
        for kind in want.map_kinds:
            for m in METRICS:
                a, b = got.values[layer][kind][m], want.values[layer][kind][m]
                assert len(a) == len(b)
                assert max(abs(u - v) for u, v in zip(a, b)) <= tol, (layer, kind, m)
            for key, want_products in want.products[layer][
                kind
            ].items():  # the dataset estimator's sums
                got_products = got.products[layer][kind][key]
                assert max(abs(u - v) for u, v in zip(got_products, want_products)) <= tol, (
                    layer,
                    kind,
                    key,
                )


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    mp.spawn(worker.run, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student, base, data, layers, emb = worker.build()
        from captum_unicam.perturb import road_impute

        single = worker.evaluate(
            DataLoader(data, batch_size=worker.BATCH),
            student,
            base,
            layers,
            emb,
            perturbation=road_impute,
        )
        # the same batches as the two DistributedSamplers, in the order (local index, rank)
        bs = worker.SAMPLER_BATCH
        order = [
            list(range(r, len(data), 2))[i * bs : (i + 1) * bs]
            for i in range(len(data) // 2 // bs)
            for r in (0, 1)
        ]
        interleaved = [(data[idx][0], data[idx][1]) for idx in (torch.tensor(o) for o in order)]
        single_sampler = worker.evaluate(
            interleaved, student, base, layers, emb, maps=("none", "distilled")
        )
    finally:
        torch.set_num_threads(before)

    ranks = [KDEvaluation.from_json(tmp_path / f"rank{r}.json") for r in (0, 1)]
    assert ranks[0].batch_indices == [0, 1, 2, 3, 4] == single.batch_indices
    assert ranks[0] == ranks[1]  # every rank returns the same result
    assert ranks[0].settings["world_size"] == 2
    assert_same_values(ranks[0], single)
    assert ranks[0].summary()["by_layer"]["L2"]["gradcam"]["fss"]["mean"] == pytest.approx(
        single.summary()["by_layer"]["L2"]["gradcam"]["fss"]["mean"], abs=1e-6
    )
    assert ranks[0].settings["reference"] == single.settings["reference"]

    sampled = [KDEvaluation.from_json(tmp_path / f"sampler_rank{r}.json") for r in (0, 1)]
    assert sampled[0] == sampled[1] and sampled[0].settings["sharding"] == "sampler"
    assert sampled[0].batch_indices == [0, 0, 1, 1, 2, 2]
    assert_same_values(sampled[0], single_sampler)

    errors = [(tmp_path / f"error_rank{r}.txt").read_text() for r in (0, 1)]
    assert errors[1].startswith("batch 1: inputs contain NaN")
    assert errors[0] == "evaluate_kd failed on another rank: rank 1: " + errors[1]
