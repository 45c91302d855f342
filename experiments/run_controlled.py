#!/usr/bin/env python
r"""Reproduce the paper's analyses on the controlled dataset, on the CPU.

Trains (or loads from OUT/models/) a Teacher, a Base, one Student per KD method and a
Teacher-assistant chain on the controlled shapes dataset, evaluates FSS / RS per layer
(L1..L4), localises every map kind against the object masks, writes the tables, figures
and results.json to OUT (atomically), and prints the tables.

    python experiments/run_controlled.py --out experiments/results/controlled

``--quick`` runs a tiny recipe in seconds (numbers meaningless, for smoke tests).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from captum_unicam.output.tables import KD_METHODS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run the KD experiment (Tables 1-2, figures, localisation) on the controlled dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="experiments/results/controlled", help="output folder")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the data (controlled:SEED) and of training"
    )
    p.add_argument("--quick", action="store_true", help="tiny recipe for smoke tests")
    p.add_argument(
        "--methods", nargs="+", default=list(KD_METHODS), choices=KD_METHODS, help="KD methods"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--one-hot", action="store_true", help="one-hot label vectors instead of text embeddings"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: unchanged)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def main(argv=None) -> int:
    from captum_unicam.pipeline.study import run_experiment

    args = build_parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(shlex.quote(a) for a in ["python", "experiments/run_controlled.py", *argv])
    try:
        results = run_experiment(
            f"controlled:{args.seed}",
            out=args.out,
            methods=tuple(args.methods),
            seed=args.seed,
            quick=args.quick,
            device=args.device,
            progress=not args.no_progress,
            label_embeddings="one-hot" if args.one_hot else "text",
            num_threads=args.threads,
            command=command,
        )
    except ValueError as e:  # DataSpecError, ExperimentFolderError, bad arguments
        print(f"run_controlled: error: {e}", file=sys.stderr)
        return 2
    for name, text in results["tables"].items():
        if name.startswith("evaluation_"):
            continue
        print(f"\n## {name}\n\n{text}")
    print(f"written to {Path(results['out'])} in {results['timings']['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
