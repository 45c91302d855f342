r"""FSS and RS over a data set: :func:`evaluate_kd`, in named phases.

For a Student/Base pair, each layer and each kind of saliency map, :func:`evaluate_kd`
computes on every batch of a data loader ``fss``, ``rs_base``, ``rs_student``,
``rs_distilled`` and ``rs_residual`` (paper Eq. 8-9 and the partial distance correlations of
the unique features), with the inner products the dataset-level estimator accumulates and the
leakage baseline of every masked kind; the result is a
:class:`~captum_unicam.metrics.KDEvaluation`.

The phases, each its own function: **validate** (every argument, before any batch), **shard**
(which batches this rank computes, under ``torch.distributed``), **head** (the models' widths
from the first batch, and the reference set of the UniCAM maps), **per batch**
(:mod:`captum_unicam.metrics._batch`), **gather** (the records of every rank, and any error of
one rank raised on all), **assemble** (the result, and one warning per degenerate cause).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_unicam.attr.unicam import UniCAM
from captum_unicam.errors import DeviceError, InputError
from captum_unicam.metrics import _reference
from captum_unicam.metrics._batch import BatchPlan, batch_rng, evaluate_batch
from captum_unicam.metrics._features import (
    LABEL_FIX,
    MIN_BATCH_PARTIAL,
    Estimator,
    check_estimator,
    check_forward_func,
    check_inputs,
    check_label_embeddings,
    check_pooling,
    label_degeneracy,
    warn_degenerate,
)
from captum_unicam.metrics._validate import (
    check_layers,
    check_positive_int,
    check_target,
    output_widths,
    resolve_device,
    resolve_perturbation,
    unpack,
)
from captum_unicam.metrics.estimators import AGGREGATIONS
from captum_unicam.metrics.result import KDEvaluation
from captum_unicam.metrics.rs import label_vectors
from captum_unicam.output.tables import MAP_KINDS, METRICS
from captum_unicam.perturb import mask_multiply

__all__ = ["evaluate_kd"]

PerturbationName = Literal["mask", "road", "none"]
MapKind = Literal["none", "gradcam", "distilled", "residual"]
Aggregation = Literal["dataset", "batch_mean"]
_ROLES = ("teacher", "base", "student")


# ---------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything fixed before the first batch."""

    plan: BatchPlan
    device: Optional[torch.device]
    emb: Optional[Tensor]
    reference: Any
    small_batches: str
    seed: int
    settings: Dict[str, Any] = field(default_factory=dict)


