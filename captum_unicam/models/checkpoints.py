r"""Checkpoint files: save, verify, load.

A checkpoint is one dictionary saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)``, so loading never runs code from the file (the layout is
given in :mod:`captum_unicam.models`).

:func:`load_checkpoint` runs in three phases, each refusing a bad file before the next one
costs anything:

1. **read** (:func:`_read`): the file exists; the CRC-32 of every entry of its zip container;
   no TorchScript archive and no bare pickle; ``torch.load(weights_only=True)``.
2. **verify** (:func:`_verify_ours`, :func:`_verify_state_dict`, :func:`_check_architecture`):
   the format and version, the SHA-256 digest (:func:`checkpoint_digest`), the expected
   architecture and class count, and every architecture keyword against the shapes of the
   tensors, so no model larger than the file's weights is ever built.
3. **build** (:func:`_build`): the model, its weights loaded strictly, in eval mode.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import pickle
import re
import warnings
import zipfile
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_unicam._process import pid_alive
from captum_unicam.errors import CheckpointError, InputError
from captum_unicam.models._files import expand, kind_of, write_checkpoint_file
from captum_unicam.models._shared import (
    ARCHITECTURES,
    SMALL_RESNET_CONFIGS,
    TORCHVISION,
    TORCHVISION_BLOCKS,
    build_info,
    check_arch,
    check_num_classes,
    describe,
    nonfinite_tensors,
    positive_int,
    state_mismatch,
    unwrap,
)
from captum_unicam.models.architectures import build_model
from captum_unicam.models.factory import build_from_factory, parse_factory

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "MAX_METADATA_DEPTH",
    "checkpoint_digest",
    "check_class_names",
]

_FORMAT = "captum-unicam-checkpoint"
_VERSION = 2  # the metadata holds "sha256" (checkpoint_digest)
_DIGEST_KEY = "sha256"
#: metadata nested deeper than this (dicts in lists in dicts ...) is refused
MAX_METADATA_DEPTH = 64
# tensors named in the NaN / Inf message
_NAMED_TENSORS = 5
# the first bytes of torch.save's legacy (non-zip) format: the pickled magic number
_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
# build keywords a checkpoint may record, per kind of architecture
_SMALL_KEYWORDS = {"cifar_stem", "blocks", "width"}
_TORCHVISION_KEYWORDS = {
    "cifar_stem",
    "zero_init_residual",
    "groups",
    "width_per_group",
    "replace_stride_with_dilation",
}


def _where(p: pathlib.Path) -> str:
    return f"checkpoint {str(p)!r}"


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """Metadata as plain Python values that torch.load(weights_only=True) accepts."""
    if depth > MAX_METADATA_DEPTH:
        raise InputError(
            f"{where} is nested deeper than {MAX_METADATA_DEPTH} levels; checkpoint metadata "
            "must be flatter"
        )
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
                raise InputError(f"{where} has a key {k!r} that is not a str or int")
            out[k] = _plain(v, f"{where}[{k!r}]", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return value.item()
    raise InputError(
        f"{where} holds a {type(value).__name__}; checkpoint metadata must be plain "
        "values (str, int, float, bool, None, list, tuple, dict), convert it first"
    )


def save_checkpoint(
    path: Union[str, os.PathLike],
    model: nn.Module,
    *,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    factory: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    recipe: Optional[Mapping[str, Any]] = None,
    kd_method: Optional[str] = None,
    teacher: Optional[str] = None,
    extra: Optional[Mapping[str, Any]] = None,
    build_kwargs: Optional[Mapping[str, Any]] = None,
    preprocessing: Optional[Mapping[str, Any]] = None,
    accuracy: Optional[float] = None,
    overwrite: bool = False,
) -> None:
    r"""Writes the model's state dict and its metadata to ``path``, atomically and without
    replacing anything unasked.

    The file is written to a temporary file in the same folder and only then becomes
    ``path``: by a hard link, which fails if ``path`` exists (so of two runs writing the
    same file, the second is refused, not silently lost), or with ``overwrite=True`` by
    :func:`os.replace` over a regular file (a folder, device, FIFO, socket or a link to
    one is never replaced). A failed or interrupted save never leaves a partial
    checkpoint and never damages an existing one; when the write fails after the model
    was trained (a full disk, a file that appeared meanwhile), the checkpoint is kept in
    the system's temporary folder and the error names it. Missing parent folders are
    created; ``~`` is expanded. The model is not modified.

    Before anything is written, the model's state is checked to load into ``arch``
    exactly as :func:`load_checkpoint` will load it, and to hold no NaN or Inf.

    Args:

        path (str or PathLike): Destination file (``.pt`` by convention).
        model (nn.Module): The model to save (DataParallel wrappers are unwrapped).
        arch (str, optional): Architecture name of :data:`ARCHITECTURES`; it must agree
                    with the model. Exactly one of ``arch`` and ``factory`` is given.
        num_classes (int, optional): Number of classes; required with ``arch``.
        factory (str, optional): ``"package.module:function"`` that builds the model
                    (see :func:`~captum_unicam.models.factory.build_from_factory`), for
                    a model of your own; it is imported and run once here to check that
                    the state loads into what it builds, and recorded (not the code):
                    :func:`load_checkpoint` rebuilds the model only when given the same
                    ``factory=`` again.
        class_names (sequence of str, optional): Names of the classes, in index order.
        recipe (dict, optional): Training recipe (epochs, optimiser, learning rate,
                    data spec, seed, ...), plain values only.
        kd_method (str, optional): KD method (``"response"``, ``"attention"``,
                    ``"overhaul"``) or None for a model trained on data alone.
        teacher (str, optional): The Teacher, e.g. the path of its checkpoint.
        extra (dict, optional): Any other plain metadata.
        build_kwargs (dict, optional): Keywords of :func:`build_model` needed to
                    rebuild the model (``cifar_stem``, ``width``, ...). Default: those
                    recorded by :func:`build_model`, else the stem read off the model.
        preprocessing (dict, optional): How the images were read, e.g.
                    ``{"image_size": 32, "resize": "shorter-side-crop", "normalize":
                    "none", "augment": ...}`` (a data set's ``.preprocessing``).
        accuracy (float, optional): The test accuracy (fraction in [0, 1]) measured at
                    the end of training, so that a later run can flag a model that scores
                    far below it on its data.
        overwrite (bool, optional): Replace an existing regular file. Default: False

    Raises:
        InputError: bad arguments, non-plain or too deeply nested metadata, NaN / Inf
        weights, or a model whose state does not load into ``arch`` / ``num_classes``
        (or into what ``factory`` builds). Nothing is written then.
        OutputError: ``path`` exists (without ``overwrite``) or is not a regular file, or
        the write failed (the message says where the checkpoint was kept).

    Examples::

        >>> save_checkpoint("student.pt", model, arch="small_resnet_s", num_classes=4,
        ...                 class_names=["circle", "square", "triangle", "cross"],
        ...                 preprocessing={"image_size": 32, "resize": "exact",
        ...                                "normalize": "none"}, accuracy=0.91)
    """
    p = expand(path)
    if (arch is None) == (factory is None):
        raise InputError("save_checkpoint needs exactly one of arch= and factory=")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if factory is not None:
        net, meta_model = _factory_model(model, factory, num_classes, build_kwargs)
    else:
        net, meta_model = _arch_model(model, arch, num_classes, build_kwargs)
    n = meta_model["num_classes"]
    state = _cpu_state(net, n)
    _check_finite_state(state, "the model", InputError, "training diverged; nothing is written")
    meta = {
        **meta_model,
        "class_names": _checked_class_names(class_names, n),
        "recipe": _plain(recipe, "recipe"),
        "kd_method": _plain(kd_method, "kd_method"),
        "teacher": _plain(teacher, "teacher"),
        "extra": _plain(extra, "extra"),
        "preprocessing": _checked_preprocessing(preprocessing),
        "accuracy": _checked_accuracy(accuracy),
        "torch_version": str(torch.__version__),
        "captum_unicam_version": _package_version(),
    }
    if meta_model["factory"] is None:
        _check_fits(p, meta, state)
    meta[_DIGEST_KEY] = checkpoint_digest(state, meta)
    _check_weights_only(meta)
    payload = {"format": _FORMAT, "version": _VERSION, "state_dict": state, "meta": meta}
    write_checkpoint_file(p, payload, overwrite=bool(overwrite), before=_remove_stale_temporaries)


def _arch_model(
    model: nn.Module, arch: Any, num_classes: Any, build_kwargs: Optional[Mapping[str, Any]]
) -> Tuple[nn.Module, Dict[str, Any]]:
    arch = check_arch(arch)
    num_classes = check_num_classes(num_classes)
    net = _checked_model(model, arch, num_classes)
    if build_kwargs is None:
        info = build_info(net)
        build_kwargs = info["kwargs"] if info is not None else {"cifar_stem": _infer_stem(net)}
    kwargs = _plain(dict(build_kwargs), "build_kwargs")
    return net, {"arch": arch, "num_classes": num_classes, "factory": None, "build_kwargs": kwargs}


def _factory_model(
    model: nn.Module, factory: Any, num_classes: Any, build_kwargs: Any
) -> Tuple[nn.Module, Dict[str, Any]]:
    if build_kwargs is not None:
        raise InputError("build_kwargs apply to arch=, not to factory=; give one of them")
    if num_classes is not None:
        check_num_classes(num_classes)
    net = unwrap(model)
    built = build_from_factory(factory, num_classes)
    state = {k: v for k, v in net.state_dict().items()}
    problem = state_mismatch(built.state_dict(), state)
    if problem:
        raise InputError(
            f"the model's state does not load into what factory {factory!r} builds "
            f"({problem}); nothing is written; give the factory that builds this model"
        )
    meta = {"arch": None, "num_classes": num_classes, "factory": factory, "build_kwargs": None}
    return net, meta


def _checked_preprocessing(preprocessing: Any) -> Optional[dict]:
    if preprocessing is None:
        return None
    if not isinstance(preprocessing, Mapping):
        raise InputError(
            f"preprocessing must be a dict like {{'image_size': 32, 'resize': ..., "
            f"'normalize': ...}}, got {type(preprocessing).__name__}"
        )
    size = preprocessing.get("image_size")
    if size is not None and not positive_int(size):
        raise InputError(f"preprocessing['image_size'] must be a positive int, got {size!r}")
    return _plain(dict(preprocessing), "preprocessing")


def _checked_accuracy(accuracy: Any) -> Optional[float]:
    if accuracy is None:
        return None
    ok = isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool)
    if not ok or not 0.0 <= float(accuracy) <= 1.0:
        raise InputError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
    return float(accuracy)


def _check_fits(p: pathlib.Path, meta: Mapping[str, Any], state: Mapping[str, Tensor]) -> None:
    """The state loads into ``meta``'s architecture as load_checkpoint will load it:
    the same shape checks, then the key set and shapes of the model it builds (on the meta
    device: no memory)."""
    arch, n = meta["arch"], meta["num_classes"]
    try:
        _check_architecture(p, arch, n, meta["build_kwargs"], state)
        with torch.device("meta"):
            built = _build_empty(p, meta, meta["build_kwargs"])
    except CheckpointError as e:
        text = str(e).removeprefix(f"{_where(p)}: ").split("; give ", 1)[0]
        raise InputError(
            f"{text.replace('its weights', 'the weights of the model', 1)}; nothing is "
            "written; pass the model's own arch (or factory=...)"
        ) from e
    problem = state_mismatch(built.state_dict(), state)
    if problem:
        raise InputError(
            f"the model's state does not load into {describe(arch, n)} ({problem}); nothing "
            "is written; pass the model's own arch (or factory=...)"
        )


def _checked_model(model: Any, arch: str, num_classes: int) -> nn.Module:
    net = unwrap(model)
    info = build_info(net)
    if info is not None and (info["arch"] != arch or info["num_classes"] != num_classes):
        raise InputError(
            f"the model was built as {info['arch']} with {info['num_classes']} classes, "
            f"not {arch} with {num_classes}; pass the model's own arch and num_classes"
        )
    return net


def _checked_class_names(
    class_names: Optional[Sequence[str]], num_classes: Optional[int]
) -> Optional[list]:
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    if num_classes is not None and len(names) != num_classes:
        raise InputError(f"class_names has {len(names)} names for num_classes={num_classes}")
    return names


def _cpu_state(net: nn.Module, num_classes: int) -> Dict[str, Tensor]:
    state = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
    fc = state.get("fc.weight")
    if fc is not None and num_classes is not None and fc.shape[0] != num_classes:
        raise InputError(
            f"the model's fc layer has {fc.shape[0]} outputs but num_classes={num_classes}"
        )
    return state


def _check_weights_only(meta: Mapping[str, Any]) -> None:
    """The metadata must survive weights_only loading; checked before touching the disk."""
    buf = io.BytesIO()
    torch.save(meta, buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
    except Exception as e:  # pragma: no cover - _plain should have caught it
        raise ValueError(f"checkpoint metadata cannot be loaded with weights_only=True: {e}") from e


def _remove_stale_temporaries(path: pathlib.Path) -> None:
    """Deletes ``.NAME.PID-*.tmp`` files that a killed save of ``path`` left behind
    (those of live processes are kept)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[A-Za-z0-9_]+\.tmp$")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for e in entries:
        m = pattern.match(e.name)
        if m and not pid_alive(int(m.group(1))):
            try:
                if e.is_file(follow_symlinks=False):
                    os.unlink(e.path)
            except OSError:
                pass


def _package_version() -> str:
    try:
        # lazy: the package's __init__ imports this module
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


# ---------------------------------------------------------------------------
# Verifying: digest, container, architecture against the tensors
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


def checkpoint_digest(
    state_dict: Mapping[str, Tensor], meta: Optional[Mapping[str, Any]] = None
) -> str:
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
            f"{_where(p)} cannot be read (permission denied); fix its permissions"
        ) from e
    except OSError as e:
        raise CheckpointError(f"{_where(p)} cannot be read ({e.strerror})") from e
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
                if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                    raise CheckpointError(
                        f"{_where(p)} is a TorchScript archive (torch.jit.save), "
                        "which would run code when loaded; save model.state_dict() with "
                        "torch.save, or use save_checkpoint"
                    )
                bad = z.testzip()  # reads every entry and checks its CRC-32
        except CheckpointError:
            raise
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            OSError,
            EOFError,
            ValueError,
            NotImplementedError,
            RuntimeError,
        ) as e:  # zlib.error is not an OSError
            raise CheckpointError(
                f"{_where(p)} is damaged: its zip container cannot be read "
                f"({type(e).__name__}: {e}); copy or write it again"
            ) from e
        except Exception as e:  # zlib.error and other decoder errors
            raise CheckpointError(
                f"{_where(p)} is damaged ({type(e).__name__}: {e}); copy or write it again"
            ) from e
        if bad is not None:
            raise CheckpointError(
                f"{_where(p)} is damaged: the entry {bad!r} fails its CRC-32 check "
                "(flipped or truncated bytes); copy or write it again"
            )
        return
    if head == _LEGACY_MAGIC:
        return  # torch.save(..., _use_new_zipfile_serialization=False)
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        raise CheckpointError(
            f"{_where(p)} is a bare Python pickle, not a file of torch.save; it is "
            "not loaded (unpickling can run code); save model.state_dict() with torch.save, "
            "or use save_checkpoint"
        )
    raise CheckpointError(
        f"cannot read {_where(p)}: it is not a PyTorch file (neither a torch.save "
        "zip nor its legacy format), so it is not loaded; give a .pt file written by "
        "save_checkpoint or torch.save"
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
                f"{_where(p)} holds Python objects other than tensors and plain "
                f"values{found}, so it cannot be loaded safely (weights_only=True); it is "
                "not loaded. Re-save it with captum_unicam.models.save_checkpoint, or save "
                "model.state_dict() instead of the model"
            ) from e
        raise CheckpointError(
            f"cannot read {_where(p)} ({type(e).__name__}: {msg[:300]}); the file is "
            "damaged or not a PyTorch file; write it again with save_checkpoint"
        ) from e


