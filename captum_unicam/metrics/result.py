r"""``KDEvaluation``: what :func:`~captum_unicam.metrics.evaluate_kd` returns.

Per-batch values and inner products of a Student/Base pair, per layer and map kind, with
their summaries (:mod:`captum_unicam.metrics.summary`), a generated conclusion
(:mod:`captum_unicam.metrics.conclusion`), tables (:mod:`captum_unicam.metrics.layouts`) and
JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np

from captum_unicam.errors import InputError
from captum_unicam.metrics import conclusion as _conclusion
from captum_unicam.metrics import layouts
from captum_unicam.metrics.estimators import AGGREGATIONS
from captum_unicam.metrics.summary import Settings, summarise
from captum_unicam.output.tables import METRICS

__all__ = ["KDEvaluation", "FORMAT", "FORMAT_VERSION"]

FORMAT = "captum-unicam/kd-evaluation"
#: 2: per-batch inner products, leakage products, accuracies and the number of classes.
FORMAT_VERSION = 2

Nested = Dict[str, Dict[str, Dict[str, List[float]]]]


def write_atomic(path: Union[str, os.PathLike], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _floats(nested: Mapping[str, Any]) -> Nested:
    return {
        layer: {kind: {k: [float(x) for x in v] for k, v in km.items()} for kind, km in lk.items()}
        for layer, lk in nested.items()
    }


@dataclass
class KDEvaluation:
    r"""Per-batch FSS / RS values of a Student/Base pair, with summaries, conclusion, tables.

    Attributes:
        layers (list[str]): layer names, in the order given to :func:`evaluate_kd`.
        map_kinds (list[str]): map kinds evaluated (see :func:`evaluate_kd`).
        values (dict): ``values[layer][kind][metric]`` is the list of per-batch values,
                    in batch order; metrics are ``METRICS`` of
                    :mod:`captum_unicam.output.tables`.
        batch_indices (list[int]): index of each evaluated batch in the loader.
        batch_sizes (list[int]): its number of samples.
        skipped_batches (list[int]): indices of batches skipped for having fewer than 5
                    samples.
        settings (dict): estimator, aggregation, perturbation, label vectors, reference,
                    bootstrap and permutation settings, seed, world size.
        degenerate_batches (list[int]): indices of batches left out because their labels
                    carry no information.
        degenerate_values (dict): ``"layer/kind/metric"`` -> number of batches in which
                    that per-batch value was set to 0 for a degenerate case.
        products (dict): ``products[layer][kind][key]``: per-batch inner products of the
                    U-centred distance matrices (keys ``ss, bb, yy, sb, sy, by``; with
                    ``estimator="v"`` also ``v_ss`` ...), which the dataset estimator
                    accumulates.
        leakage (dict): the same products on the leakage baseline, for masked kinds.
        accuracies (dict): optional accuracies in [0, 1] of ``"teacher"``, ``"base"``,
                    ``"student"``, read by :meth:`conclusion`.
        num_classes (int, optional): the models' number of outputs (for chance level).
    """

    layers: List[str]
    map_kinds: List[str]
    values: Nested
    batch_indices: List[int]
    batch_sizes: List[int]
    skipped_batches: List[int] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)
    degenerate_batches: List[int] = field(default_factory=list)
    degenerate_values: Dict[str, int] = field(default_factory=dict)
    products: Nested = field(default_factory=dict)
    leakage: Nested = field(default_factory=dict)
    accuracies: Dict[str, float] = field(default_factory=dict)
    num_classes: Optional[int] = None

    def per_batch(self, layer: str, kind: str, metric: str) -> np.ndarray:
        """Per-batch values of one metric, as a float64 array."""
        return np.asarray(self.values[layer][kind][metric], dtype=np.float64)

    def _aggregation(self, aggregation: Optional[str]) -> str:
        if aggregation is None:
            aggregation = self.settings.get(
                "aggregation", "dataset" if self.products else "batch_mean"
            )
        if aggregation not in AGGREGATIONS:
            raise InputError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if aggregation == "dataset" and not self.products:
            raise InputError(
                "aggregation='dataset' needs the per-batch inner products, which this result does "
                "not hold; use aggregation='batch_mean' or re-run evaluate_kd."
            )
        return aggregation

    def summary(
        self,
        n_bootstrap: Optional[int] = None,
        n_permutations: Optional[int] = None,
        seed: Optional[int] = None,
        aggregation: Optional[str] = None,
    ) -> Dict[str, Any]:
        r"""Point estimates, 95 % intervals and permutation p-values per layer and map kind.

        Args:
            n_bootstrap, n_permutations, seed (int, optional): default from ``settings``;
                        the same seed gives the same numbers.
            aggregation (str, optional): ``"dataset"`` (correlations from the inner
                        products accumulated over batches; the default) or
                        ``"batch_mean"`` (the paper's mean of per-batch correlations).
                        Default: ``settings["aggregation"]``.

        Returns:
            dict: two views of the same numbers.

            - ``"by_layer"``: ``[layer][kind]`` holds, for each metric, an interval
              ``{"mean", "low", "high"}`` (``"mean"`` is the point estimate of the
              aggregation), ``"n_batches"``, ``"p_student_gt_base"`` and
              ``"p_distilled_gt_residual"`` (one-sided permutation tests over batches);
              for masked kinds ``"leakage"`` (the same intervals on the leakage baseline)
              and ``"above_leakage"`` (per RS metric: its interval lies above the
              baseline's); ``"degenerate"`` (metric -> why its dataset value is 0) when any;
            - ``"rows"``: one flat record per (layer, map, statistic): ``{"layer", "map",
              "metric": "FSS"|"RS", "key", "series", "mean", "low", "high", "n_batches",
              "aggregation"}``; the RS Student row carries ``"p"`` (Student > Base) and
              the RS distilled row ``"p"`` (distilled > residual).
        """
        agg = self._aggregation(aggregation)
        st = Settings(
            int(n_bootstrap if n_bootstrap is not None else self.settings.get("n_bootstrap", 1000)),
            int(
                n_permutations
                if n_permutations is not None
                else self.settings.get("n_permutations", 10000)
            ),
            int(seed if seed is not None else self.settings.get("seed", 0)),
            str(self.settings.get("estimator", "u")),
        )
        by_layer = {
            layer: {
                kind: summarise(
                    self.values[layer][kind],
                    self.products.get(layer, {}).get(kind),
                    self.leakage.get(layer, {}).get(kind),
                    agg,
                    st,
                )
                for kind in self.map_kinds
            }
            for layer in self.layers
        }
        return {"by_layer": by_layer, "rows": layouts.flat_rows(by_layer, agg)}

    def conclusion(
        self,
        kind: str = "none",
        accuracies: Optional[Mapping[str, float]] = None,
        summary: Optional[Mapping[str, Any]] = None,
        explained: Optional[Mapping[str, str]] = None,
    ) -> str:
        r"""A short generated statement per layer of what the statistics support.

        From the raw-feature (map-free, ``kind="none"``) scores by default: whether the
        Student's features carry label structure the Base's lack (S_d = pdCor(Student, Y |
        Base) with its interval), the reverse (S_r), RS Student against RS Base with the
        permutation p-value, and the accuracies when known. It refuses to conclude where an
        interval includes 0, two intervals overlap, or a model is near chance (see
        :mod:`captum_unicam.metrics.conclusion`).

        Args:
            kind (str, optional): the map kind to read. Default: ``"none"``.
            accuracies (dict, optional): ``{"teacher", "base", "student"}`` accuracies in
                        [0, 1]; default: :attr:`accuracies`.
            summary (dict, optional): a :meth:`summary` to read (default: computed).
            explained (dict, optional): role (``"base"``, ``"student"``) -> why that model is
                        near chance; its statements are then made, with the reason.

        Returns:
            str: one paragraph per layer.
        """
        return _conclusion.text(self.headline(kind, accuracies, summary, explained))

    def headline(
        self,
        kind: str = "none",
        accuracies: Optional[Mapping[str, float]] = None,
        summary: Optional[Mapping[str, Any]] = None,
        explained: Optional[Mapping[str, str]] = None,
    ) -> Dict[str, Any]:
        """The statements of :meth:`conclusion` as data (per layer), plus the reason masked
        FSS is left out."""
        if kind not in self.map_kinds:
            raise InputError(
                f"the conclusion reads map kind {kind!r}, which was not evaluated (maps "
                f"{self.map_kinds}); evaluate maps including 'none' (the default)."
            )
        s = summary if summary is not None else self.summary()
        acc = dict(self.accuracies if accuracies is None else accuracies)
        return _conclusion.headline(
            s["by_layer"], self.layers, kind, acc, self.num_classes, self.map_kinds, explained
        )

    # -- serialisation ----------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """Everything, plus the summary and the headline, as JSON-ready Python objects."""
        summary = self.summary()
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "layers": list(self.layers),
            "map_kinds": list(self.map_kinds),
            "metrics": list(METRICS),
            "batch_indices": list(self.batch_indices),
            "batch_sizes": list(self.batch_sizes),
            "skipped_batches": list(self.skipped_batches),
            "degenerate_batches": list(self.degenerate_batches),
            "degenerate_values": dict(self.degenerate_values),
            "settings": dict(self.settings),
            "values": self.values,
            "products": self.products,
            "leakage": self.leakage,
            "accuracies": dict(self.accuracies),
            "num_classes": self.num_classes,
            "summary": summary,
            "headline": self.headline(summary=summary) if "none" in self.map_kinds else None,
        }

    def to_json(self, path: Optional[Union[str, os.PathLike]] = None, indent: int = 2) -> str:
        """JSON text of :meth:`to_dict`; also written atomically to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            write_atomic(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, source: Union[str, os.PathLike]) -> "KDEvaluation":
        """Read what :meth:`to_json` wrote: a file path, or the JSON text itself."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            data = json.loads(source)
        else:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise InputError(
                f"not a KDEvaluation JSON (format {data.get('format')!r}, expected {FORMAT!r})."
            )
        if data.get("version") != FORMAT_VERSION:
            raise InputError(
                f"KDEvaluation JSON of version {data.get('version')!r}; this release reads version "
                f"{FORMAT_VERSION} only: re-run evaluate_kd to write it."
            )
        return cls(
            layers=list(data["layers"]),
            map_kinds=list(data["map_kinds"]),
            values=_floats(data["values"]),
            batch_indices=[int(i) for i in data["batch_indices"]],
            batch_sizes=[int(i) for i in data["batch_sizes"]],
            skipped_batches=[int(i) for i in data["skipped_batches"]],
            settings=dict(data["settings"]),
            degenerate_batches=[int(i) for i in data["degenerate_batches"]],
            degenerate_values={str(k): int(v) for k, v in data["degenerate_values"].items()},
            products=_floats(data["products"]),
            leakage=_floats(data["leakage"]),
            accuracies={str(k): float(v) for k, v in data["accuracies"].items()},
            num_classes=None if data["num_classes"] is None else int(data["num_classes"]),
        )

    # -- tables -----------------------------------------------------------

    def to_markdown(
        self,
        path: Optional[Union[str, os.PathLike]] = None,
        digits: int = 4,
        layout: str = "full",
        headline: bool = True,
    ) -> str:
        r"""The conclusion, then a table, as Markdown; written atomically to ``path`` if given.

        Cells are ``mean ± h``, ``h`` half the width of the 95 % interval (the exact
        bounds are in :meth:`to_csv` and :meth:`to_json`).

        Args:
            path (str or path-like, optional): file to write.
            digits (int, optional): decimals. Default: 4.
            layout (str, optional): one of :data:`~captum_unicam.metrics.layouts.LAYOUTS`:
                    ``"full"`` (default): one row per layer and map kind; FSS, the four
                    RS, the p-value of RS Student > RS Base, and the leakage baselines of
                    FSS, RS Base and RS Student (``†`` marks an RS not above its
                    baseline). ``"paper"``: the paper's Table 1, one row per layer: RS of
                    Base and Student on their Grad-CAM maps, of the Base on the residual
                    map and of the Student on the distilled map. ``"readme"``: one row per
                    layer: FSS / RS Base / RS Student on Grad-CAM and p, RS Base on the
                    residual and RS Student on the distilled map, and the raw-feature
                    pdCor S_d and S_r. ``"raw"``: one row per layer from the raw features
                    (S_d, S_r, RS Student, RS Base, p, FSS).
            headline (bool, optional): start with the :meth:`conclusion` (when ``"none"``
                    was evaluated). Default: True.
        """
        summary = self.summary()
        text = layouts.markdown(self, summary, layout, digits)
        if headline and "none" in self.map_kinds:
            text = "**Conclusion.** " + self.conclusion(summary=summary) + "\n\n" + text
        if path is not None:
            write_atomic(path, text)
        return text

    def to_csv(self, path: Optional[Union[str, os.PathLike]] = None, layout: str = "full") -> str:
        """The table of :meth:`to_markdown` with exact numbers (``{metric}_mean``,
        ``{metric}_ci_low``, ``{metric}_ci_high`` columns), written atomically to ``path``
        if given."""
        text = layouts.csv(self, self.summary(), layout)
        if path is not None:
            write_atomic(path, text)
        return text
