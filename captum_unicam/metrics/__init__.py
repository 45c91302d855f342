"""FSS and RS (paper Sec. 3.2) as Captum-style metrics, and their evaluation over a data set.

- :func:`feature_similarity_score`: FSS of a Student and a Base on one batch;
- :func:`relevance_score`: RS of a model on one batch, or of its unique (distilled /
  residual) features with ``given=``;
- :func:`evaluate_kd`: both over a DataLoader, per layer and map kind, with bootstrap
  intervals, permutation p-values and ``torch.distributed`` sharding; returns a
  :class:`KDEvaluation` (JSON, Markdown and CSV tables in the layout of the paper's Table 1).
"""

from captum_unicam.metrics.aggregate import KDEvaluation, evaluate_kd
from captum_unicam.metrics.fss import feature_similarity_score
from captum_unicam.metrics.rs import relevance_score

__all__ = ["feature_similarity_score", "relevance_score", "evaluate_kd", "KDEvaluation"]