def _stage_blocks(state: Mapping[str, Tensor]) -> Tuple[int, int, int, int]:
    counts = []
    for i in range(1, 5):
        prefix = f"layer{i}."
        idx = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
        counts.append(len(idx))
    return tuple(counts)  # type: ignore[return-value]


def _misfit(p: pathlib.Path, arch: str, num_classes: Any, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{_where(p)}: its weights do not fit {describe(arch, num_classes)} ({detail}); give "
        "the architecture the file was trained with (arch=..., --arch), or write the file again"
    )


def _check_build_keywords(p: pathlib.Path, arch: str, num_classes: Any, build_kwargs: Any) -> None:
    """The metadata's class count and build keywords are of the kinds build_model takes."""
    where = _where(p)
    if not positive_int(num_classes):
        raise CheckpointError(
            f"{where}: its metadata gives num_classes={num_classes!r}, not a positive int; "
            "the file is damaged or not ours"
        )
    if not isinstance(build_kwargs, Mapping):
        raise CheckpointError(f"{where}: its build_kwargs metadata is not a dict")
    allowed = _SMALL_KEYWORDS if arch in SMALL_RESNET_CONFIGS else _TORCHVISION_KEYWORDS
    unknown = sorted(set(build_kwargs) - allowed, key=str)
    if unknown:
        raise CheckpointError(
            f"{where}: unknown build keywords {unknown} for {arch} in its metadata (accepted: "
            f"{sorted(allowed)}); it was written by an incompatible version"
        )
    stem = build_kwargs.get("cifar_stem")
    if stem is not None and not isinstance(stem, bool):
        raise CheckpointError(f"{where}: cifar_stem={stem!r} in its metadata is not a bool")


