r"""Data for the KD experiments: the controlled dataset and loaders by spec string.

- :class:`ControlledShapes`: shapes on cluttered, optionally class-tinted backgrounds,
  with ground-truth object masks, generated from a seed (no download).
- :func:`load_dataset`: ``"controlled[:SEED]"``, ``"cifar10:ROOT"``,
  ``"imagefolder:ROOT"``, with classes in a given order of names
  (``expected_classes``, ``class_map``) and an explicit resize rule (``resize``);
  bad specs raise :class:`DataSpecError`; :func:`spec_paths` lists the folders a spec
  reads.
- :func:`check_images`: every image file's header checked before any work is done;
  :func:`data_summary`: classes, counts and preprocessing of a data set, for a report.
- :func:`read_image`, :func:`image_header`: one image file read as the user sees it,
  its size checked against :data:`MAX_PIXELS` and :data:`MAX_ASPECT_RATIO` first.
"""

from captum_unicam.data.checks import ImageCheck, check_images, data_summary
from captum_unicam.data.classes import class_difference, order_classes
from captum_unicam.data.controlled import SHAPES, SPLITS, ControlledShapes
from captum_unicam.data.images import (
    MAX_ASPECT_RATIO,
    MAX_PIXELS,
    ImageHeader,
    image_header,
    read_image,
)
from captum_unicam.data.loaders import SCHEMES, DataSpecError, load_dataset, spec_paths
from captum_unicam.data.resize import DEFAULT_RESIZE, RESIZE_RULES, resize_image

__all__ = [
    "ControlledShapes",
    "SHAPES",
    "SPLITS",
    "SCHEMES",
    "DataSpecError",
    "load_dataset",
    "spec_paths",
    "check_images",
    "ImageCheck",
    "read_image",
    "image_header",
    "ImageHeader",
    "MAX_PIXELS",
    "MAX_ASPECT_RATIO",
    "RESIZE_RULES",
    "DEFAULT_RESIZE",
    "resize_image",
    "order_classes",
    "class_difference",
    "data_summary",
]
