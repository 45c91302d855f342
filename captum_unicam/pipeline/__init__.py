"""One pipeline above the core: plan a study, train or load each model, evaluate, publish.

- :mod:`captum_unicam.pipeline.data`: preprocessing (image size, normalisation), labelled
  subsets, and the preprocessing a checkpoint records;
- :mod:`captum_unicam.pipeline.training`: how a Teacher, a Base and a Student are trained
  (:class:`Recipe`, :func:`train_checkpoint`);
- :mod:`captum_unicam.pipeline.batches`: seeded, class-stratified batches
  (:func:`stratified_loader`) and the rule for a short last batch;
- :mod:`captum_unicam.pipeline.evaluation`: how a study is evaluated (accuracies, maps,
  FSS and RS);
- reports are written by :mod:`captum_unicam.report` (HTML from
  :mod:`captum_unicam.output.html`, folders published by :mod:`captum_unicam.output.publish`).
"""

from captum_unicam.pipeline.batches import MIN_BATCH, StratifiedBatchSampler, stratified_loader

__all__ = ["MIN_BATCH", "StratifiedBatchSampler", "stratified_loader"]