def _head(
    p: pathlib.Path, arch: str, num_classes: int, state: Mapping[str, Tensor]
) -> Tuple[Tensor, Tensor]:
    """conv1.weight and fc.weight, checked against the class count."""
    conv, fc = state.get("conv1.weight"), state.get("fc.weight")
    if not isinstance(conv, Tensor) or conv.ndim != 4:
        raise _misfit(p, arch, num_classes, "no 4-D conv1.weight")
    if not isinstance(fc, Tensor) or fc.ndim != 2:
        raise _misfit(p, arch, num_classes, "no 2-D fc.weight")
    if fc.shape[0] != num_classes:
        raise _misfit(p, arch, num_classes, f"fc.weight has {fc.shape[0]} outputs")
    return conv, fc


def _check_small(
    p: pathlib.Path,
    arch: str,
    num_classes: int,
    build_kwargs: Mapping[str, Any],
    state: Mapping[str, Tensor],
) -> None:
    where = _where(p)
    conv, fc = _head(p, arch, num_classes, state)
    blocks, width = SMALL_RESNET_CONFIGS[arch]
    blocks = build_kwargs.get("blocks", blocks)
    width = build_kwargs.get("width", width)
    if (
        not isinstance(blocks, (list, tuple))
        or len(blocks) != 4
        or not all(positive_int(b) for b in blocks)
    ):
        raise CheckpointError(
            f"{where}: blocks={blocks!r} in its metadata is not 4 positive ints; the file is "
            "damaged or not ours"
        )
    if not positive_int(width):
        raise CheckpointError(
            f"{where}: width={width!r} in its metadata is not a positive int; the file is "
            "damaged or not ours"
        )
    found = _stage_blocks(state)
    if tuple(blocks) != found:
        raise _misfit(
            p, arch, num_classes, f"blocks per stage {tuple(blocks)} asked, {found} in the file"
        )
    if conv.shape[0] != width:
        raise _misfit(
            p,
            arch,
            num_classes,
            f"width {width} asked, conv1 has {conv.shape[0]} channels in the file",
        )
    if fc.shape[1] != 8 * width:
        raise _misfit(
            p,
            arch,
            num_classes,
            f"fc.weight has {fc.shape[1]} inputs, width {width} needs {8 * width}",
        )


