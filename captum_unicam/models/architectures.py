"""Architectures and the L1..L4 layers of the paper.

See :mod:`captum_unicam.models` for the table of architectures.
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from captum_unicam.models._shared import (
    ARCHITECTURES,
    BUILD_ATTR,
    SMALL_RESNET_CONFIGS,
    TORCHVISION,
    check_arch,
    check_num_classes,
    unwrap,
)

__all__ = [
    "ARCHITECTURES",
    "SMALL_RESNET_CONFIGS",
    "SmallResNet",
    "build_model",
    "stage_layers",
    "get_layer",
]


class SmallResNet(nn.Module):
    r"""A small ResNet of :class:`~torchvision.models.resnet.BasicBlock` s.

    It has torchvision's attribute names (``conv1``, ``bn1``, ``relu``, ``maxpool``,
    ``layer1`` .. ``layer4``, ``avgpool``, ``fc``), four stages of widths
    ``width * (1, 2, 4, 8)`` and strides ``(1, 2, 2, 2)``.

    Args:

        num_classes (int): Number of outputs of the final linear layer.
        blocks (sequence of 4 int, optional): Residual blocks in each stage.
                    Default: (1, 1, 1, 1)
        width (int, optional): Channels of the first stage. Default: 16
        cifar_stem (bool, optional): True: a 3x3 convolution of stride 1 and no
                    pooling (for 32x32 inputs). False: a 3x3 convolution of stride 2
                    and a 3x3 max pooling of stride 2, which divides the resolution
                    by 4 like torchvision's stem (for 128-224 pixel inputs).
                    Default: True
    """

    def __init__(
        self,
        num_classes: int,
        blocks: Sequence[int] = (1, 1, 1, 1),
        width: int = 16,
        cifar_stem: bool = True,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"blocks must be 4 positive integers, got {tuple(blocks)!r}")
        if int(width) < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        widths = [int(width) * m for m in (1, 2, 4, 8)]
        stride = 1 if cifar_stem else 2
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if cifar_stem else nn.MaxPool2d(3, stride=2, padding=1)
        )
        layers = []
        in_ch = widths[0]
        for i, (n_blocks, out_ch) in enumerate(zip(blocks, widths, strict=True)):
            s = 1 if i == 0 else 2
            down = None
            if s != 1 or in_ch != out_ch:
                down = nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 1, s, bias=False), nn.BatchNorm2d(out_ch)
                )
            stage = [BasicBlock(in_ch, out_ch, s, down)]
            stage += [BasicBlock(out_ch, out_ch) for _ in range(int(n_blocks) - 1)]
            layers.append(nn.Sequential(*stage))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(
    arch: str,
    num_classes: int,
    *,
    cifar_stem: Optional[bool] = None,
    **kwargs: Any,
) -> nn.Module:
    r"""Builds an architecture of :data:`ARCHITECTURES` with random weights.

    Nothing is downloaded: torchvision models are built with ``weights=None``.

    Args:

        arch (str): One of :data:`ARCHITECTURES`, e.g. ``"resnet18"`` or
                    ``"small_resnet_s"``.
        num_classes (int): Number of classes (outputs of ``fc``).
        cifar_stem (bool, optional): Use the CIFAR stem (3x3 convolution of stride 1,
                    no max pooling) for 32x32 inputs. None: the architecture's
                    default, True for the small ResNets and False for torchvision's.
                    Default: None
        **kwargs: Passed to the constructor: torchvision's ResNet keywords (e.g.
                    ``zero_init_residual``) or, for the small ResNets, ``width``
                    and ``blocks`` to override the variant's.

    Returns:
        *nn.Module*: the model in training mode, with ``layer1`` .. ``layer4``. The
        architecture and build keywords are kept on the model so that
        :func:`save_checkpoint` can record them.

    Examples::

        >>> model = build_model("resnet18", 10, cifar_stem=True)
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    arch = check_arch(arch)
    num_classes = check_num_classes(num_classes)
    if arch in SMALL_RESNET_CONFIGS:
        blocks, width = SMALL_RESNET_CONFIGS[arch]
        kwargs.setdefault("blocks", blocks)
        kwargs.setdefault("width", width)
        kwargs["blocks"] = tuple(int(b) for b in kwargs["blocks"])
        stem = True if cifar_stem is None else bool(cifar_stem)
        model: nn.Module = SmallResNet(num_classes, cifar_stem=stem, **kwargs)
    else:
        stem = bool(cifar_stem)
        if "weights" in kwargs and kwargs["weights"] is not None:
            raise ValueError(
                "build_model never downloads weights; build with weights=None and load "
                "a local file with load_checkpoint(path, arch=...)"
            )
        kwargs.pop("weights", None)
        model = TORCHVISION[arch](weights=None, num_classes=num_classes, **kwargs)
        if stem:
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
    build = {"arch": arch, "num_classes": num_classes, "kwargs": {"cifar_stem": stem, **kwargs}}
    setattr(model, BUILD_ATTR, build)
    return model


