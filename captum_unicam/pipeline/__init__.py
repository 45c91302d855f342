"""One pipeline above the core: plan a study, train or load each model, evaluate, publish.

- :mod:`captum_unicam.pipeline.requests`: one typed request per command, the rules that
  combine its fields, and the one table of field names to command-line flags;
- :mod:`captum_unicam.pipeline.runs`: the commands, one function each (``train``,
  ``explain``, ``quantify``, ``compare``, ``demo``), each taking its request and returning
  what it wrote;
- :mod:`captum_unicam.pipeline.pair`: the Student / Base (/ Teacher) :class:`Pair` of a study,
  loaded and checked once;
- :mod:`captum_unicam.pipeline.data`: preprocessing (image size, normalisation), labelled
  subsets, and the preprocessing a checkpoint records;
- :mod:`captum_unicam.pipeline.training`: how a Teacher, a Base and a Student are trained
  (:func:`train_checkpoint`, by a :class:`~captum_unicam.kd.recipe.Recipe`);
- :mod:`captum_unicam.pipeline.batches`: seeded, class-stratified batches
  (:func:`stratified_loader`) and the rule for a short last batch;
- :mod:`captum_unicam.pipeline.evaluation`: how a study is evaluated (maps, FSS and RS,
  localisation, the cued evaluation);
- :mod:`captum_unicam.pipeline.demo`: the demo's models (cached) and its run;
- :mod:`captum_unicam.pipeline.study`: the experiment runner (:func:`run_experiment`);
- :mod:`captum_unicam.pipeline.process`: the thread count of a run.

Reports are written by :mod:`captum_unicam.output.report`. The names below are imported
lazily, so that ``captum_unicam.pipeline.requests`` costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

from captum_unicam import __version__

_LAZY = {
    "MIN_BATCH": "captum_unicam.pipeline.batches",
    "StratifiedBatchSampler": "captum_unicam.pipeline.batches",
    "stratified_loader": "captum_unicam.pipeline.batches",
    "terminate_as_interrupt": "captum_unicam.output.publish",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'captum_unicam.pipeline' has no attribute {name!r}")