def _torchvision_keywords(p: pathlib.Path, build_kwargs: Mapping[str, Any]) -> Tuple[int, int]:
    """(groups, width_per_group), after checking the types of every torchvision keyword."""
    where = _where(p)
    groups = build_kwargs.get("groups", 1)
    per_group = build_kwargs.get("width_per_group", 64)
    if not positive_int(groups) or not positive_int(per_group):
        raise CheckpointError(
            f"{where}: groups={groups!r}, width_per_group={per_group!r} in its metadata are "
            "not positive ints"
        )
    dil = build_kwargs.get("replace_stride_with_dilation")
    if dil is not None and (
        not isinstance(dil, (list, tuple))
        or len(dil) != 3
        or not all(isinstance(d, bool) for d in dil)
    ):
        raise CheckpointError(
            f"{where}: replace_stride_with_dilation={dil!r} in its metadata is not 3 bools"
        )
    zero = build_kwargs.get("zero_init_residual", False)
    if not isinstance(zero, bool):
        raise CheckpointError(f"{where}: zero_init_residual={zero!r} in its metadata is not a bool")
    return groups, per_group


def _check_torchvision(
    p: pathlib.Path,
    arch: str,
    num_classes: int,
    build_kwargs: Mapping[str, Any],
    state: Mapping[str, Tensor],
) -> None:
    conv, _ = _head(p, arch, num_classes, state)
    blocks, bottleneck = TORCHVISION_BLOCKS[arch]
    found = _stage_blocks(state)
    if found != blocks:
        raise _misfit(
            p, arch, num_classes, f"{arch} has {blocks} blocks per stage, the file {found}"
        )
    groups, per_group = _torchvision_keywords(p, build_kwargs)
    if conv.shape[0] != 64:
        raise _misfit(p, arch, num_classes, f"conv1 has {conv.shape[0]} channels, {arch} has 64")
    stem = build_kwargs.get("cifar_stem")
    if stem is not None and (tuple(conv.shape[-2:]) == (3, 3)) != stem:
        raise _misfit(
            p, arch, num_classes, f"cifar_stem={stem} asked, conv1 is {tuple(conv.shape[-2:])}"
        )
    if not bottleneck and (groups, per_group) != (1, 64):
        raise _misfit(
            p, arch, num_classes, f"{arch} (BasicBlock) supports only groups=1, width_per_group=64"
        )
    for stage, planes in ((1, 64), (4, 512)):
        inner = state.get(f"layer{stage}.0.conv2.weight")
        expected = int(planes * (per_group / 64.0)) * groups if bottleneck else planes
        if not isinstance(inner, Tensor) or inner.ndim != 4 or inner.shape[0] != expected:
            got = tuple(inner.shape) if isinstance(inner, Tensor) else None
            raise _misfit(
                p,
                arch,
                num_classes,
                f"layer{stage}.0.conv2.weight is {got}, groups={groups} and "
                f"width_per_group={per_group} need {expected} channels",
            )


