r"""Architectures, the L1..L4 layers of the paper, and checkpoint files.

Architectures (:data:`ARCHITECTURES`), all built with random weights (nothing is ever
downloaded) and all exposing ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``
like torchvision's ResNet, so :func:`stage_layers` and Captum layer attributions work
the same on every one of them:

============== ========================================= ========================
name           blocks per stage / widths                 default stem
============== ========================================= ========================
resnet18       torchvision, BasicBlock 2-2-2-2, 64..512  ImageNet (7x7/2 + pool)
resnet34       torchvision, BasicBlock 3-4-6-3, 64..512  ImageNet
resnet50       torchvision, Bottleneck 3-4-6-3, 256..2048 ImageNet
resnet101      torchvision, Bottleneck 3-4-23-3          ImageNet
small_resnet_s BasicBlock 1-1-1-1, widths 8-16-32-64     CIFAR (3x3/1, no pool)
small_resnet_m BasicBlock 1-1-1-1, widths 16-32-64-128   CIFAR
small_resnet_l BasicBlock 2-2-2-2, widths 32-64-128-256  CIFAR
small_resnet   the same as ``small_resnet_m``            CIFAR
============== ========================================= ========================

The small ResNets are CPU-friendly models for 32x32 inputs (a Teacher / assistant /
Student chain is ``small_resnet_l`` -> ``small_resnet_m`` -> ``small_resnet_s``); with
the CIFAR stem the four stages see 32, 16, 8 and 4 pixels square. ``cifar_stem=True``
gives the torchvision ResNets the same stem (3x3 convolution of stride 1 and no max
pooling), the usual change for CIFAR-10.

**L1..L4** (paper, appendix D.2) are the last residual block of each of the four
stages: ``model.layer1[-1]`` .. ``model.layer4[-1]``; :func:`get_layer` also accepts any
dotted module path, for models of your own.

**Checkpoints** are one dictionary saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)``, so loading never runs code from the file::

    {"format": "captum-unicam-checkpoint", "version": 2,
     "state_dict": {...tensors...},
     "meta": {"arch", "factory", "num_classes", "class_names", "preprocessing",
              "accuracy", "recipe", "kd_method", "teacher", "extra", "build_kwargs",
              "torch_version", "captum_unicam_version", "sha256"}}

Metadata holds only plain Python values (str, int, float, bool, None, lists, tuples,
dicts; :class:`pathlib.Path` is stored as ``str``), nested at most
:data:`MAX_METADATA_DEPTH` levels. A plain state dict, for example one of torchvision's, is
read too when the architecture is given, or the factory of your own model
(:mod:`~captum_unicam.models.factory`: ``factory="package.module:function"``).

Writing never replaces a file unasked: :func:`save_checkpoint` creates the file
exclusively unless ``overwrite=True``, which replaces only a regular file;
:func:`check_writable` checks the destination, the data folders the run reads and the free
space (:func:`checkpoint_size`) before any training; a write that fails after training
keeps the checkpoint in the system's temporary folder and says where.

A file is checked before it costs anything (:func:`load_checkpoint`): the CRC-32 of every
entry of the zip container; no TorchScript archive and no bare pickle; the SHA-256
``meta["sha256"]`` of the tensors and the metadata (:func:`checkpoint_digest`), when
present (every file of :func:`save_checkpoint`; plain state dicts have none); and the
architecture keywords against the shapes of the tensors in the file, so no model larger
than the file's weights is ever built.

Modules: :mod:`~captum_unicam.models.architectures` (architectures and layer lookup) and
:mod:`~captum_unicam.models.checkpoints` (save, verify, load) and
:mod:`~captum_unicam.models.factory` (models of your own code).
"""

from captum_unicam.errors import CheckpointError
from captum_unicam.models._files import check_writable, checkpoint_size
from captum_unicam.models.architectures import (
    ARCHITECTURES,
    SMALL_RESNET_CONFIGS,
    SmallResNet,
    build_model,
    get_layer,
    stage_layers,
)
from captum_unicam.models.checkpoints import (
    MAX_METADATA_DEPTH,
    check_class_names,
    checkpoint_digest,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from captum_unicam.models.factory import build_from_factory, import_factory, parse_factory

__all__ = [
    "ARCHITECTURES",
    "SMALL_RESNET_CONFIGS",
    "SmallResNet",
    "CheckpointError",
    "build_model",
    "stage_layers",
    "get_layer",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "check_writable",
    "checkpoint_size",
    "checkpoint_digest",
    "check_class_names",
    "MAX_METADATA_DEPTH",
    "parse_factory",
    "import_factory",
    "build_from_factory",
]
