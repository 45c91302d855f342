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
     "meta": {"arch", "num_classes", "class_names", "recipe", "kd_method", "teacher",
              "extra", "build_kwargs", "torch_version", "captum_unicam_version",
              "sha256"}}

Metadata holds only plain Python values (str, int, float, bool, None, lists, tuples,
dicts; :class:`pathlib.Path` is stored as ``str``). A plain state dict, for example one
of torchvision's, is read too when the architecture is given.

A file is checked before it costs anything (:func:`load_checkpoint`): the CRC-32 of every
entry of the zip container; no TorchScript archive and no bare pickle; the SHA-256
``meta["sha256"]`` of the tensors and the metadata (:func:`checkpoint_digest`), when
present (version 2; plain state dicts and version 1 files have none); and the
architecture keywords against the shapes of the tensors in the file, so no model larger
than the file's weights is ever built.
"""

from __future__ import annotations

from captum_unicam import errors as _errors

import difflib
import hashlib
import io
import json
import os
import pathlib
import pickle
import tempfile
import warnings
import zipfile
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
    "checkpoint_digest",
    "check_class_names",
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
_VERSION = 2  # 2: the metadata holds "sha256" (checkpoint_digest); 1 is still read
_DIGEST_KEY = "sha256"
# the first bytes of torch.save's legacy (non-zip) format: the pickled magic number
_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
# blocks per stage of the torchvision ResNets, and whether they use Bottleneck blocks
_TORCHVISION_BLOCKS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
}
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
        raise _errors.InputError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.{hint}"
        )
    return arch


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise _errors.InputError(f"num_classes must be a positive int, got {num_classes!r}")
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
    meta[_DIGEST_KEY] = checkpoint_digest(state, meta)
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
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-",
                               suffix=".tmp")
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


def _remove_stale_temporaries(path: pathlib.Path) -> None:
    """Deletes ``.NAME.PID-*.tmp`` files that a killed save of ``path`` left behind
    (those of live processes are kept)."""
    import re

    from captum_unicam.output.publish import _pid_alive

    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[A-Za-z0-9_]+\.tmp$")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for e in entries:
        m = pattern.match(e.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                if e.is_file(follow_symlinks=False):
                    os.unlink(e.path)
            except OSError:
                pass


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


# ---------------------------------------------------------------------------
# Checks of a checkpoint file, before anything is built
# ---------------------------------------------------------------------------


def _canonical(value: Any) -> Any:
    """Metadata as JSON-able values that keep types apart (1 vs "1", dict key order)."""
    if isinstance(value, Mapping):
        items = [[_canonical(k), _canonical(v)] for k, v in value.items()]
        return {"dict": sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return {"int": str(value)}
    if isinstance(value, float):
        return {"float": repr(value)}
    return {type(value).__name__: repr(value)}


def checkpoint_digest(state_dict: Mapping[str, Tensor], meta: Optional[Mapping[str, Any]] = None) -> str:
    r"""SHA-256 of a state dict's tensors (names, dtypes, shapes, bytes) and of the metadata.

    :func:`save_checkpoint` stores it as ``meta["sha256"]`` and :func:`load_checkpoint`
    recomputes it, so a flipped byte in the weights or the metadata is found. The
    ``"sha256"`` and ``"path"`` entries of ``meta`` are left out.

    Args:

        state_dict (dict[str, Tensor]): the tensors.
        meta (dict, optional): plain metadata. Default: None

    Returns:
        *str*: the hexadecimal digest.
    """
    h = hashlib.sha256(f"{_FORMAT}\0".encode())
    rest = {k: v for k, v in (meta or {}).items() if k not in (_DIGEST_KEY, "path")}
    h.update(json.dumps(_canonical(rest), sort_keys=True).encode())
    for key in sorted(state_dict):
        t = state_dict[key].detach()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.layout != torch.strided:
            t = t.to_dense()
        flat = t.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_container(p: pathlib.Path) -> None:
    """Refuses, without unpickling anything, a file that is not a sound torch.save file."""
    try:
        with open(p, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
    except PermissionError as e:
        raise CheckpointError(
            f"checkpoint {str(p)!r} cannot be read (permission denied); fix its permissions"
        ) from e
    except OSError as e:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read ({e.strerror})") from e
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
                if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                    raise CheckpointError(
                        f"checkpoint {str(p)!r} is a TorchScript archive (torch.jit.save), "
                        "which would run code when loaded; save model.state_dict() with "
                        "torch.save, or use save_checkpoint"
                    )
                bad = z.testzip()  # reads every entry and checks its CRC-32
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
                NotImplementedError, RuntimeError) as e:  # zlib.error is not an OSError
            raise CheckpointError(
                f"checkpoint {str(p)!r} is damaged: its zip container cannot be read "
                f"({type(e).__name__}: {e}); copy or write it again"
            ) from e
        except Exception as e:  # zlib.error and other decoder errors
            raise CheckpointError(
                f"checkpoint {str(p)!r} is damaged ({type(e).__name__}: {e}); copy or write "
                "it again"
            ) from e
        if bad is not None:
            raise CheckpointError(
                f"checkpoint {str(p)!r} is damaged: the entry {bad!r} fails its CRC-32 check "
                "(flipped or truncated bytes); copy or write it again"
            )
        return
    if head == _LEGACY_MAGIC:
        return  # torch.save(..., _use_new_zipfile_serialization=False)
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        raise CheckpointError(
            f"checkpoint {str(p)!r} is a bare Python pickle, not a file of torch.save; it is "
            "not loaded (unpickling can run code); save model.state_dict() with torch.save, "
            "or use save_checkpoint"
        )
    raise CheckpointError(
        f"cannot read checkpoint {str(p)!r}: it is not a PyTorch file (neither a torch.save "
        "zip nor its legacy format), so it is not loaded; give a .pt file written by save_checkpoint "
        "or torch.save"
    )


def _torch_load(p: pathlib.Path) -> Any:
    try:
        with warnings.catch_warnings():  # torch's warnings add nothing to our one line
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            glob = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
            found = f" ({glob[0][:200]})" if glob else ""
            raise CheckpointError(
                f"checkpoint {str(p)!r} holds Python objects other than tensors and plain "
                f"values{found}, so it cannot be loaded safely (weights_only=True); it is "
                "not loaded. Re-save it with captum_unicam.models.save_checkpoint, or save "
                "model.state_dict() instead of the model"
            ) from e
        raise CheckpointError(
            f"cannot read checkpoint {str(p)!r} ({type(e).__name__}: {msg[:300]}); the file is "
            "damaged or not a PyTorch file; write it again with save_checkpoint"
        ) from e


def _stage_blocks(state: Mapping[str, Tensor]) -> Tuple[int, int, int, int]:
    counts = []
    for i in range(1, 5):
        prefix = f"layer{i}."
        idx = {k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)}
        counts.append(len(idx))
    return tuple(counts)  # type: ignore[return-value]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_architecture(p: pathlib.Path, arch: str, num_classes: Any,
                        build_kwargs: Mapping[str, Any], state: Mapping[str, Tensor]) -> None:
    """Every architecture keyword agrees with the tensors in the file, so the model built
    from them is no larger than the file's weights (checked before build_model)."""
    where = f"checkpoint {str(p)!r}"
    what = _describe(arch, num_classes)

    def misfit(detail: str) -> CheckpointError:
        return CheckpointError(
            f"{where}: its weights do not fit {what} ({detail}); give the architecture the "
            "file was trained with (arch=..., --arch), or write the file again"
        )

    if not _positive_int(num_classes):
        raise CheckpointError(f"{where}: its metadata gives num_classes={num_classes!r}, not a "
                              "positive int; the file is damaged or not ours")
    if not isinstance(build_kwargs, Mapping):
        raise CheckpointError(f"{where}: its build_kwargs metadata is not a dict")
    small = arch in SMALL_RESNET_CONFIGS
    allowed = {"cifar_stem"} | ({"blocks", "width"} if small else
                                {"zero_init_residual", "groups", "width_per_group",
                                 "replace_stride_with_dilation"})
    unknown = sorted(set(build_kwargs) - allowed, key=str)
    if unknown:
        raise CheckpointError(
            f"{where}: unknown build keywords {unknown} for {arch} in its metadata (accepted: "
            f"{sorted(allowed)}); it was written by an incompatible version"
        )
    stem = build_kwargs.get("cifar_stem")
    if stem is not None and not isinstance(stem, bool):
        raise CheckpointError(f"{where}: cifar_stem={stem!r} in its metadata is not a bool")
    conv, fc = state.get("conv1.weight"), state.get("fc.weight")
    if not isinstance(conv, Tensor) or conv.ndim != 4:
        raise misfit("no 4-D conv1.weight")
    if not isinstance(fc, Tensor) or fc.ndim != 2:
        raise misfit("no 2-D fc.weight")
    if fc.shape[0] != num_classes:
        raise misfit(f"fc.weight has {fc.shape[0]} outputs")
    found_blocks = _stage_blocks(state)
    if small:
        blocks, width = SMALL_RESNET_CONFIGS[arch]
        blocks = build_kwargs.get("blocks", blocks)
        width = build_kwargs.get("width", width)
        if not isinstance(blocks, (list, tuple)) or len(blocks) != 4 or not all(
                _positive_int(b) for b in blocks):
            raise CheckpointError(f"{where}: blocks={blocks!r} in its metadata is not 4 "
                                  "positive ints; the file is damaged or not ours")
        if not _positive_int(width):
            raise CheckpointError(f"{where}: width={width!r} in its metadata is not a "
                                  "positive int; the file is damaged or not ours")
        if tuple(blocks) != found_blocks:
            raise misfit(f"blocks per stage {tuple(blocks)} asked, {found_blocks} in the file")
        if conv.shape[0] != width:
            raise misfit(f"width {width} asked, conv1 has {conv.shape[0]} channels in the file")
        if fc.shape[1] != 8 * width:
            raise misfit(f"fc.weight has {fc.shape[1]} inputs, width {width} needs {8 * width}")
        return
    blocks, bottleneck = _TORCHVISION_BLOCKS[arch]
    if found_blocks != blocks:
        raise misfit(f"{arch} has {blocks} blocks per stage, the file {found_blocks}")
    groups = build_kwargs.get("groups", 1)
    per_group = build_kwargs.get("width_per_group", 64)
    if not _positive_int(groups) or not _positive_int(per_group):
        raise CheckpointError(f"{where}: groups={groups!r}, width_per_group={per_group!r} in "
                              "its metadata are not positive ints")
    dil = build_kwargs.get("replace_stride_with_dilation")
    if dil is not None and (not isinstance(dil, (list, tuple)) or len(dil) != 3
                            or not all(isinstance(d, bool) for d in dil)):
        raise CheckpointError(f"{where}: replace_stride_with_dilation={dil!r} in its metadata "
                              "is not 3 bools")
    zero = build_kwargs.get("zero_init_residual", False)
    if not isinstance(zero, bool):
        raise CheckpointError(f"{where}: zero_init_residual={zero!r} in its metadata is not a bool")
    if conv.shape[0] != 64:
        raise misfit(f"conv1 has {conv.shape[0]} channels, {arch} has 64")
    if stem is not None and (tuple(conv.shape[-2:]) == (3, 3)) != stem:
        raise misfit(f"cifar_stem={stem} asked, conv1 is {tuple(conv.shape[-2:])}")
    if not bottleneck and (groups, per_group) != (1, 64):
        raise misfit(f"{arch} (BasicBlock) supports only groups=1, width_per_group=64")
    for stage, planes in ((1, 64), (4, 512)):
        inner = state.get(f"layer{stage}.0.conv2.weight")
        expected = int(planes * (per_group / 64.0)) * groups if bottleneck else planes
        if not isinstance(inner, Tensor) or inner.ndim != 4 or inner.shape[0] != expected:
            got = tuple(inner.shape) if isinstance(inner, Tensor) else None
            raise misfit(f"layer{stage}.0.conv2.weight is {got}, groups={groups} and "
                         f"width_per_group={per_group} need {expected} channels")