def _check_architecture(
    p: pathlib.Path,
    arch: str,
    num_classes: Any,
    build_kwargs: Any,
    state: Mapping[str, Tensor],
) -> None:
    """Every architecture keyword agrees with the tensors in the file, so the model built
    from them is no larger than the file's weights (checked before build_model)."""
    _check_build_keywords(p, arch, num_classes, build_kwargs)
    if arch in SMALL_RESNET_CONFIGS:
        _check_small(p, arch, num_classes, build_kwargs, state)
    else:
        _check_torchvision(p, arch, num_classes, build_kwargs, state)


def check_class_names(
    meta: Mapping[str, Any], class_names: Optional[Sequence[str]], role: str = "checkpoint"
) -> None:
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
        if positive_int(n_model) and n_model != len(data):
            raise CheckpointError(
                f"{where} has {n_model} classes but the data has {len(data)}; give data with "
                "the classes the model was trained on, or the right checkpoint"
            )
        return
    stored = [str(c) for c in stored]
    if len(stored) != len(data):
        raise CheckpointError(
            f"{where} was trained on {len(stored)} classes ({', '.join(stored[:6])}"
            f"{', ...' if len(stored) > 6 else ''}) but the data has {len(data)} "
            f"({', '.join(data[:6])}{', ...' if len(data) > 6 else ''}); give data with the "
            "classes the model was trained on, or the right checkpoint"
        )
    if stored != data:
        pairs = enumerate(zip(stored, data, strict=True))
        diff = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in pairs if a != b]
        warnings.warn(
            f"{where} was trained on classes named differently from the data's "
            f"(model vs data, {'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); the "
            "outputs are read in the data's order; check that the classes correspond",
            UserWarning,
            stacklevel=2,
        )


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _read(p: pathlib.Path) -> Any:
    """Phase 1: the object in the file, after the checks that unpickle nothing."""
    kind = kind_of(p)
    if kind != "a regular file":
        if kind is None:
            what = "does not exist"
        else:
            link = f" (a symlink to {os.path.realpath(p)!r})" if os.path.islink(p) else ""
            what = f"is {kind}{link}, not a regular file"
        raise CheckpointError(
            f"{_where(p)} {what}; give the path of a .pt file written by "
            "'captum-unicam train' (or save_checkpoint, or torch.save)"
        )
    _check_container(p)
    obj = _torch_load(p)
    _check_depth(p, obj)
    return obj


