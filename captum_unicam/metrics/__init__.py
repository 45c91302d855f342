"""FSS and RS (paper Sec. 3.2) as Captum-style metrics, and their evaluation over a data set.

- :func:`feature_similarity_score`: FSS of a Student and a Base on one batch;
- :func:`relevance_score`: RS of a model on one batch, or of its unique (distilled /
  residual) features given a Base (``base_forward_func=``, ``base_layer=``);
- :func:`evaluate_kd`: both over a data loader, per layer and map kind, with dataset-level
  estimates (or the paper's mean over batches), bootstrap intervals, permutation p-values,
  leakage baselines and ``torch.distributed`` sharding; returns a :class:`KDEvaluation`
  (a generated conclusion, JSON, Markdown and CSV tables in several layouts).

All three share one signature: the model, its layer(s) and the data first, then keyword-only
arguments, the Base always named ``base_forward_func`` / ``base_layer``, and the perturbation
``perturbation(inputs, attributions) -> perturbed inputs`` (not Captum's ``perturb_func``
contract of ``infidelity``)::

    feature_similarity_score(forward_func, layer, inputs, *, base_forward_func, base_layer,
                             attributions=None, perturbation=mask_multiply, ...)
    relevance_score(forward_func, layer, inputs, *, target, label_embeddings=None,
                    base_forward_func=None, base_layer=None, attributions=None, ...)
    evaluate_kd(forward_func, layers, data, *, base_forward_func, label_embeddings=None,
                maps=None, perturbation=mask_multiply, estimator="u", device=None, ...,
                aggregation="dataset", reference="auto", leakage=True, accuracies=None)

Modules: :mod:`~captum_unicam.metrics.evaluation` (``evaluate_kd``),
:mod:`~captum_unicam.metrics.result` (``KDEvaluation``),
:mod:`~captum_unicam.metrics.estimators` (the dataset-level estimator),
:mod:`~captum_unicam.metrics.intervals` (the interval record, bootstrap, permutation tests),
:mod:`~captum_unicam.metrics.summary`, :mod:`~captum_unicam.metrics.conclusion`,
:mod:`~captum_unicam.metrics.layouts`; internal: ``_validate``, ``_batch``, ``_reference``.
"""

from captum_unicam.metrics.evaluation import evaluate_kd
from captum_unicam.metrics.fss import feature_similarity_score
from captum_unicam.metrics.result import KDEvaluation
from captum_unicam.metrics.rs import relevance_score

__all__ = ["feature_similarity_score", "relevance_score", "evaluate_kd", "KDEvaluation"]
