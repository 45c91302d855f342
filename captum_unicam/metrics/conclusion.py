r"""The generated conclusion of a :class:`~captum_unicam.metrics.KDEvaluation`.

Per layer, from the raw-feature (map-free) summary by default, four checkable statements:

1. **Distilled**: S_d = pdCor(Student, Y | Base) with its interval. "carries label structure
   the Base's lacks" only when the whole interval is above 0.
2. **Residual**: S_r = pdCor(Base, Y | Student), the reverse, by the same rule.
3. **RS**: RS Student against RS Base with the one-sided permutation p-value. "higher" only
   when p < :data:`ALPHA` *and* the two intervals do not overlap; otherwise no conclusion.
4. **Accuracies** when given. A model is *near chance* when its accuracy is below
   1 / num_classes + :data:`CHANCE_MARGIN`; then no comparison involving it is concluded,
   unless the caller states why it is near chance (``explained``: e.g. the demo's Base, which
   learnt a shortcut the evaluated images do not carry). Then the statements are made, and
   the stated reason is part of the headline.

With fewer than :data:`MIN_BATCHES` batches nothing is concluded (no usable interval).

FSS on masked images is left out of the headline: both models see the same masked images,
so the mask alone makes it near 1 for any pair (its leakage baseline shows this).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from captum_unicam.output.tables import format_interval, map_title

__all__ = ["ALPHA", "CHANCE_MARGIN", "MIN_BATCHES", "headline", "text"]

#: Significance level of the permutation test in the wording.
ALPHA = 0.05
#: An accuracy below 1 / num_classes + this is "near chance".
CHANCE_MARGIN = 0.05
#: Fewer batches than this give no usable interval (the bootstrap resamples batches).
MIN_BATCHES = 4

FSS_NOTE = (
    "FSS on masked images is left out: both models are fed the same masked images, so the mask "
    "alone makes FSS high for any pair of models (see its leakage baseline in the table)."
)


def _above_zero(e: Mapping[str, Any]) -> Optional[bool]:
    """True: interval above 0; False: below 0; None: it includes 0."""
    if e["low"] > 0:
        return True
    if e["high"] < 0:
        return False
    return None


def _overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return not (a["low"] > b["high"] or b["low"] > a["high"])


def _unique(who: str, other: str, e: Mapping[str, Any], symbol: str) -> str:
    where = _above_zero(e)
    value = f"{symbol} = {format_interval(e)}"
    if where is True:
        return (
            f"the {who}'s features carry label structure that the {other}'s lack ({value}, "
            "above 0)."
        )
    if where is False:
        return f"what only the {who} encodes runs against the labels ({value}, below 0)."
    return (
        f"no evidence that the {who}'s features carry label structure the {other}'s lack "
        f"({value} includes 0)."
    )


def _rs(entry: Mapping[str, Any]) -> str:
    s, b, p = entry["rs_student"], entry["rs_base"], entry["p_student_gt_base"]
    values = f"RS Student {format_interval(s)} against RS Base {format_interval(b)}, p = {p:.3g}"
    if p < ALPHA and not _overlap(s, b):
        return f"the Student's features are more related to the labels than the Base's ({values})."
    if p < ALPHA:
        return (
            f"no conclusion on RS: the test favours the Student ({values}), but the intervals "
            "overlap."
        )
    return f"no conclusion that the Student's features are more related to the labels ({values})."


def _near_chance(accuracies: Mapping[str, float], num_classes: Optional[int]) -> List[str]:
    """The Base and Student roles whose accuracy is near chance."""
    if not num_classes:
        return []
    chance = 1.0 / num_classes
    return [
        role
        for role, acc in accuracies.items()
        if role in ("base", "student") and acc < chance + CHANCE_MARGIN
    ]


def _who(role: str, accuracies: Mapping[str, float], num_classes: int) -> str:
    return f"the {role.capitalize()} ({accuracies[role]:.1%}, chance {1.0 / num_classes:.1%})"


def _accuracy_line(accuracies: Mapping[str, float]) -> Optional[str]:
    order = [r for r in ("teacher", "base", "student") if r in accuracies]
    if not order:
        return None
    return "Accuracy: " + ", ".join(f"{r.capitalize()} {accuracies[r]:.1%}" for r in order) + "."


def _layer(entry: Mapping[str, Any], near: Sequence[str]) -> List[str]:
    if entry["n_batches"] < MIN_BATCHES:
        return [
            f"no conclusion: {entry['n_batches']} batch(es) give no usable interval (the bootstrap "
            f"resamples batches; use at least {MIN_BATCHES})."
        ]
    if near:
        return [
            "no conclusion: "
            + " and ".join(near)
            + (" are" if len(near) > 1 else " is")
            + " near chance, so there is too little label structure to compare."
        ]
    return [
        _unique("Student", "Base", entry["rs_distilled"], "S_d"),
        _unique("Base", "Student", entry["rs_residual"], "S_r"),
        _rs(entry),
    ]


def headline(
    by_layer: Mapping[str, Mapping[str, Any]],
    layers: Sequence[str],
    kind: str,
    accuracies: Mapping[str, float],
    num_classes: Optional[int],
    map_kinds: Sequence[str],
    explained: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """The statements per layer as data: ``{"kind", "accuracy", "near_chance", "explained",
    "layers": {layer: [statement, ...]}, "fss_note"}``. ``explained`` maps a role
    (``"base"``, ``"student"``) to the stated reason it is near chance."""
    explained = dict(explained or {})
    roles = _near_chance(accuracies, num_classes)
    near = [_who(r, accuracies, num_classes) for r in roles if r not in explained]
    known = [
        f"{_who(r, accuracies, num_classes)} is near chance by design: {explained[r]}."
        for r in roles
        if r in explained
    ]
    return {
        "kind": kind,
        "source": map_title(kind),
        "accuracy": _accuracy_line(accuracies),
        "near_chance": near,
        "explained": known,
        "layers": {layer: _layer(by_layer[layer][kind], near) for layer in layers},
        "fss_note": FSS_NOTE if any(k != "none" for k in map_kinds) else None,
    }


def text(head: Mapping[str, Any]) -> str:
    """The headline as text: one paragraph per layer."""
    parts = []
    if head["accuracy"]:
        parts.append(head["accuracy"])
    parts += [s[0].upper() + s[1:] for s in head.get("explained") or ()]
    for layer, statements in head["layers"].items():
        parts.append(
            f"{layer} ({head['source']}): " + " ".join(s[0].upper() + s[1:] for s in statements)
        )
    if head["fss_note"]:
        parts.append(head["fss_note"])
    return "\n\n".join(parts)