def _check_depth(p: pathlib.Path, obj: Any) -> None:
    """Refuses (iteratively: no recursion) containers nested deeper than the metadata may be
    (the file's dict, its "meta" dict, then MAX_METADATA_DEPTH levels)."""
    level = [obj]
    for _ in range(MAX_METADATA_DEPTH + 3):
        nxt = []
        for v in level:
            if isinstance(v, Mapping):
                nxt.extend(v.values())
            elif isinstance(v, (list, tuple)):
                nxt.extend(v)
        if not nxt:
            return
        level = nxt
    raise CheckpointError(
        f"{_where(p)}: its metadata is nested deeper than {MAX_METADATA_DEPTH} levels; the "
        "file is damaged or not written by save_checkpoint; write it again"
    )


def _check_finite_state(state: Mapping[str, Tensor], where: str, error: type, fix: str) -> None:
    bad = nonfinite_tensors(state)
    if bad:
        names = ", ".join(bad[:_NAMED_TENSORS]) + (", ..." if len(bad) > _NAMED_TENSORS else "")
        raise error(f"{where}: {len(bad)} tensors hold NaN or Inf: {names}; {fix}")


def _is_ours(p: pathlib.Path, obj: Any) -> bool:
    ours = isinstance(obj, dict) and obj.get("format") == _FORMAT
    if not ours and isinstance(obj, dict) and ("format" in obj or "meta" in obj):
        raise CheckpointError(
            f"{_where(p)} has an unknown format {obj.get('format')!r}; it is damaged "
            "or was written by another program; write it again with save_checkpoint"
        )
    return ours


def _is_state_dict(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and bool(state)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
    )


def _check_expected(
    p: pathlib.Path, meta: Mapping[str, Any], arch: Optional[str], num_classes: Optional[int]
) -> None:
    """The metadata names a known architecture, and the one asked for."""
    found_arch, found_n = meta.get("arch"), meta.get("num_classes")
    if found_arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{_where(p)} names the architecture {found_arch!r}, which this "
            f"captum-unicam does not know ({', '.join(ARCHITECTURES)})"
        )
    if (arch is not None and found_arch != arch) or (
        num_classes is not None and found_n != num_classes
    ):
        exp_arch = arch if arch is not None else found_arch
        exp_n = num_classes if num_classes is not None else found_n
        raise CheckpointError(
            f"{_where(p)} holds {describe(found_arch, found_n)}, but "
            f"{describe(exp_arch, exp_n)} was expected; pass the checkpoint of the "
            f"right model, or ask for arch={found_arch!r}, num_classes={found_n}"
        )


def _check_factory(
    p: pathlib.Path,
    meta: dict,
    arch: Optional[str],
    factory: Optional[str],
    num_classes: Optional[int],
) -> None:
    """A checkpoint saved with factory=: rebuilt only with a factory given by the caller."""
    recorded = meta.get("factory")
    if recorded is None:
        raise CheckpointError(
            f"{_where(p)} holds {describe(meta.get('arch'), meta.get('num_classes'))} of "
            f"captum-unicam; load it without factory={factory!r}"
        )
    if arch is not None:
        raise CheckpointError(
            f"{_where(p)} holds a model of factory {recorded!r}, not a {arch}; pass "
            f"factory={recorded!r} instead of arch="
        )
    if factory is None:
        raise CheckpointError(
            f"{_where(p)} was saved from your own code (factory {recorded!r}); pass "
            f"factory={recorded!r} to import and run it (a checkpoint never makes "
            "captum-unicam import code by itself)"
        )
    if factory != recorded:
        warnings.warn(
            f"{_where(p)} was saved from factory {recorded!r}; it is loaded into what "
            f"{factory!r} builds",
            UserWarning,
            stacklevel=4,
        )
    found = meta.get("num_classes")
    if num_classes is not None and found is not None and found != num_classes:
        raise CheckpointError(
            f"{_where(p)} holds a model with {found} classes, but {num_classes} were expected; "
            f"pass num_classes={found} or the checkpoint of the right model"
        )
    if found is None:
        meta["num_classes"] = num_classes
    meta["factory"] = factory