def _check_kinds(maps: Any, perturb_callable: Optional[Callable]) -> List[str]:
    if maps is None:
        maps = MAP_KINDS if perturb_callable is not None else ("none",)
    if isinstance(maps, str):
        maps = (maps,)
    kinds = list(maps)
    unknown = [k for k in kinds if k not in MAP_KINDS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        raise InputError(f"maps must be distinct values among {MAP_KINDS}; got {list(maps)!r}.")
    if perturb_callable is None and kinds != ["none"]:
        raise InputError(
            f"perturbation=None scores raw features only, but maps={kinds!r} asks for perturbed "
            "inputs; pass maps=('none',) or a perturbation such as mask_multiply."
        )
    return kinds


def _check_reference(reference: Any) -> Any:
    if reference is None or (isinstance(reference, str) and reference == "auto"):
        return reference
    if (
        isinstance(reference, (tuple, list))
        and len(reference) == 2
        and isinstance(reference[0], Tensor)
    ):
        return (reference[0], reference[1])
    raise InputError(
        "reference must be 'auto' (a reference set drawn from the first batches), None (batch "
        f"mode) or (ref_inputs, ref_target); got {type(reference).__name__}."
    )


def _check_accuracies(accuracies: Any) -> Dict[str, float]:
    if accuracies is None:
        return {}
    ok = isinstance(accuracies, Mapping) and all(
        k in _ROLES and isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0
        for k, v in accuracies.items()
    )
    if not ok:
        raise InputError(
            f"accuracies must map some of {_ROLES} to accuracies in [0, 1] (e.g. "
            f"{{'base': 0.886, 'student': 0.994}}); got {accuracies!r}."
        )
    return {k: float(v) for k, v in accuracies.items()}


def _warn_training(student: Any, base: Any) -> None:
    for model, who in ((student, "student"), (base, "base")):
        if isinstance(model, nn.Module) and model.training:
            warnings.warn(
                f"the {who} model is in training mode: batch-norm statistics will be updated and "
                "dropout is active during evaluation; call .eval() first.",
                stacklevel=4,  # warn <- _warn_training <- _validate <- evaluate_kd <- caller
            )


def _settings(args: Mapping[str, Any], perturb_name: str, device: Any) -> Dict[str, Any]:
    emb = args["label_embeddings"]
    return {
        "estimator": args["estimator"],
        "aggregation": args["aggregation"],
        "perturbation": perturb_name,
        "label_embeddings": "one-hot" if emb is None else f"table {emb.shape[0]}x{emb.shape[1]}",
        "reference": _reference.describe(args["reference"]),
        "leakage": bool(args["leakage"]),
        "n_bootstrap": args["n_bootstrap"],
        "n_permutations": args["n_permutations"],
        "seed": args["seed"],
        "device": str(device) if device is not None else "as given",
    }


def _validate(args: Mapping[str, Any]) -> _Run:
    """Every argument, before any batch; the models' device."""
    student, base = args["forward_func"], args["base_forward_func"]
    check_forward_func(student, "forward_func")
    check_forward_func(base, "base_forward_func")
    layer_pairs = check_layers(args["layers"], student, base)
    perturb_callable, perturb_name = resolve_perturbation(args["perturbation"])
    kinds = _check_kinds(args["maps"], perturb_callable)
    check_estimator(args["estimator"])
    check_label_embeddings(args["label_embeddings"])
    check_positive_int(args["n_bootstrap"], "n_bootstrap")
    check_positive_int(args["n_permutations"], "n_permutations")
    if args["small_batches"] not in ("skip", "error"):
        raise InputError(f"small_batches must be 'skip' or 'error', got {args['small_batches']!r}.")
    if args["aggregation"] not in AGGREGATIONS:
        raise InputError(f"aggregation must be one of {AGGREGATIONS}, got {args['aggregation']!r}.")
    reference = _check_reference(args["reference"])
    device = resolve_device(args["device"], student, base, layer_pairs)
    emb = args["label_embeddings"]
    emb = emb.detach().to(device) if emb is not None and device is not None else emb
    _warn_training(student, base)
    leakage = bool(args["leakage"]) and any(k != "none" for k in kinds)
    check_pooling(args["pooling"], None, None)
    plan = BatchPlan(
        student,
        base,
        layer_pairs,
        kinds,
        {},
        perturb_callable,
        args["estimator"],
        leakage,
        args["pooling"],
    )
    return _Run(
        plan,
        device,
        None if emb is None else emb.detach(),
        reference,
        args["small_batches"],
        args["seed"],
        _settings(args, perturb_name, device),
    )


# ---------------------------------------------------------------------------
# shard
# ---------------------------------------------------------------------------


@dataclass
class _Shard:
    rank: int
    world: int
    presharded: bool

    def mine(self, index: int) -> bool:
        return self.world == 1 or self.presharded or index % self.world == self.rank


def _shard(data: Any) -> _Shard:
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    presharded = isinstance(getattr(data, "sampler", None), torch.utils.data.DistributedSampler)
    return _Shard(rank, world, presharded)


# ---------------------------------------------------------------------------
# head: widths, reference set, UniCAM explainers
# ---------------------------------------------------------------------------


def _probe(run: _Run, x: Tensor) -> Optional[int]:
    """The models' number of outputs from the first batch (every rank sees it)."""
    probe = x[:2] if run.device is None else x[:2].to(run.device)
    width = output_widths(run.plan.student, run.plan.base, probe, "gradcam" in run.plan.kinds)
    rows = run.emb.shape[0] if run.emb is not None else None
    if rows is not None and width is not None and rows != width:
        raise InputError(
            f"label_embeddings has {rows} rows but the models have {width} outputs; it "
            "needs one row per class, in the order of the models' outputs."
        )
    return width


def _candidates(
    head: List[Tuple[int, Any]], width: Optional[int], small_batches: str
) -> List[Tuple[int, Tensor, Tensor]]:
    """(local index, x, class indices) of the head batches, checked as a scored batch is."""
    out = []
    for local, (i, item) in enumerate(head):
        x, y, _ = _item(item, i)
        if x.shape[0] < MIN_BATCH_PARTIAL:
            if small_batches == "error":
                raise InputError(_small_message(i, x.shape[0]))
            continue  # skipped, with its warning, when it is scored
        t = check_target(
            i, y if isinstance(y, Tensor) else torch.as_tensor(y), x.shape[0], width, None
        )
        try:
            check_inputs(x, MIN_BATCH_PARTIAL)
        except InputError as err:
            raise InputError(f"batch {i}: {err}") from err
        out.append((local, x, t))
    return out


def _head_batches(iterator: Iterator[Tuple[int, Any]]) -> List[Tuple[int, Any]]:
    """The batches after the first that the reference set is drawn from, read once and kept
    for scoring: up to ``REFERENCE_BATCHES`` in all, or ``8 * REFERENCE_SIZE`` images."""
    head: List[Tuple[int, Any]] = []
    seen = 0
    for i, item in iterator:
        head.append((i, item))
        seen += x_size(item)
        if len(head) + 1 >= _reference.REFERENCE_BATCHES or seen >= 8 * _reference.REFERENCE_SIZE:
            break
    return head


def _item(item: Any, index: int) -> Tuple[Tensor, Any, Optional[Tensor]]:
    """(inputs, target, attention mask or None) of a data item: ``(x, y[, ...])``, or a
    mapping with ``input_ids``, ``labels`` (or ``label``) and optionally ``attention_mask``,
    as Hugging Face datasets and collators give text batches."""
    if isinstance(item, Mapping) and "input_ids" in item:
        labels = item.get("labels", item.get("label"))
        if labels is None:
            raise InputError(
                f"batch {index} is a mapping with input_ids but no 'labels' (or 'label'); "
                "evaluate_kd needs each sequence's class."
            )
        return item["input_ids"], labels, item.get("attention_mask")
    x, y = unpack(item, index)
    return x, y, None


def x_size(item: Any) -> int:
    if isinstance(item, Mapping) and isinstance(item.get("input_ids"), Tensor):
        return int(item["input_ids"].shape[0])
    x = item[0] if isinstance(item, (tuple, list)) and item else None
    return int(x.shape[0]) if isinstance(x, Tensor) and x.dim() else 0


def _unicams(run: _Run, reference: Optional[Tuple[Tensor, Tensor]]) -> Dict[str, UniCAM]:
    if not any(k in run.plan.kinds for k in ("distilled", "residual")):
        return {}
    plan = run.plan
    return {
        name: UniCAM(
            plan.student, s_layer, plan.base, b_layer, label_embeddings=run.emb, reference=reference
        )
        for name, (s_layer, b_layer) in plan.layer_pairs.items()
    }


def _auto_reference(run: _Run, head: List[Tuple[int, Any]], width: Optional[int], shard: _Shard):
    """The reference set drawn from the head batches; None (batch mode, with a warning) when
    none of them has the 5 samples a scored batch needs."""
    local: List[Tuple[int, Tensor, Tensor]] = []
    failure: Optional[InputError] = None
    try:
        local = _candidates(head, width, run.small_batches)
    except InputError as err:
        failure = err
    candidates = _reference.gather_candidates(
        local, shard.world if shard.presharded else 1, failure
    )
    if not candidates:
        warnings.warn(
            f"reference='auto' found no batch of {MIN_BATCH_PARTIAL} or more samples among the "
            f"first {len(head)} to draw a reference set from; UniCAM maps are computed in batch "
            "mode. Pass "
            "reference=(ref_inputs, ref_target) for per-image maps.",
            stacklevel=6,  # warn <- _auto_reference <- _head <- _score_batches <- evaluate_kd
        )
        run.settings["reference"] = _reference.describe(None)
        return None
    x_ref, y_ref = _reference.draw(candidates, width, run.emb)
    run.settings["reference"] += f": {int(x_ref.shape[0])} images"
    if run.device is not None:
        x_ref, y_ref = x_ref.to(run.device), y_ref.to(run.device)
    return x_ref, y_ref


def _head(
    run: _Run, data: Iterable[Any], shard: _Shard
) -> Tuple[Iterator[Tuple[int, Any]], Optional[int]]:
    """The batches to score (the head read once, then the rest) and the models' width; sets
    the UniCAM explainers of the plan."""
    iterator = enumerate(data)
    first = next(iterator, None)
    if first is None:
        run.plan.unicams = _unicams(run, None)
        return iter(()), None
    x, _, _ = _item(first[1], first[0])
    width = _probe(run, x)
    head = [first]
    reference = run.reference
    needs_maps = any(k in run.plan.kinds for k in ("distilled", "residual"))
    if needs_maps and isinstance(reference, str):
        head += _head_batches(iterator)
        reference = _auto_reference(run, head, width, shard)
    elif isinstance(reference, str):
        reference = None
    run.plan.unicams = _unicams(run, reference)
    return itertools.chain(head, iterator), width


# ---------------------------------------------------------------------------
# per batch
# ---------------------------------------------------------------------------


def _small_message(i: int, n: int) -> str:
    return (
        f"batch {i} has {n} samples; FSS and RS need at least {MIN_BATCH_PARTIAL} per "
        "batch (at 4 the partial distance correlations are always +-1). Use "
        "DataLoader(..., drop_last=True) or a batch size that divides the data set."
    )


def _small(run: _Run, i: int, n: int, shard: _Shard) -> Dict[str, Any]:
    msg = _small_message(i, n)
    if run.small_batches == "error":
        raise InputError(msg)
    warnings.warn(
        msg + " The batch is skipped.", stacklevel=5
    )  # _small <- _score_one <- loop <- evaluate_kd
    return {"index": i, "rank": shard.rank, "size": n, "values": None}


def _score_one(
    run: _Run,
    i: int,
    item: Any,
    width: Optional[int],
    shard: _Shard,
    caught: Dict[Tuple[type, str], int],
) -> Dict[str, Any]:
    """The record of one batch: its values, products and leakage, or why it was left out."""
    x, y, mask = _item(item, i)
    n = x.shape[0]
    if n < MIN_BATCH_PARTIAL:
        return _small(run, i, n, shard)
    if run.device is not None:
        x = x.to(run.device)
        mask = None if mask is None else mask.to(run.device)
    y = (y if isinstance(y, Tensor) else torch.as_tensor(y)).to(x.device)
    rows = run.emb.shape[0] if run.emb is not None else None
    y = check_target(i, y, n, width, rows)
    try:
        check_inputs(x, MIN_BATCH_PARTIAL, tokens=run.plan.perturbation is None)
        check_pooling(run.plan.pooling, mask, x)
        labels = label_vectors(y, n, run.emb)
    except InputError as err:
        raise InputError(f"batch {i}: {err}") from err
    why = label_degeneracy(labels)
    if why is not None:
        return {"index": i, "rank": shard.rank, "size": n, "values": None, "degenerate": why}
    with batch_rng(run.seed, i, x.device), warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        result = evaluate_batch(run.plan, x, y, labels, mask)
    for w in got:
        key = (w.category, str(w.message))
        caught[key] = caught.get(key, 0) + 1
    return {
        "index": i,
        "rank": shard.rank,
        "size": n,
        "values": result.values,
        "products": result.products,
        "leakage": result.leakage,
        "zeroed": result.zeroed,
    }


def _score_batches(run: _Run, data: Iterable[Any], shard: _Shard, progress: bool):
    """(records, caught warnings, failure): every batch of this rank, the first error kept
    for the gather phase instead of raised."""
    records: List[Dict[str, Any]] = []
    caught: Dict[Tuple[type, str], int] = {}
    try:
        total = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    bar = tqdm(
        total=total, desc="evaluate_kd", unit="batch", disable=not progress or shard.rank != 0
    )
    failure: Optional[BaseException] = None
    try:
        batches, width = _head(run, data, shard)
        run.settings["num_classes"] = width
        for i, item in batches:
            bar.update(1)
            if shard.mine(i):
                records.append(_score_one(run, i, item, width, shard, caught))
    except Exception as err:  # noqa: BLE001 - re-raised after the gather, on every rank
        failure = err
    finally:
        bar.close()
    return records, caught, failure


# ---------------------------------------------------------------------------
# gather
# ---------------------------------------------------------------------------


def _gather(records: List[Dict[str, Any]], failure: Optional[BaseException], shard: _Shard):
    """Every rank's records in batch order; an error of any rank raised on every rank."""
    if shard.world > 1:
        # Every rank reaches this point, also after an error, so no rank waits forever.
        note = (
            None if failure is None else (type(failure).__name__, f"rank {shard.rank}: {failure}")
        )
        gathered: List[Any] = [None] * shard.world
        torch.distributed.all_gather_object(gathered, (records, note))
        remote = [n for _, n in gathered if n is not None]
        if failure is None and remote:
            kind_name, message = remote[0]
            error_type = {
                "InputError": InputError,
                "DeviceError": DeviceError,
                "ValueError": ValueError,
            }
            raise error_type.get(kind_name, RuntimeError)(
                f"evaluate_kd failed on another rank: {message}"
            )
        records = [r for part, _ in gathered for r in part]
    if failure is not None:
        raise failure
    records.sort(key=lambda r: (r["index"], r["rank"]))
    return records


# ---------------------------------------------------------------------------
# assemble
# ---------------------------------------------------------------------------


def _report_degenerate(records: List[Dict[str, Any]], seen: int) -> None:
    """One warning for the batches left out for their labels, one for the values set to 0."""
    left_out = [r for r in records if r.get("degenerate")]
    if left_out:
        by_reason: Dict[str, List[int]] = {}
        for r in left_out:
            by_reason.setdefault(r["degenerate"], []).append(r["index"])
        parts = "; ".join(
            f"{len(idx)} batch{'es' if len(idx) > 1 else ''} "
            f"(indices {idx[:5]}{' ...' if len(idx) > 5 else ''}): {why}"
            for why, idx in by_reason.items()
        )
        warn_degenerate(
            f"evaluate_kd left {len(left_out)} of {seen} batches out of every statistic, because "
            f"their labels carry no information: {parts}. To fix it, {LABEL_FIX}. Their "
            "indices are "
            "in KDEvaluation.degenerate_batches.",
            stacklevel=4,
        )
    by_reason_v: Dict[str, Dict[str, int]] = {}
    for r in records:
        for key, why in (r.get("zeroed") or {}).items():
            counts = by_reason_v.setdefault(why, {})
            counts[key] = counts.get(key, 0) + 1
    if by_reason_v:
        parts = "; ".join(
            f"{why} ({_counts(keys)}{', ...' if len(keys) > 6 else ''})"
            for why, keys in by_reason_v.items()
        )
        warn_degenerate(
            f"evaluate_kd set some per-batch values to 0: {parts}. The counts are in "
            "KDEvaluation.degenerate_values.",
            stacklevel=4,
        )


def _counts(keys: Dict[str, int]) -> str:
    return ", ".join(
        f"{k} in {c} batch" + ("es" if c > 1 else "") for k, c in list(keys.items())[:6]
    )


def _reemit(caught: Dict[Tuple[type, str], int]) -> None:
    """Warnings raised while the batches were evaluated (e.g. UniCAM's), once each.

    warn <- _reemit <- _assemble <- evaluate_kd <- the caller."""
    for (category, message), count in caught.items():
        suffix = f" (raised {count} times over the batches)" if count > 1 else ""
        warnings.warn(message + suffix, category, stacklevel=4)


def _nothing_scored(records: List[Dict[str, Any]]) -> InputError:
    small = sum(1 for r in records if r["values"] is None and not r.get("degenerate"))
    degenerate = [r for r in records if r.get("degenerate")]
    return InputError(
        f"no batch could be scored ({len(records)} seen): {small} had fewer than "
        f"{MIN_BATCH_PARTIAL} samples (use a larger batch size) and {len(degenerate)} had labels "
        "that carry no information"
        + (f" ({degenerate[0]['degenerate']}; to fix it, {LABEL_FIX})" if degenerate else "")
        + "."
    )


def _collect(
    done: List[Dict[str, Any]], field_name: str, kinds: Sequence[str], names: Sequence[str]
):
    """``out[layer][kind][key]`` = the list over batches of ``record[field][layer][kind][key]``."""
    out: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    for name in names:
        out[name] = {}
        for kind in kinds:
            if kind not in done[0][field_name][name]:
                continue
            keys = done[0][field_name][name][kind]
            out[name][kind] = {k: [r[field_name][name][kind][k] for r in done] for k in keys}
    return out


def _assemble(
    run: _Run, records: List[Dict[str, Any]], caught, shard: _Shard, accuracies: Dict[str, float]
) -> KDEvaluation:
    """The result from the records of every rank; one warning per degenerate cause."""
    done = [r for r in records if r["values"] is not None]
    if not done:
        raise _nothing_scored(records)
    _reemit(caught)
    if shard.rank == 0:
        _report_degenerate(records, len(records))
    kinds, names = run.plan.kinds, list(run.plan.layer_pairs)
    degenerate_values: Dict[str, int] = {}
    for r in done:
        for key in r.get("zeroed") or {}:
            degenerate_values[key] = degenerate_values.get(key, 0) + 1
    settings = dict(run.settings)
    num_classes = settings.pop("num_classes", None)
    settings["world_size"] = shard.world
    settings["sharding"] = "sampler" if shard.presharded else "batch index % world size"
    return KDEvaluation(
        layers=names,
        map_kinds=list(kinds),
        values={
            n: {k: {m: v[m] for m in METRICS} for k, v in lk.items()}
            for n, lk in _collect(done, "values", kinds, names).items()
        },
        batch_indices=[r["index"] for r in done],
        batch_sizes=[r["size"] for r in done],
        skipped_batches=[
            r["index"] for r in records if r["values"] is None and not r.get("degenerate")
        ],
        settings=settings,
        degenerate_batches=[r["index"] for r in records if r.get("degenerate")],
        degenerate_values=degenerate_values,
        products=_collect(done, "products", kinds, names),
        leakage=_collect(done, "leakage", kinds, names),
        accuracies=accuracies,
        num_classes=num_classes,
    )


# ---------------------------------------------------------------------------
# evaluate_kd
# ---------------------------------------------------------------------------


def evaluate_kd(
    forward_func: Callable,
    layers: Mapping[str, Tuple[nn.Module, nn.Module]],
    data: Iterable[Any],
    *,
    base_forward_func: Callable,
    label_embeddings: Optional[Tensor] = None,
    maps: Optional[Sequence[MapKind]] = None,
    perturbation: Union[Callable[[Tensor, Tensor], Tensor], PerturbationName, None] = mask_multiply,
    estimator: Estimator = "u",
    device: Union[None, str, torch.device] = None,
    n_bootstrap: int = 1000,
    n_permutations: int = 10000,
    seed: int = 0,
    progress: bool = True,
    small_batches: Literal["skip", "error"] = "skip",
    aggregation: Aggregation = "dataset",
    reference: Union[Literal["auto"], None, Tuple[Tensor, Tensor]] = "auto",
    leakage: bool = True,
    accuracies: Optional[Mapping[str, float]] = None,
    pooling: str = "mean",
) -> KDEvaluation:
    r"""FSS and RS of a Student/Base pair over a data set, per layer and map kind.

    For each batch ``(x, y)`` of ``data``, each layer ``name -> (student_layer,
    base_layer)`` and each map kind, the inputs of the two models are perturbed
    (``perturbation``) with these maps:

    ============  ==============================  ===============================
    kind          Student's input                 Base's input
    ============  ==============================  ===============================
    ``none``      x (raw features)                x
    ``gradcam``   x ⊙ Grad-CAM of the Student     x ⊙ Grad-CAM of the Base
    ``distilled`` x ⊙ UniCAM distilled map        x ⊙ the same distilled map
    ``residual``  x ⊙ UniCAM residual map         x ⊙ the same residual map
    ============  ==============================  ===============================

    Grad-CAM is Captum's ``LayerGradCam`` on that layer with ReLU (as in the paper; the
    maps of all layers come from one forward and one backward pass per model, equal to
    ``LayerGradCam`` layer by layer, and the unperturbed features of all layers from one
    forward pass), each model explained by its own map (the paper's "layer-specific features",
    Fig. 3-4, Table 1 left). The UniCAM maps come from one ``UniCAM(student,
    student_layer, base, base_layer, label_embeddings=..., reference=...)`` call with
    ``features="both"``, in reference mode by default (``reference="auto"``), so that a map
    does not depend on its batch-mates; each perturbs the inputs of *both* models, as paper Eq. 7
    writes (one :math:`I \odot H` fed to :math:`f_s` and :math:`f_b`), so FSS compares
    the two models on the same evidence. The paper's Table 1 right half is then
    ``rs_student`` of the ``distilled`` rows (Student features on the distilled map)
    and ``rs_base`` of the ``residual`` rows (Base features on the residual map).

    Reading FSS: with a shared map both models see the same perturbed images, and the
    perturbation itself (how much of each image survives) is a strong common signal:
    even two untrained networks can reach an FSS near 1 on UniCAM- or Grad-CAM-masked
    images. Read FSS of a map kind against the ``none`` row of the same layer and against
    its leakage baseline.

    **Leakage baseline** (``leakage=True``): for every masked kind the same statistics on
    the batch's mean image masked by the same maps, an image that carries nothing of any
    one sample; a masked RS not above its baseline is flagged (the maps are computed for
    the true label, so a mask alone can "explain" the label).

    **Aggregation.** ``"dataset"`` (default): the inner products of U-centred distance
    matrices are averaged over batches and the correlations formed from the averages
    (:mod:`~captum_unicam.metrics.estimators`; one batch gives the exact whole-set
    value); ``"batch_mean"``: the paper's mean of per-batch correlations. Both are
    available from the result (``summary(aggregation=...)``); see ``docs/method.md``.

    Per batch it records ``fss``, ``rs_base``, ``rs_student``, ``rs_distilled`` =
    pdCor(x̂_s, Y; x̂_b) and ``rs_residual`` = pdCor(x̂_b, Y; x̂_s) (see
    :func:`~captum_unicam.feature_similarity_score` and
    :func:`~captum_unicam.relevance_score`; x̂ = flattened layer output on the
    perturbed batch, Y = label vectors).

    **Checks before any batch.** The layers must belong to the models; both models must
    be on one device (``device=None``, the default, then means that device; the batches
    are moved there, never the models); both models' output widths (from one forward pass
    on two samples of the first batch) must agree with each other and with the rows of
    ``label_embeddings``. Each batch's targets are checked against them before anything
    is computed on it.

    **Batches.** Data items are ``(x, y)`` or ``(x, y, mask, ...)``; only the first
    two are used; ``y`` holds class indices. **Text**: an item may also be a mapping with
    ``input_ids``, ``labels`` (or ``label``) and ``attention_mask``, as Hugging Face
    datasets and collators give it; with ``perturbation=None`` (raw features; token ids
    cannot be masked) a token layer ``(N, T, C)`` is read as one vector per sequence pooled
    over its valid tokens (``pooling``), so padding never enters a statistic, and the
    mask is passed to both models as the keyword ``attention_mask``. Batches with fewer
    than 5 samples cannot be scored (the partial distance correlation is always +-1 at 4): with
    ``small_batches="skip"`` (default) they are skipped with a warning and listed in
    ``KDEvaluation.skipped_batches``; with ``"error"`` they raise. A DataLoader's last
    batch is often small: use :func:`captum_unicam.pipeline.stratified_loader`, whose
    seeded, class-stratified batches merge a remainder of fewer than 5 images into the
    batch before it (nothing is dropped or skipped). A batch whose labels carry no
    information (one class; or one-hot labels and no class repeated, so that every pair
    of label vectors is equally far apart) is left out of every statistic and listed in
    ``KDEvaluation.degenerate_batches``, with one :class:`~captum_unicam.UniCAMWarning`
    for all of them; use ``label_embeddings=embed_labels(class_names)`` and batches in
    which classes repeat. Values set to 0 in a degenerate case (features constant over a
    batch, e.g. when every map of a batch is zero) are counted in
    ``KDEvaluation.degenerate_values`` and reported in one warning. The models are used
    as given (not moved, mode unchanged): put them in ``eval()`` mode first, or
    batch-norm statistics change and dropout is active.

    **Distributed.** If ``torch.distributed`` is initialised (e.g. under ``torchrun``,
    gloo on CPU or nccl on GPU), rank ``r`` of ``W`` computes the batches whose index
    ``i`` in ``data`` satisfies ``i % W == r`` (every rank iterates the same data,
    so it must yield the same batches in the same order on every rank: no unseeded
    shuffling); the per-batch values are all-gathered and ordered by ``i``, so every
    rank returns the same result as one process over all the data. An error on one
    rank is raised on every rank (none is left waiting). If the loader
    already uses a ``DistributedSampler``, each rank computes all of its own batches
    and they are ordered by (local index, rank). With nccl, set the CUDA device of each
    rank first (``torch.cuda.set_device``), as ``all_gather_object`` requires.

    Args:
        forward_func (torch.nn.Module): the Student, the model trained with KD.
        layers (Mapping[str, tuple[nn.Module, nn.Module]]): name -> (student_layer,
                    base_layer), e.g. ``{"L4": (s.layer4[-1], b.layer4[-1]), ...}``.
        data (Iterable): batches ``(inputs, target[, ...])``, typically a
                    :func:`~captum_unicam.pipeline.stratified_loader`.
        base_forward_func (torch.nn.Module): the Base, the same architecture trained
                    without KD (or the Teacher) (keyword-only).
        label_embeddings (Tensor, optional): ``(num_classes, e)`` label vectors for RS and
                    UniCAM (e.g. ``embed_labels(class_names)``), one row per output of
                    the models. Default: one-hot.
        maps (sequence of str, optional): subset of ``("none", "gradcam",
                    "distilled", "residual")``. Default: all four, or ``("none",)``
                    with ``perturbation=None``.
        perturbation (Callable, str or None, optional): ``perturbation(inputs,
                    attributions) -> perturbed inputs``: ``mask_multiply`` (default),
                    ``road_impute`` or your own; or ``"mask"``, ``"road"``; None (or
                    ``"none"``) scores raw features only.
        estimator (str, optional): ``"u"`` (paper) or ``"v"`` for FSS and the plain RS;
                    ``rs_distilled`` / ``rs_residual`` are always the (U-statistic)
                    partial distance correlation. Default: "u".
        device (str or torch.device, optional): where batches are moved; it must be
                    the models' device. Default: None (the Student's device).
        n_bootstrap (int, optional): bootstrap resamples for the intervals. Default: 1000.
        n_permutations (int, optional): sign patterns for the permutation tests (all
                    :math:`2^k` when that is not more). Default: 10000.
        seed (int, optional): seed of the bootstrap and permutations, and of torch's
                    generators while batch ``i`` is evaluated (seeded with ``(seed, i)``, then
                    restored), so random perturbations such as ``road_impute``'s noise are
                    reproducible and the same under any sharding. Default: 0.
        progress (bool, optional): tqdm progress bar (rank 0 only). Default: True.
        small_batches (str, optional): ``"skip"`` or ``"error"``. Default: "skip".
        aggregation (str, optional): ``"dataset"`` or ``"batch_mean"``, what the
                    summary and tables report by default. Default: "dataset".
        reference (str, tuple or None, optional): the reference set of the UniCAM maps:
                    ``"auto"`` (up to 32 images drawn once, class-stratified, from the
                    first batches), ``(ref_inputs, ref_target)``, or None for batch mode
                    (the paper's; each map depends on its batch). Default: "auto".
        leakage (bool, optional): measure the leakage baseline of every masked kind.
                    Default: True.
        accuracies (dict, optional): accuracies in [0, 1] of some of ``"teacher"``,
                    ``"base"``, ``"student"``, stated by the conclusion (a model near
                    chance stops it from concluding). Default: None.
        pooling (str, optional): how a token layer of a text model is read: ``"mean"``
                    over the valid tokens, or ``"cls"``, the first token.
                    Default: "mean".

    Returns:
        KDEvaluation: per-batch values and products; ``.summary()``, ``.conclusion()``,
        ``.to_json()``, ``.to_markdown()``, ``.to_csv()``.

    Raises:
        InputError: bad arguments; models with different output widths, or a label table
                    with another number of rows; a target beyond them; NaN in a batch; a
                    batch under 5 with ``small_batches="error"``; no batch that could be
                    scored at all.
        DeviceError: the Student and the Base on different devices, or ``device`` not
                    theirs.

    Examples::

        >>> from captum_unicam.metrics import evaluate_kd
        >>> layers = {f"L{i}": (getattr(student, f"layer{i}")[-1], getattr(base, f"layer{i}")[-1])
        ...           for i in range(1, 5)}
        >>> result = evaluate_kd(student.eval(), layers, loader, base_forward_func=base.eval(),
        ...                      label_embeddings=embed_labels(class_names))
        >>> print(result.to_markdown())
    """
    args = dict(locals())
    known_accuracies = _check_accuracies(accuracies)
    run = _validate(args)
    shard = _shard(data)
    records, caught, failure = _score_batches(run, data, shard, progress)
    records = _gather(records, failure, shard)
    return _assemble(run, records, caught, shard, known_accuracies)