def check_class_names(meta: Mapping[str, Any], class_names: Optional[Sequence[str]],
                      role: str = "checkpoint") -> None:
    r"""Compares the class names stored in a checkpoint with those of the data.

    Args:

        meta (dict): metadata returned by :func:`load_checkpoint`.
        class_names (sequence of str, optional): the data's classes, in index order
                    (e.g. ``dataset.classes``); None skips the check.
        role (str, optional): how to name the model in messages, e.g. ``"Student"``.
                    Default: "checkpoint"

    Raises:
        CheckpointError: the checkpoint was trained on another number of classes.

    Warns:
        UserWarning: same number of classes, but other names or another order (the
        model's outputs would be read as the wrong classes).

    Examples::

        >>> model, meta = load_checkpoint("student.pt")
        >>> check_class_names(meta, dataset.classes, "Student")
    """
    if class_names is None:
        return
    data = [str(c) for c in class_names]
    stored = meta.get("class_names")
    n_model = meta.get("num_classes")
    where = f"{role} ({meta.get('path', 'checkpoint')})"
    if stored is None:
        if _positive_int(n_model) and n_model != len(data):
            raise CheckpointError(
                f"{where} has {n_model} classes but the data has {len(data)}; give data with "
                "the classes the model was trained on, or the right checkpoint")
        return
    stored = [str(c) for c in stored]
    if len(stored) != len(data):
        raise CheckpointError(
            f"{where} was trained on {len(stored)} classes ({', '.join(stored[:6])}"
            f"{', ...' if len(stored) > 6 else ''}) but the data has {len(data)} "
            f"({', '.join(data[:6])}{', ...' if len(data) > 6 else ''}); give data with the "
            "classes the model was trained on, or the right checkpoint")
    if stored != data:
        diff = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(stored, data)) if a != b]
        warnings.warn(
            f"{where} was trained on classes named differently from the data's "
            f"(model vs data, {'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); the "
            "outputs are read in the data's order; check that the classes correspond",
            UserWarning, stacklevel=2)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_checkpoint(
    path: Union[str, os.PathLike],
    *,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    map_location: Union[str, torch.device] = "cpu",
) -> Tuple[nn.Module, dict]:
    r"""Reads a checkpoint with ``torch.load(weights_only=True)`` and rebuilds the model.

    Before anything is unpickled or built, the file is checked (see the module
    docstring): the CRC-32 of its zip entries, no TorchScript and no bare pickle; then the
    SHA-256 digest of the tensors and metadata (files of :func:`save_checkpoint`) and the
    architecture keywords against the tensors' shapes.

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
        CheckpointError: missing, unreadable or damaged file (CRC or digest mismatch), a
        TorchScript archive or bare pickle, a file that needs unsafe unpickling, or
        weights / metadata of another architecture or class count than expected.

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
    _check_container(p)
    obj = _torch_load(p)

    ours = isinstance(obj, dict) and obj.get("format") == _FORMAT
    if not ours and isinstance(obj, dict) and ("format" in obj or "meta" in obj):
        raise CheckpointError(
            f"checkpoint {str(p)!r} has an unknown format {obj.get('format')!r}; it is damaged "
            "or was written by another program; write it again with save_checkpoint"
        )
    if ours:
        version = obj.get("version")
        if not _positive_int(version) or version > _VERSION:
            raise CheckpointError(
                f"checkpoint {str(p)!r} has format version {version!r}; this captum-unicam "
                f"reads versions 1 to {_VERSION}; upgrade captum-unicam"
            )
        meta = obj.get("meta")
        state = obj.get("state_dict")
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint {str(p)!r} has no metadata dict; it is damaged; "
                                  "write it again with save_checkpoint")
        if not isinstance(state, dict) or not state or not all(
                isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
            raise CheckpointError(
                f"checkpoint {str(p)!r} has no state_dict of tensors (found "
                f"{type(state).__name__}); it is damaged; write it again with save_checkpoint"
            )
        meta = dict(meta)
        digest = meta.get(_DIGEST_KEY)
        if version >= 2 or digest is not None:
            if not isinstance(digest, str):
                raise CheckpointError(f"checkpoint {str(p)!r} has no sha256 digest in its "
                                      "metadata; it is damaged; write it again")
            if checkpoint_digest(state, meta) != digest:
                raise CheckpointError(
                    f"checkpoint {str(p)!r} is damaged: its weights or metadata do not match "
                    "the SHA-256 digest written with them; copy or write it again"
                )
        found_arch, found_n = meta.get("arch"), meta.get("num_classes")
        if found_arch not in ARCHITECTURES:
            raise CheckpointError(
                f"checkpoint {str(p)!r} names the architecture {found_arch!r}, which this "
                f"captum-unicam does not know ({', '.join(ARCHITECTURES)})"
            )
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
        build_kwargs = meta.get("build_kwargs")
        build_kwargs = {} if build_kwargs is None else build_kwargs
    else:
        state = obj
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            state = obj["state_dict"]
        elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            state = obj["model"]
        if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
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

    _check_architecture(p, meta["arch"], meta["num_classes"], build_kwargs, state)
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, (list, tuple))
                              or len(names) != meta["num_classes"]):
        raise CheckpointError(
            f"checkpoint {str(p)!r}: its class_names metadata does not list "
            f"{meta['num_classes']} names; the file is damaged; write it again"
        )
    kwargs = dict(build_kwargs)
    if "blocks" in kwargs:
        kwargs["blocks"] = tuple(kwargs["blocks"])
    try:
        model = build_model(meta["arch"], meta["num_classes"], **kwargs)
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