def _verify_ours(
    p: pathlib.Path,
    obj: Mapping[str, Any],
    arch: Optional[str],
    factory: Optional[str],
    num_classes: Optional[int],
) -> Tuple[Dict[str, Tensor], dict, Any]:
    """Phase 2 for a file of save_checkpoint: (state dict, metadata, build keywords)."""
    version = obj.get("version")
    if version != _VERSION:
        newer = positive_int(version) and version > _VERSION
        fix = "upgrade captum-unicam" if newer else "write it again with save_checkpoint"
        raise CheckpointError(
            f"{_where(p)} has format version {version!r}; this captum-unicam reads version "
            f"{_VERSION}; {fix}"
        )
    meta, state = obj.get("meta"), obj.get("state_dict")
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{_where(p)} has no metadata dict; it is damaged; write it again with save_checkpoint"
        )
    if not _is_state_dict(state):
        raise CheckpointError(
            f"{_where(p)} has no state_dict of tensors (found {type(state).__name__}); it is "
            "damaged; write it again with save_checkpoint"
        )
    meta = dict(meta)
    digest = meta.get(_DIGEST_KEY)
    if not isinstance(digest, str):
        raise CheckpointError(
            f"{_where(p)} has no sha256 digest in its metadata; it is damaged; write it again"
        )
    if checkpoint_digest(state, meta) != digest:
        raise CheckpointError(
            f"{_where(p)} is damaged: its weights or metadata do not match the SHA-256 "
            "digest written with them; copy or write it again"
        )
    if meta.get("factory") is not None or factory is not None:
        _check_factory(p, meta, arch, factory, num_classes)
        return state, meta, {}
    _check_expected(p, meta, arch, num_classes)
    build_kwargs = meta.get("build_kwargs")
    return state, meta, {} if build_kwargs is None else build_kwargs


def _unwrapped_state(p: pathlib.Path, obj: Any) -> Dict[str, Tensor]:
    """The tensors of a plain state dict (also under "state_dict" or "model"), without the
    ``module.`` prefix of DistributedDataParallel."""
    state = obj
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state = obj["model"]
    if not _is_state_dict(state):
        raise CheckpointError(
            f"{_where(p)} is neither a captum-unicam checkpoint nor a state dict of tensors; "
            "write it with save_checkpoint"
        )
    if any(k.startswith("module.") for k in state):
        state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    return state


def _plain_class_count(
    p: pathlib.Path, arch: str, state: Mapping[str, Tensor], num_classes: Optional[int]
) -> int:
    fc = state.get("fc.weight")
    found_n = int(fc.shape[0]) if isinstance(fc, Tensor) and fc.ndim == 2 else None
    if num_classes is None:
        if found_n is None:
            raise CheckpointError(
                f"{_where(p)} has no fc.weight to read the class count from; pass num_classes"
            )
        return found_n
    if found_n is not None and found_n != num_classes:
        raise CheckpointError(
            f"{_where(p)} holds {describe(arch, found_n)}, but "
            f"{describe(arch, num_classes)} was expected; pass num_classes={found_n} "
            "or the checkpoint of the right model"
        )
    return num_classes


def _plain_meta(arch: Optional[str], factory: Optional[str], num_classes: Any) -> dict:
    meta = {"arch": arch, "factory": factory, "num_classes": num_classes}
    for key in ("class_names", "recipe", "kd_method", "teacher", "extra", "preprocessing"):
        meta[key] = None
    meta["accuracy"] = None
    return meta


def _verify_state_dict(
    p: pathlib.Path,
    obj: Any,
    arch: Optional[str],
    factory: Optional[str],
    num_classes: Optional[int],
) -> Tuple[Dict[str, Tensor], dict, Dict[str, Any]]:
    """Phase 2 for a plain state dict: (state dict, metadata, build keywords)."""
    state = _unwrapped_state(p, obj)
    if factory is not None:
        meta = _plain_meta(None, factory, num_classes)
        meta["build_kwargs"] = None
        return state, meta, {}
    if arch is None:
        raise CheckpointError(
            f"{_where(p)} is a plain state dict without metadata; pass its "
            f"architecture (arch=..., --arch), one of {', '.join(ARCHITECTURES)}, or the "
            "function of your code that builds the model (factory='package.module:function')"
        )
    num_classes = _plain_class_count(p, arch, state, num_classes)
    conv = state.get("conv1.weight")
    build_kwargs: Dict[str, Any] = {}
    if arch in TORCHVISION and isinstance(conv, Tensor) and conv.ndim == 4:
        build_kwargs["cifar_stem"] = tuple(conv.shape[-2:]) == (3, 3)
    meta = _plain_meta(arch, None, num_classes)
    meta["build_kwargs"] = build_kwargs
    return state, meta, build_kwargs


def _check_class_name_list(p: pathlib.Path, meta: Mapping[str, Any]) -> None:
    names, n = meta.get("class_names"), meta.get("num_classes")
    if names is not None and (
        not isinstance(names, (list, tuple)) or (n is not None and len(names) != n)
    ):
        raise CheckpointError(
            f"{_where(p)}: its class_names metadata does not list "
            f"{meta['num_classes']} names; the file is damaged; write it again"
        )


def _build_empty(
    p: pathlib.Path, meta: Mapping[str, Any], build_kwargs: Mapping[str, Any]
) -> nn.Module:
    """The architecture of ``meta`` with random weights."""
    what = describe(meta["arch"], meta["num_classes"])
    kwargs = dict(build_kwargs)
    if "blocks" in kwargs:
        kwargs["blocks"] = tuple(kwargs["blocks"])
    try:
        return build_model(meta["arch"], meta["num_classes"], **kwargs)
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"{_where(p)}: cannot rebuild {what} from its metadata ({e}); it was written by "
            "an incompatible version"
        ) from e


