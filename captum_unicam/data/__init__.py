r"""Data for the KD experiments: the controlled dataset and loaders by spec string.

- :class:`ControlledShapes`: shapes on cluttered, optionally class-tinted backgrounds,
  with ground-truth object masks, generated from a seed (no download).
- :func:`load_dataset`: ``"controlled[:SEED]"``, ``"cifar10:ROOT"``,
  ``"imagefolder:ROOT"``; bad specs raise :class:`DataSpecError`; :func:`spec_paths`
  lists the folders a spec reads.
"""

from captum_unicam.data.controlled import SHAPES, SPLITS, ControlledShapes
from captum_unicam.data.loaders import SCHEMES, DataSpecError, load_dataset, spec_paths

__all__ = ["ControlledShapes", "SHAPES", "SPLITS", "SCHEMES", "DataSpecError", "load_dataset", "spec_paths"]