def stage_layers(model: nn.Module) -> Dict[str, nn.Module]:
    r"""The layers L1..L4 of the paper: the last residual block of each stage.

    Args:

        model (nn.Module): A model with ``layer1`` .. ``layer4`` (every architecture of
                    :func:`build_model`, torchvision's ResNets, or yours), possibly
                    wrapped in DataParallel / DistributedDataParallel.

    Returns:
        *dict[str, nn.Module]*: ``{"L1": model.layer1[-1], ..., "L4": model.layer4[-1]}``.

    Raises:
        ValueError: the model has no ``layer1`` .. ``layer4`` stages; pass the layer
        as a module, or by dotted name to :func:`get_layer`.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    net = unwrap(model)
    out: Dict[str, nn.Module] = {}
    for i in range(1, 5):
        stage = getattr(net, f"layer{i}", None)
        if not isinstance(stage, nn.Module):
            raise ValueError(
                f"{type(net).__name__} has no stage 'layer{i}', so L1..L4 (the last block "
                "of each of four ResNet stages) are not defined for it; name the layer "
                "by its dotted path instead, e.g. get_layer(model, 'features.7'), or pass "
                "the module itself"
            )
        children = list(stage.children()) if isinstance(stage, nn.Sequential) else []
        out[f"L{i}"] = children[-1] if children else stage
    return out


def get_layer(model: nn.Module, name: Union[str, nn.Module]) -> nn.Module:
    r"""Looks a layer up by paper name (``"L1"`` .. ``"L4"``) or dotted module path.

    Args:

        model (nn.Module): The model.
        name (str or nn.Module): ``"L1"`` .. ``"L4"`` (case-insensitive, see
                    :func:`stage_layers`) or a path of :meth:`nn.Module.named_modules`
                    such as ``"layer4.1.conv2"``. A module of ``model`` is returned
                    as it is.

    Returns:
        *nn.Module*: the layer.

    Raises:
        ValueError: no such layer; the message lists the closest names that exist.

    Examples::

        >>> get_layer(model, "L4") is model.layer4[-1]
        True
        >>> get_layer(model, "layer4.1.conv2")
        Conv2d(512, 512, kernel_size=(3, 3), ...)
    """
    if isinstance(name, nn.Module):
        if any(m is name for m in model.modules()):
            return name
        raise ValueError("the layer given is a module that is not part of this model")
    if not isinstance(name, str):
        raise ValueError(f"layer name must be a str like 'L4' or 'layer4.1', got {name!r}")
    key = name.strip()
    modules = dict(unwrap(model).named_modules())
    modules.pop("", None)
    if key.upper() in ("L1", "L2", "L3", "L4"):
        try:
            return stage_layers(model)[key.upper()]
        except ValueError as e:
            top = ", ".join(n for n in modules if "." not in n)
            raise ValueError(f"{e}; its modules are dotted paths starting with: {top}") from None
    if key.startswith("module.") and key[7:] in modules:
        key = key[7:]
    if key in modules:
        return modules[key]
    names = list(modules)
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.6)
    try:
        stage_layers(model)
        paper = "L1, L2, L3, L4, "
    except ValueError:
        paper = ""
    top = [n for n in names if "." not in n]
    raise ValueError(
        f"no layer named {name!r} in {type(unwrap(model)).__name__}; "
        + (f"closest: {', '.join(close)}; " if close else "")
        + f"valid names are {paper}or dotted module paths starting with one of: "
        + ", ".join(top)
    )
