r"""The models a study compares, loaded once: :class:`Pair` and :func:`load_pair`.

A :class:`Pair` is a Student and a Base (and an optional Teacher) with their checkpoint
metadata, the preprocessing they agree on, the evaluated data, the layers explained (one
module of each model per name) and the label vectors. :func:`load_pair` builds it from a
:class:`~captum_unicam.pipeline.requests.PairRequest`, checking everything that can go
wrong before any long computation: the checkpoints exist and load, their preprocessing
agrees (or is overridden, with a note), the data holds images and the checkpoints'
classes, and every layer gives feature maps in one forward pass of one image.

Nothing is guessed: the image size and normalisation come from the checkpoints or the
request (an error names the option otherwise), images already at that size are never
resized, and the checkpoints' class names index the data by name (``class_map`` renames
the data's classes first). Models of the user's own code are built by a factory
(``model="package.module:function"``) and their weights read with
``torch.load(weights_only=True)``. What was used is on the :class:`Pair`
(``preprocessing``, ``preprocessing_line``, ``data_summary``, ``class_match``, ``notes``)
for the report and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from captum_unicam import models as _models
from captum_unicam.data import data_summary
from captum_unicam.embeddings import embed_labels
from captum_unicam.errors import CheckpointError, DeviceError, InputError
from captum_unicam.output.tables import LAYERS
from captum_unicam.pipeline.batches import labels_of, stratified_order
from captum_unicam.pipeline.data import Preprocessing, agreed_preprocessing, load_data
from captum_unicam.pipeline.requests import PairRequest, in_flags

__all__ = [
    "Pair",
    "load_pair",
    "resolve_device",
    "resolve_layers",
    "check_feature_maps",
    "label_vectors",
    "stratified_images",
    "local_path",
    "expected_classes",
]

#: The label encoder bundled with the package (read offline).
DEFAULT_LABEL_MODEL = "all-MiniLM-L6-v2"


@dataclasses.dataclass
class Pair:
    r"""A Student / Base pair (and an optional Teacher) ready to explain and quantify.

    Attributes:
        student, base (nn.Module): The models, in eval mode on ``device``.
        teacher (nn.Module, optional): The Teacher, only for its accuracy.
        metas (dict): Role (``"Student"``, ``"Base"``, ``"Teacher"``) -> checkpoint metadata.
        preprocessing (Preprocessing): What the data are loaded with.
        notes (list of str): One line per recorded preprocessing that was overridden.
        data (Dataset): The evaluated images (``(image, label, ...)`` items).
        class_names (list of str): The data's classes.
        layers (dict): Name -> (Student module, Base module).
        label_vectors (Tensor, optional): One vector per class (None: one-hot).
        label_description (str): How the label vectors were made.
        device (torch.device): Where the models run.
        preprocessing_line (str): The preprocessing used and where each value came from,
            one line (``field=`` names: pass it through ``in_flags`` for the command line).
        data_summary (dict): The evaluated data: ``spec``, ``split``, ``classes``,
            ``n_images``, ``class_counts``, ``preprocessing`` (as read: ``image_size``,
            ``resize``, ``normalize``, ``augment``), ``preprocessing_sources``,
            ``class_map`` and ``class_order``.
        class_match (dict): Role -> how its outputs are matched to the data's classes:
            ``"by name"`` or ``"unnamed"`` (a plain state dict: the data's order, with a
            note in ``notes``).
    """

    student: nn.Module
    base: nn.Module
    teacher: Optional[nn.Module]
    metas: Dict[str, Dict[str, Any]]
    preprocessing: Preprocessing
    notes: List[str]
    data: Dataset
    class_names: List[str]
    layers: Dict[str, Tuple[nn.Module, nn.Module]]
    label_vectors: Optional[Tensor]
    label_description: str
    device: torch.device
    preprocessing_line: str = ""
    data_summary: Dict[str, Any] = dataclasses.field(default_factory=dict)
    class_match: Dict[str, str] = dataclasses.field(default_factory=dict)

    def model(self, role: str) -> Optional[nn.Module]:
        """The model of ``role`` (``"Student"``, ``"Base"``, ``"Teacher"``)."""
        return {"Student": self.student, "Base": self.base, "Teacher": self.teacher}[role]


def resolve_device(name: str) -> torch.device:
    r"""``torch.device(name)``, refused with one line when it is unknown or not available."""
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {name!r} ({e}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for but CUDA is not available; use device=cpu")
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {name!r} is not supported; use cpu or cuda")
    return dev


def _check_files(request: PairRequest) -> None:
    for role, path in request.checkpoints():
        # a FIFO or device is left to read_checkpoint, which names it "not a regular file"
        p = Path(os.path.expanduser(path)) if path is not None else None
        if p is not None and (p.is_dir() or not p.exists()):
            what = "is a folder" if p.is_dir() else "does not exist"
            raise CheckpointError(
                f"{role} checkpoint {path!r} {what}; give the path of a .pt file written by "
                "'captum-unicam train' (or models/*.pt of a demo report)"
            )


def _read_meta(path: str, role: str, arch: Optional[str], factory: Optional[str]) -> Dict[str, Any]:
    """The verified metadata of a checkpoint (no model built, no code imported)."""
    try:
        return _models.read_checkpoint(path, arch=arch, factory=factory)[1]
    except CheckpointError as e:
        raise CheckpointError(f"{role}: {e}") from None


def _load_model(
    path: str,
    role: str,
    arch: Optional[str],
    factory: Optional[str],
    num_classes: int,
    device: torch.device,
) -> Tuple[nn.Module, dict]:
    try:
        model, meta = _models.load_checkpoint(
            path, arch=arch, factory=factory, num_classes=num_classes, map_location=device
        )
    except CheckpointError as e:
        raise CheckpointError(f"{role}: {e}") from None
    return model.eval(), meta


def resolve_layers(
    names: Sequence[str], student: nn.Module, base: nn.Module
) -> Dict[str, Tuple[nn.Module, nn.Module]]:
    r"""Name -> (Student module, Base module) for ``L1``..``L4`` or dotted module paths."""
    layers: Dict[str, Tuple[nn.Module, nn.Module]] = {}
    for name in names:
        key = name.upper() if name.upper() in LAYERS else name
        pair = []
        for role, model in (("Student", student), ("Base", base)):
            try:
                pair.append(_models.get_layer(model, key))
            except ValueError as e:
                raise InputError(f"layers= {name}: {role}: {e}") from None
        layers[key] = (pair[0], pair[1])
    if not layers:
        raise InputError("layers= needs at least one layer, e.g. L1 L2 L3 L4")
    return layers


def _output_shapes(model: nn.Module, modules: Mapping[str, nn.Module], x: Tensor) -> Dict[str, Any]:
    """The output shape of each module in one forward pass of ``x`` (hooks removed after)."""
    shapes: Dict[str, Any] = {}
    handles = []
    for name, module in modules.items():

        def hook(_module, _inputs, output, name=name):
            shapes.setdefault(
                name, tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            )

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def check_feature_maps(
    layers: Mapping[str, Tuple[nn.Module, nn.Module]],
    student: nn.Module,
    base: nn.Module,
    x: Tensor,
) -> None:
    r"""Each layer must give feature maps (N, C, H, W): one forward pass of one image
    through each model says so before any computation."""
    fix = "use L1..L4 or the dotted path of a block or convolution, e.g. layer4.0"
    for role, model, which in (("Student", student, 0), ("Base", base, 1)):
        shapes = _output_shapes(model, {name: pair[which] for name, pair in layers.items()}, x)
        for name in layers:
            shape = shapes.get(name)
            if shape is None:
                raise InputError(
                    f"layers= {name}: the {role}'s layer {name!r} is not used in its forward pass; "
                    f"{fix}"
                )
            if not (isinstance(shape, tuple) and len(shape) == 4):
                raise InputError(
                    f"layers= {name}: the {role}'s layer {name!r} gives outputs of shape {shape}, "
                    f"not feature maps (N, C, H, W) that Grad-CAM and UniCAM can explain; {fix}"
                )


def label_vectors(
    class_names: Sequence[str], *, one_hot: bool = False, label_model: Optional[str] = None
) -> Tuple[Optional[Tensor], str]:
    r"""``(label vectors, description)``: None and "one-hot", or text embeddings of the
    class names (the bundled encoder unless ``label_model`` names another)."""
    if one_hot:
        return None, "one-hot"
    table = (
        embed_labels(list(class_names), model=label_model)
        if label_model
        else embed_labels(list(class_names))
    )
    return (
        table.detach().float().cpu(),
        f"text embeddings of the class names ({label_model or DEFAULT_LABEL_MODEL})",
    )


def expected_classes(
    metas: Mapping[str, Mapping[str, Any]],
) -> Tuple[Optional[List[str]], Dict[str, str]]:
    r"""The class names the checkpoints record (one list, in their index order; None when
    none records names) and, per role, ``"by name"`` or ``"unnamed"``.

    Raises:
        CheckpointError: two checkpoints record different names, or the same names in
        another order (one data set cannot be indexed for both).
    """
    named = {
        role: [str(c) for c in m["class_names"]]
        for role, m in metas.items()
        if m.get("class_names") is not None
    }
    match = {role: "by name" if role in named else "unnamed" for role in metas}
    if not named:
        return None, match
    (first, names), *others = named.items()
    for role, other in others:
        if other != names:
            if len(other) != len(names):
                n, m = len(names), len(other)
                how = f"the {first} was trained on {n} classes and the {role} on {m}"
            else:
                order = "in another order" if sorted(other) == sorted(names) else "with other names"
                how = f"the {first} and the {role} were trained on classes {order}"
            raise CheckpointError(
                f"{how} ({first}: {names}; {role}: {other}); the models of one study must "
                "index the same classes in the same order: give checkpoints trained on the "
                "same data"
            )
    return names, match


def _unnamed_note(
    match: Mapping[str, str], classes: Sequence[str], expected: Optional[Sequence[str]]
) -> List[str]:
    unnamed = [role for role, how in match.items() if how == "unnamed"]
    if not unnamed:
        return []
    order = ", ".join(f"{i} = {c}" for i, c in enumerate(classes[:8])) + (
        ", ..." if len(classes) > 8 else ""
    )
    whose = (
        "the other checkpoints' class names"
        if expected is not None
        else "the data's classes (sorted folder names for an image folder)"
    )
    return [
        f"the {' and the '.join(unnamed)} record no class names (plain state dicts): their "
        f"outputs are read in the order of {whose}: {order}; if they were trained in another "
        "order every accuracy and map is wrong: save them with class_names, or rename the data's "
        "classes with class_map="
    ]


def _load_evaluated(
    request: PairRequest,
    prep: Preprocessing,
    metas: Mapping[str, dict],
    expected: Optional[List[str]],
) -> Tuple[Dataset, List[str]]:
    ds = load_data(
        request.data,
        request.split,
        prep,
        download=request.download,
        limit=request.limit,
        expected_classes=expected,
        class_map=request.class_map,
        follow_links=request.follow_links,
    )
    if len(ds) == 0:
        raise InputError(
            f"data {request.data!r} ({request.split} split) holds no images; point data= at a "
            "folder with images"
        )
    classes = list(getattr(ds, "classes", []) or [])
    if not classes:
        raise InputError(
            f"data {request.data!r} has no class names; use an ImageFolder tree of class folders"
        )
    for role, meta in metas.items():
        _models.check_class_names(meta, classes, role)  # an error if the counts differ
    if len(ds) < 5:
        raise InputError(
            f"data {request.data!r} has {len(ds)} images in its {request.split} split; UniCAM, "
            "FSS and RS need at least 5"
        )
    return ds, classes


def _summary(
    request: PairRequest, ds: Dataset, sources: Mapping[str, str], expected
) -> Dict[str, Any]:
    summary = {"spec": request.data, "split": request.split, **data_summary(ds)}
    summary.update(
        preprocessing_sources=dict(sources),
        class_map=dict(request.class_map or {}) or None,
        class_order="the checkpoints' class names" if expected is not None else "the data's",
    )
    return summary


def _preprocessing_line(
    prep: Preprocessing, summary: Mapping[str, Any], sources: Mapping[str, str]
) -> str:
    read = summary.get("preprocessing") or {}
    sources = dict(sources)
    if read.get("image_size") and read.get("resize") is None:  # generated at its size
        sources["resize"] = "not applied: the data are generated at that size"
    elif sources.get("resize") == "default":
        side = read.get("image_size") or prep.image_size
        sources["resize"] = f"default; images already {side} px are not resized"
    line = Preprocessing(
        read.get("image_size") or prep.image_size, prep.normalize, prep.resize
    ).describe(sources)
    return (
        f"preprocessing: {line}; {summary['n_images']} images of {len(summary['classes'])} classes "
        f"({', '.join(summary['classes'][:8])}{', ...' if len(summary['classes']) > 8 else ''})"
    )


def _stderr(line: str) -> None:
    print(in_flags(line), file=sys.stderr)


def load_pair(request: PairRequest, warn=None, info=None) -> Pair:
    r"""Loads the models, data, layers and label vectors of ``request``.

    The checkpoints are read and verified first (no model built), then the preprocessing
    they record (or the request gives) and their class names fix how the data are read;
    only then are the models built, with the data's class count.

    Args:
        request (PairRequest): What to load.
        warn (callable, optional): Receives each note (overridden preprocessing, unnamed
                    classes) once everything is checked; they are on ``Pair.notes`` too.
        info (callable, optional): Receives the one line that says which preprocessing and
                    classes are used (``Pair.preprocessing_line``). Default: printed on
                    stderr.

    Returns:
        *Pair*

    Raises:
        CheckpointError, InputError, DataSpecError, DeviceError: before any long work; an
        image size or normalisation that neither a checkpoint records nor the request
        gives is an InputError naming ``image_size=`` / ``normalize=``.
    """
    request.check()
    _check_files(request)
    device = resolve_device(request.device)
    paths = {role: path for role, path in request.checkpoints() if path is not None}
    metas = {
        role: _read_meta(path, role, *request.role_model(role)) for role, path in paths.items()
    }
    prep, notes, sources = agreed_preprocessing(
        metas,
        image_size=request.image_size,
        normalize=request.normalize,
        resize=request.resize,
        required=True,
    )
    expected, match = expected_classes(metas)
    ds, classes = _load_evaluated(request, prep, metas, expected)
    notes = list(notes) + _unnamed_note(match, classes, expected)
    loaded = {
        role: _load_model(path, role, *request.role_model(role), len(classes), device)
        for role, path in paths.items()
    }
    metas = {role: meta for role, (_, meta) in loaded.items()}
    student, base = loaded["Student"][0], loaded["Base"][0]
    layers = resolve_layers(request.layers, student, base)
    check_feature_maps(layers, student, base, ds[0][0].unsqueeze(0).to(device))
    emb, emb_desc = label_vectors(classes, one_hot=request.one_hot, label_model=request.label_model)
    summary = _summary(request, ds, sources, expected)
    line = _preprocessing_line(prep, summary, sources)
    for note in (
        notes if warn is not None else []
    ):  # once everything is checked: an error is one line
        warn(note)
    (info or _stderr)(line)
    return Pair(
        student=student,
        base=base,
        teacher=loaded.get("Teacher", (None, None))[0],
        metas=metas,
        preprocessing=prep,
        notes=notes,
        data=ds,
        class_names=classes,
        layers=layers,
        label_vectors=emb,
        label_description=emb_desc,
        device=device,
        preprocessing_line=line,
        data_summary=summary,
        class_match=match,
    )


def stratified_images(ds: Dataset, n: int, seed: int) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    r"""``n`` images of ``ds`` in the seeded class-stratified order of the pipeline (so a
    class-ordered folder gives every class, not only the first), with the object and
    marker masks where the data have them.

    Returns:
        *(inputs, labels, masks)*: ``masks`` maps ``"object"`` / ``"marker"`` to
        (n, 1, H, W) float masks.
    """
    chosen = stratified_order(labels_of(ds), seed=seed)[: min(n, len(ds))]
    k = len(chosen)
    items = [ds[i] for i in chosen]
    x = torch.stack([it[0] for it in items])
    y = torch.tensor([int(it[1]) for it in items])
    masks = {}
    if (
        len(items[0]) >= 3
        and isinstance(items[0][2], Tensor)
        and items[0][2].shape[-2:] == x.shape[-2:]
    ):
        masks["object"] = torch.stack([it[2] for it in items]).reshape(k, 1, *x.shape[-2:]).float()
    marker = getattr(ds, "marker_masks", getattr(getattr(ds, "base", None), "marker_masks", None))
    if isinstance(marker, Tensor) and marker.shape[0] == len(ds):
        marker = marker[torch.tensor(chosen)]
        if bool(marker.any()):
            masks["marker"] = marker.float()
    return x, y, masks


def local_path(path: Optional[str]) -> List[str]:
    """``[path]`` when it names something on disk (a hub id reads nothing of the user's)."""
    return [path] if path and Path(os.path.expanduser(path)).exists() else []