def _load_into(p: pathlib.Path, model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """The file's weights into ``model``, strictly; a mismatch names the keys."""
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(
            f"{_where(p)}: its weights do not fit {what} ({problem}); give the architecture "
            "the file was trained with (arch=..., --arch, or factory=..., --model)"
        )
    model.load_state_dict(state, strict=True)


def read_checkpoint(
    path: Union[str, os.PathLike],
    *,
    arch: Optional[str] = None,
    factory: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> Tuple[Dict[str, Tensor], dict]:
    r"""Reads and verifies a checkpoint like :func:`load_checkpoint`, without building a
    model (nor importing a factory).

    Args:

        path, arch, factory, num_classes: as for :func:`load_checkpoint`.

    Returns:
        *tuple[dict[str, Tensor], dict]*: the state dict (on the CPU) and the metadata.

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    if arch is not None and factory is not None:
        raise InputError("give arch= or factory=, not both")
    if arch is not None:
        arch = check_arch(arch)
    if factory is not None:
        parse_factory(factory)
    if num_classes is not None:
        num_classes = check_num_classes(num_classes)
    p = expand(path)
    obj = _read(p)
    if _is_ours(p, obj):
        state, meta, build_kwargs = _verify_ours(p, obj, arch, factory, num_classes)
    else:
        state, meta, build_kwargs = _verify_state_dict(p, obj, arch, factory, num_classes)
    _check_finite_state(
        state,
        _where(p),
        CheckpointError,
        "the checkpoint's training diverged; train it again (e.g. with a lower learning rate)",
    )
    if meta.get("factory") is None:
        _check_architecture(p, meta["arch"], meta["num_classes"], build_kwargs, state)
        meta["build_kwargs"] = build_kwargs
    _check_class_name_list(p, meta)
    meta["path"] = str(p)
    return state, meta


def load_checkpoint(
    path: Union[str, os.PathLike],
    *,
    arch: Optional[str] = None,
    factory: Optional[str] = None,
    num_classes: Optional[int] = None,
    map_location: Union[str, torch.device] = "cpu",
) -> Tuple[nn.Module, dict]:
    r"""Reads a checkpoint with ``torch.load(weights_only=True)`` and rebuilds the model.

    Before anything is unpickled or built, the file is checked (see the module
    docstring): a regular file (not a FIFO or device), the CRC-32 of its zip entries, no
    TorchScript and no bare pickle; then the nesting of the metadata, the SHA-256 digest
    of the tensors and metadata (files of :func:`save_checkpoint`), NaN / Inf in the
    weights, and the architecture keywords against the tensors' shapes.

    Args:

        path (str or PathLike): A file of :func:`save_checkpoint`, or a plain state
                    dict (e.g. torchvision's ``resnet18-*.pth``, or ``{"state_dict":
                    ...}``; a ``module.`` prefix of DistributedDataParallel is
                    removed), in which case ``arch`` or ``factory`` is required. ``~`` is
                    expanded.
        arch (str, optional): Expected architecture of :data:`ARCHITECTURES`. Checked
                    against the file's metadata.
        factory (str, optional): ``"package.module:function"`` of your code that builds
                    the model (:mod:`~captum_unicam.models.factory`); it is imported and
                    called, and the file's weights are loaded into what it returns,
                    strictly. Needed for a checkpoint saved with ``factory=`` (the file
                    names it, but is never enough to import code).
        num_classes (int, optional): Expected number of classes; checked against the
                    metadata. For a plain state dict, read off ``fc.weight`` when None;
                    passed to a factory that takes ``num_classes``.
        map_location (str or torch.device, optional): Device of the returned model.
                    Default: "cpu"

    Returns:
        *tuple[nn.Module, dict]*: the model, in eval mode on ``map_location``, and its
        metadata (``arch`` (None for a factory model), ``factory``, ``num_classes``,
        ``class_names``, ``preprocessing``, ``accuracy``, ``recipe``, ``kd_method``,
        ``teacher``, ``extra``, ``build_kwargs``, ..., and ``path``).

    Raises:
        CheckpointError: missing, unreadable, not a regular file, or damaged file (CRC or
        digest mismatch, metadata nested too deep), a TorchScript archive or bare pickle,
        a file that needs unsafe unpickling, NaN / Inf weights (named), or weights /
        metadata of another architecture or class count than expected (the missing and
        unexpected keys are named).
        InputError: a factory that cannot be imported or called, or that does not return
        an ``nn.Module``.

    Examples::

        >>> save_checkpoint("student.pt", model, arch="small_resnet_s", num_classes=4)
        >>> student, meta = load_checkpoint("student.pt", arch="small_resnet_s")
        >>> mine, meta = load_checkpoint("cnn.pt", factory="mynets:small_cnn", num_classes=10)
    """
    state, meta = read_checkpoint(path, arch=arch, factory=factory, num_classes=num_classes)
    p = pathlib.Path(meta["path"])
    if meta.get("factory") is None:
        model = _build_empty(p, meta, meta["build_kwargs"])
        _load_into(p, model, state, describe(meta["arch"], meta["num_classes"]))
    else:
        model = build_from_factory(meta["factory"], meta["num_classes"])
        _load_into(p, model, state, f"what factory {meta['factory']!r} builds")
    model.to(map_location).eval()
    return model, meta
