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

    {"format": "captum-unicam-checkpoint", "version": 1,
     "state_dict": {...tensors...},
     "meta": {"arch", "num_classes", "class_names", "recipe", "kd_method", "teacher",
              "extra", "build_kwargs", "torch_version", "captum_unicam_version"}}

Metadata holds only plain Python values (str, int, float, bool, None, lists, tuples,
dicts; :class:`pathlib.Path` is stored as ``str``). A plain state dict, for example one
of torchvision's, is read too when the architecture is given.
"""

from __future__ import annotations

from captum_unicam import errors as _errors

import difflib
import io
import os
import pathlib
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

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
]

_TORCHVISION = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}

#: (blocks per stage, width of the first stage) of the small CPU-friendly ResNets.
SMALL_RESNET_CONFIGS: Dict[str, Tuple[Tuple[int, int, int, int], int]] = {
    "small_resnet_s": ((1, 1, 1, 1), 8),
    "small_resnet_m": ((1, 1, 1, 1), 16),
    "small_resnet_l": ((2, 2, 2, 2), 32),
    "small_resnet": ((1, 1, 1, 1), 16),
}

#: Names accepted by :func:`build_model`.
ARCHITECTURES: Tuple[str, ...] = tuple(_TORCHVISION) + tuple(SMALL_RESNET_CONFIGS)

_FORMAT = "captum-unicam-checkpoint"
_VERSION = 1
_BUILD_ATTR = "_captum_unicam_build"  # set on models made by build_model


CheckpointError = _errors.CheckpointError  # the library's one family of expected failures


# ---------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------


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
        for i, (n_blocks, out_ch) in enumerate(zip(blocks, widths)):
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


def _check_arch(arch: Any) -> str:
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        close = difflib.get_close_matches(str(arch), ARCHITECTURES, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.{hint}"
        )
    return arch


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


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
    arch = _check_arch(arch)
    num_classes = _check_num_classes(num_classes)
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
        model = _TORCHVISION[arch](weights=None, num_classes=num_classes, **kwargs)
        if stem:
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
    build = {"arch": arch, "num_classes": num_classes, "kwargs": {"cifar_stem": stem, **kwargs}}
    setattr(model, _BUILD_ATTR, build)
    return model


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    # DataParallel / DistributedDataParallel keep the network in .module
    while isinstance(
        model, (nn.DataParallel, nn.parallel.DistributedDataParallel)
    ) and hasattr(model, "module"):
        model = model.module
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
    net = _unwrap(model)
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
    if key.upper() in ("L1", "L2", "L3", "L4"):
        return stage_layers(model)[key.upper()]
    modules = dict(_unwrap(model).named_modules())
    modules.pop("", None)
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
        f"no layer named {name!r} in {type(_unwrap(model)).__name__}; "
        + (f"closest: {', '.join(close)}; " if close else "")
        + f"valid names are {paper}or dotted module paths starting with one of: "
        + ", ".join(top)
    )


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def _plain(value: Any, where: str) -> Any:
    """Metadata as plain Python values that torch.load(weights_only=True) accepts."""
    if value is None:
        return None
    for kind in (bool, int, float, str):  # subclasses (enums, TorchVersion) as the base
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise ValueError(f"{where} has a key {k!r} that is not a str or int")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return value.item()
    raise ValueError(
        f"{where} holds a {type(value).__name__}; checkpoint metadata must be plain "
        "values (str, int, float, bool, None, list, tuple, dict), convert it first"
    )


def _build_info(model: nn.Module) -> Optional[dict]:
    info = getattr(model, _BUILD_ATTR, None)
    return info if isinstance(info, dict) else None


def save_checkpoint(
    path: Union[str, os.PathLike],
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    class_names: Optional[Sequence[str]] = None,
    recipe: Optional[Mapping[str, Any]] = None,
    kd_method: Optional[str] = None,
    teacher: Optional[str] = None,
    extra: Optional[Mapping[str, Any]] = None,
    build_kwargs: Optional[Mapping[str, Any]] = None,
) -> None:
    r"""Writes the model's state dict and its metadata to ``path``, atomically.

    The file is written to a temporary file in the same folder and renamed over
    ``path`` (:func:`os.replace`) only when complete, so a failed or interrupted save
    never leaves a partial checkpoint and never damages an existing one. Missing
    parent folders are created. The model is not modified.

    Args:

        path (str or PathLike): Destination file (``.pt`` by convention).
        model (nn.Module): The model to save (DataParallel wrappers are unwrapped).
        arch (str): Architecture name of :data:`ARCHITECTURES`; it must agree with
                    the model when the model was made by :func:`build_model`.
        num_classes (int): Number of classes.
        class_names (sequence of str, optional): Names of the classes, in index order.
        recipe (dict, optional): Training recipe (epochs, optimiser, learning rate,
                    data spec, seed, ...), plain values only.
        kd_method (str, optional): KD method (``"response"``, ``"attention"``,
                    ``"overhaul"``) or None for a model trained on data alone.
        teacher (str, optional): The Teacher, e.g. the path of its checkpoint.
        extra (dict, optional): Any other plain metadata (e.g. accuracies).
        build_kwargs (dict, optional): Keywords of :func:`build_model` needed to
                    rebuild the model (``cifar_stem``, ``width``, ...). Default: those
                    recorded by :func:`build_model`, else the stem read off the model.

    Raises:
        ValueError: bad arguments, non-plain metadata, or a model that does not match
        ``arch`` / ``num_classes``. Nothing is written then.
    """
    arch = _check_arch(arch)
    num_classes = _check_num_classes(num_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    net = _unwrap(model)
    info = _build_info(net)
    if info is not None and (info["arch"] != arch or info["num_classes"] != num_classes):
        raise ValueError(
            f"the model was built as {info['arch']} with {info['num_classes']} classes, "
            f"not {arch} with {num_classes}; pass the model's own arch and num_classes"
        )
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names for num_classes={num_classes}"
            )
    if build_kwargs is None:
        build_kwargs = info["kwargs"] if info is not None else {"cifar_stem": _infer_stem(net)}
    state = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
    fc = state.get("fc.weight")
    if fc is not None and fc.shape[0] != num_classes:
        raise ValueError(
            f"the model's fc layer has {fc.shape[0]} outputs but num_classes={num_classes}"
        )
    meta = {
        "arch": arch,
        "num_classes": num_classes,
        "class_names": class_names,
        "recipe": _plain(recipe, "recipe"),
        "kd_method": _plain(kd_method, "kd_method"),
        "teacher": _plain(teacher, "teacher"),
        "extra": _plain(extra, "extra"),
        "build_kwargs": _plain(dict(build_kwargs), "build_kwargs"),
        "torch_version": str(torch.__version__),
        "captum_unicam_version": _package_version(),
    }
    payload = {"format": _FORMAT, "version": _VERSION, "state_dict": state, "meta": meta}
    # the metadata must survive weights_only loading; check before touching the disk
    buf = io.BytesIO()
    torch.save(meta, buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
    except Exception as e:  # pragma: no cover - _plain should have caught it
        raise ValueError(f"checkpoint metadata cannot be loaded with weights_only=True: {e}")

    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint path {str(path)!r} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _package_version() -> str:
    try:
        from captum_unicam import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"


def _infer_stem(net: nn.Module) -> bool:
    conv = getattr(net, "conv1", None)
    return bool(
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and isinstance(getattr(net, "maxpool", None), nn.Identity)
    )


def _describe(arch: Any, num_classes: Any) -> str:
    return f"a {arch} with {num_classes} classes"


def load_checkpoint(
    path: Union[str, os.PathLike],
    *,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    map_location: Union[str, torch.device] = "cpu",
) -> Tuple[nn.Module, dict]:
    r"""Reads a checkpoint with ``torch.load(weights_only=True)`` and rebuilds the model.

    Args:

        path (str or PathLike): A file of :func:`save_checkpoint`, or a plain state
                    dict (e.g. torchvision's ``resnet18-*.pth``, or ``{"state_dict":
                    ...}``; a ``module.`` prefix of DistributedDataParallel is
                    removed), in which case ``arch`` is required.
        arch (str, optional): Expected architecture. Checked against the file's
                    metadata; required for a plain state dict.
        num_classes (int, optional): Expected number of classes; checked against the
                    metadata. For a plain state dict, read off ``fc.weight`` when None.
        map_location (str or torch.device, optional): Device of the returned model.
                    Default: "cpu"

    Returns:
        *tuple[nn.Module, dict]*: the model, in eval mode on ``map_location``, and its
        metadata (``arch``, ``num_classes``, ``class_names``, ``recipe``, ``kd_method``,
        ``teacher``, ``extra``, ``build_kwargs``, ..., and ``path``).

    Raises:
        CheckpointError: missing or unreadable file, a file that needs unsafe
        unpickling, or an architecture / class count other than the expected one.

    Examples::

        >>> save_checkpoint("student.pt", model, arch="small_resnet_s", num_classes=4)
        >>> student, meta = load_checkpoint("student.pt", arch="small_resnet_s")
    """
    if arch is not None:
        arch = _check_arch(arch)
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes)
    p = pathlib.Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise CheckpointError(
            f"checkpoint {str(p)!r} {what}; give the path of a .pt file written by "
            "'captum-unicam train' (or save_checkpoint)"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"checkpoint {str(p)!r} holds Python objects other than tensors and plain "
                f"values, so it cannot be loaded safely (weights_only=True): {msg}. "
                "Re-save it with captum_unicam.models.save_checkpoint, or save "
                "model.state_dict() instead of the model"
            ) from e
        raise CheckpointError(
            f"cannot read checkpoint {str(p)!r} ({type(e).__name__}: {msg}); the file is "
            "damaged or not a PyTorch file; write it again with save_checkpoint"
        ) from e

    if isinstance(obj, dict) and obj.get("format") == _FORMAT:
        meta = dict(obj.get("meta") or {})
        state = obj.get("state_dict")
        found_arch, found_n = meta.get("arch"), meta.get("num_classes")
        if (arch is not None and found_arch != arch) or (
            num_classes is not None and found_n != num_classes
        ):
            exp_arch = arch if arch is not None else found_arch
            exp_n = num_classes if num_classes is not None else found_n
            raise CheckpointError(
                f"checkpoint {str(p)!r} holds {_describe(found_arch, found_n)}, but "
                f"{_describe(exp_arch, exp_n)} was expected; pass the checkpoint of the "
                f"right model, or ask for arch={found_arch!r}, num_classes={found_n}"
            )
        build_kwargs = dict(meta.get("build_kwargs") or {})
    else:
        state = obj
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            state = obj["state_dict"]
        elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            state = obj["model"]
        if not isinstance(state, dict) or not all(
            isinstance(v, Tensor) for v in state.values()
        ):
            raise CheckpointError(
                f"checkpoint {str(p)!r} is neither a captum-unicam checkpoint nor a state "
                "dict of tensors; write it with save_checkpoint"
            )
        if any(k.startswith("module.") for k in state):
            state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
        if arch is None:
            raise CheckpointError(
                f"checkpoint {str(p)!r} is a plain state dict without metadata; pass its "
                f"architecture (arch=..., --arch), one of {', '.join(ARCHITECTURES)}"
            )
        fc = state.get("fc.weight")
        found_n = int(fc.shape[0]) if isinstance(fc, Tensor) and fc.ndim == 2 else None
        if num_classes is None:
            if found_n is None:
                raise CheckpointError(
                    f"checkpoint {str(p)!r} has no fc.weight to read the class count "
                    "from; pass num_classes"
                )
            num_classes = found_n
        elif found_n is not None and found_n != num_classes:
            raise CheckpointError(
                f"checkpoint {str(p)!r} holds {_describe(arch, found_n)}, but "
                f"{_describe(arch, num_classes)} was expected; pass num_classes={found_n} "
                "or the checkpoint of the right model"
            )
        conv = state.get("conv1.weight")
        build_kwargs = {}
        if arch in _TORCHVISION and isinstance(conv, Tensor) and conv.ndim == 4:
            build_kwargs["cifar_stem"] = tuple(conv.shape[-2:]) == (3, 3)
        meta = {
            "arch": arch,
            "num_classes": num_classes,
            "class_names": None,
            "recipe": None,
            "kd_method": None,
            "teacher": None,
            "extra": None,
            "build_kwargs": build_kwargs,
        }

    try:
        model = build_model(meta["arch"], meta["num_classes"], **build_kwargs)
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {str(p)!r}: cannot rebuild {_describe(meta['arch'], meta['num_classes'])} "
            f"from its metadata ({e}); it was written by an incompatible version"
        ) from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = [ln.strip() for ln in str(e).splitlines() if ln.strip()][:3]
        raise CheckpointError(
            f"checkpoint {str(p)!r}: its weights do not fit "
            f"{_describe(meta['arch'], meta['num_classes'])} ({' '.join(first)[:400]}); "
            "give the architecture the file was trained with (arch=..., --arch)"
        ) from e
    model.to(map_location).eval()
    meta["path"] = str(p)
    return model, meta
