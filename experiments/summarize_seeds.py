#!/usr/bin/env python
r"""Across-seed summary of several runs of ``run_controlled.py``.

Reads the ``results.json`` of each run and prints markdown tables: cue-free accuracy of every
model per seed, the distilled-against-residual pdCor of the raw features per layer, and how
much of the distilled and residual maps' mass lies on the object, each with the mean and
standard deviation over seeds.

    python experiments/summarize_seeds.py experiments/results/controlled \
        experiments/results/controlled_seed1 experiments/results/controlled_seed2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence


def _load(folder: str) -> Dict:
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give folders written by run_controlled.py")
    return json.loads(path.read_text(encoding="utf-8"))


def _spread(values: Sequence[float], fmt: str) -> str:
    if len(values) < 2:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _rows(
    runs: List[Dict], keys: Sequence[str], value: Callable[[Dict, str], float], fmt: str
) -> List[List[str]]:
    out = []
    for key in keys:
        vals = [value(r, key) for r in runs]
        out.append([key] + [fmt.format(v) for v in vals] + [_spread(vals, fmt)])
    return out


def summarize(folders: Sequence[str], method: str = "response") -> str:
    runs = [_load(f) for f in folders]
    seeds = [f"seed {r['config']['seed']}" for r in runs]
    layers = runs[0]["evaluations"][method]["layers"]
    parts = []

    models = list(runs[0]["accuracies"])
    parts.append(
        "Cue-free test accuracy (%):\n\n"
        + _table(
            ["model"] + seeds + ["mean ± sd"],
            _rows(runs, models, lambda r, m: 100 * r["accuracies"][m]["test"], "{:.1f}"),
        )
    )

    def pdcor(which: str) -> Callable[[Dict, str], float]:
        return lambda r, layer: r["evaluations"][method]["summary"]["by_layer"][layer]["none"][
            which
        ]["mean"]

    rows = []
    for layer in layers:
        d = [pdcor("rs_distilled")(r, layer) for r in runs]
        s = [pdcor("rs_residual")(r, layer) for r in runs]
        p = [
            r["evaluations"][method]["summary"]["by_layer"][layer]["none"][
                "p_distilled_gt_residual"
            ]
            for r in runs
        ]
        rows.append(
            [layer, _spread(d, "{:.3f}"), _spread(s, "{:.3f}"), ", ".join(f"{v:.3g}" for v in p)]
        )
    parts.append(
        f"pdCor of the raw distilled and residual features ({method} KD; mean over batches, "
        "then mean ± sd over seeds; p per seed, distilled > residual):\n\n"
        + _table(["layer", "distilled", "residual", "p per seed"], rows)
    )

    def energy(kind: str) -> Callable[[Dict, str], float]:
        return lambda r, layer: r["localisation"][method][layer]["kinds"][kind]["energy"]["mean"]

    rows = []
    for layer in layers:
        row = [layer]
        for kind in ("gradcam_base", "gradcam_student", "distilled", "residual"):
            row.append(_spread([energy(kind)(r, layer) for r in runs], "{:.2f}"))
        rows.append(row)
    chance = _spread(
        [r["localisation"][method][layers[0]]["chance"]["energy"] for r in runs], "{:.3f}"
    )
    parts.append(
        f"Share of each map's positive mass on the object ({method} KD; mean ± sd over seeds; "
        f"chance {chance}):\n\n"
        + _table(
            ["layer", "Grad-CAM Base", "Grad-CAM Student", "UniCAM distilled", "UniCAM residual"],
            rows,
        )
    )
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("folders", nargs="+", help="output folders of run_controlled.py")
    p.add_argument("--method", default="response", help="KD method whose evaluation to summarise")
    args = p.parse_args(argv)
    try:
        print(summarize(args.folders, args.method), end="")
    except (FileNotFoundError, KeyError) as e:
        print(f"summarize_seeds: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
