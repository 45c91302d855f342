r"""Distillation losses of the three KD methods the paper explains.

- **Response-based KD** (Hinton, Vinyals & Dean 2015): :func:`response_kd_loss`, the
  Kullback-Leibler divergence between the Teacher's and the Student's class
  distributions softened by a temperature :math:`T`, scaled by :math:`T^2` so that its
  gradients keep their size when :math:`T` changes.
- **Attention transfer** (Zagoruyko & Komodakis 2017): :func:`attention_map` and
  :func:`attention_transfer_loss`, the distance between the L2-normalised spatial
  attention maps :math:`Q = \operatorname{vec}(\sum_c |A_c|^p)` of Student and Teacher,
  stage by stage.
- **Overhaul feature distillation** (Heo et al. 2019, "A comprehensive overhaul of
  feature distillation"): :func:`overhaul_margin`, :func:`overhaul_loss` and
  :class:`OverhaulDistiller`. The Student's *pre-ReLU* features go through a connector
  (1x1 convolution + BatchNorm) and are pulled towards the Teacher's pre-ReLU features
  after a margin ReLU :math:`\max(t, m)`, with a partial L2 distance that ignores
  positions where both are "negative enough" to be zeroed by the ReLU anyway. The margin
  :math:`m_c = \mathbb{E}[x \mid x < 0]` of channel :math:`c` is computed in closed form
  from the Teacher's BatchNorm affine parameters, read as the mean
  (:math:`\beta_c`) and standard deviation (:math:`|\gamma_c|`) of a Gaussian.

Everything here is a plain differentiable function of tensors (or, for the distiller,
an ``nn.Module`` whose parameters are the connectors), so it plugs into any training
loop; :mod:`captum_unicam.kd.train` uses them.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "response_kd_loss",
    "attention_map",
    "attention_transfer_loss",
    "overhaul_margin",
    "bn_margin",
    "overhaul_loss",
    "pre_relu_parts",
    "OverhaulDistiller",
    "OverhaulOutput",
]

TensorOrTensors = Union[Tensor, Sequence[Tensor]]


# ---------------------------------------------------------------------------
# Response-based KD
# ---------------------------------------------------------------------------


def response_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> Tensor:
    r"""Hinton et al.'s distillation loss:
    :math:`T^2\,\mathrm{KL}(\sigma(z_t/T)\,\Vert\,\sigma(z_s/T))`.

    Args:

        student_logits (Tensor): Student logits, shape (N, num_classes).
        teacher_logits (Tensor): Teacher logits, same shape. They are used as given
                    (not detached): compute them under ``torch.no_grad()`` for the
                    usual offline distillation.
        temperature (float, optional): Softmax temperature :math:`T > 0`.
                    Default: 4.0
        reduction (str, optional): ``"batchmean"`` (sum over classes, mean over
                    samples: the KL divergence per sample, as ``F.kl_div`` with
                    ``reduction="batchmean"``), ``"sum"``, ``"mean"`` (mean over all
                    N * num_classes terms) or ``"none"`` (per sample, shape (N,)).
                    Default: ``"batchmean"``

    Returns:
        *Tensor* of **loss**:
        - **loss** (*Tensor*): The scaled divergence, a scalar (shape (N,) with
          ``reduction="none"``). It is 0 when the two sets of logits agree up to a
          per-sample constant.

    Examples::

        >>> loss = response_kd_loss(student(x), teacher(x).detach(), temperature=4.0)
        >>> total = 0.1 * F.cross_entropy(student(x), y) + 0.9 * loss
    """
    if not isinstance(student_logits, Tensor) or not isinstance(teacher_logits, Tensor):
        raise ValueError("response_kd_loss expects tensors of logits, shape (N, num_classes)")
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must both have shape (N, num_classes); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}. Check that "
            "Student and Teacher have the same number of classes."
        )
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if reduction not in ("batchmean", "sum", "mean", "none"):
        raise ValueError(
            f"reduction must be 'batchmean', 'sum', 'mean' or 'none', got {reduction!r}"
        )
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    # p_t * (log p_t - log p_s), with 0 * log 0 = 0 handled by xlogy-like masking
    terms = log_p_t.exp() * (log_p_t - log_p_s)
    scale = temperature**2
    if reduction == "none":
        return terms.sum(dim=1) * scale
    if reduction == "sum":
        return terms.sum() * scale
    if reduction == "mean":
        return terms.mean() * scale
    return terms.sum() / student_logits.shape[0] * scale


# ---------------------------------------------------------------------------
# Attention transfer
# ---------------------------------------------------------------------------


def _as_list(feats: TensorOrTensors, name: str) -> List[Tensor]:
    if isinstance(feats, Tensor):
        return [feats]
    feats = list(feats)
    if not feats or not all(isinstance(f, Tensor) for f in feats):
        raise ValueError(f"{name} must be a tensor or a non-empty sequence of tensors")
    return feats


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    r"""Zagoruyko & Komodakis's spatial attention map, L2-normalised.

    :math:`Q_i = \operatorname{vec}\big(\frac{1}{C}\sum_c |A_{i,c}|^p\big)
    / \lVert \cdot \rVert_2`. The mean over channels (rather than the sum) is what
    the authors' code uses; it does not change the normalised map.

    Args:

        features (Tensor): Activations, shape (N, C, h, w) (any trailing spatial
                    shape is flattened).
        p (float, optional): Exponent, > 0. Default: 2.0

    Returns:
        *Tensor* of **maps**:
        - **maps** (*Tensor*): Shape (N, h * w), each row of unit L2 norm (a row of
          zeros for an all-zero activation).

    Examples::

        >>> q = attention_map(student.layer3(x))          # (N, h*w)
    """
    if not isinstance(features, Tensor) or features.dim() < 3:
        raise ValueError(
            "features must be a tensor of shape (N, C, h, w); got "
            f"{tuple(features.shape) if isinstance(features, Tensor) else type(features)}"
        )
    if not (isinstance(p, (int, float)) and p > 0):
        raise ValueError(f"p must be a positive number, got {p!r}")
    q = features.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(q, p=2.0, dim=1)


def attention_transfer_loss(
    student_feats: TensorOrTensors, teacher_feats: TensorOrTensors, p: float = 2.0
) -> Tensor:
    r"""Attention-transfer loss summed over stages.

    :math:`\sum_j \frac{1}{N\,h_j w_j}\sum_{i} \lVert Q^S_{ij} - Q^T_{ij} \rVert_2^2`
    with :math:`Q` from :func:`attention_map` (the mean of squared differences per
    stage, as in the authors' code). Zagoruyko & Komodakis weight it by
    :math:`\beta/2` with :math:`\beta = 10^3` next to the cross-entropy.

    Args:

        student_feats (Tensor or sequence of Tensor): Student activations per stage,
                    each (N, C_s, h, w).
        teacher_feats (Tensor or sequence of Tensor): Teacher activations per stage,
                    each (N, C_t, h, w): the channel counts may differ, the batch
                    and spatial sizes must match the Student's stage by stage.
        p (float, optional): Exponent of :func:`attention_map`. Default: 2.0

    Returns:
        *Tensor* of **loss**:
        - **loss** (*Tensor*): A scalar.
    """
    s_list = _as_list(student_feats, "student_feats")
    t_list = _as_list(teacher_feats, "teacher_feats")
    if len(s_list) != len(t_list):
        raise ValueError(
            f"got {len(s_list)} Student stages and {len(t_list)} Teacher stages; "
            "pass one Teacher activation per Student activation"
        )
    total = None
    for j, (s, t) in enumerate(zip(s_list, t_list)):
        if s.dim() < 3 or t.dim() < 3 or s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"stage {j}: Student activation {tuple(s.shape)} and Teacher activation "
                f"{tuple(t.shape)} must share the batch size and spatial size; pair "
                "stages of the same resolution"
            )
        term = (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
        total = term if total is None else total + term
    return total


# ---------------------------------------------------------------------------
# Overhaul feature distillation
# ---------------------------------------------------------------------------


def overhaul_margin(mean: Tensor, std: Tensor) -> Tensor:
    r"""Expectation of the negative part of a Gaussian: :math:`\mathbb{E}[x \mid x < 0]`.

    For :math:`x \sim \mathcal{N}(\mu, \sigma^2)`, with :math:`a = \mu / \sigma`,
    :math:`\mathbb{E}[x \mid x < 0] = \mu - \sigma\,\varphi(a) / \Phi(-a)`, computed
    through ``log_ndtr`` so that it stays exact when :math:`\Phi(-a)` underflows
    (Heo et al.'s code switches to :math:`-3\sigma` when :math:`\Phi(-a) < 10^{-3}`;
    this function returns the exact value, which tends to :math:`0^-` there). Where
    :math:`\sigma = 0` the channel is the constant :math:`\mu`: the margin is
    :math:`\mu` if :math:`\mu < 0` and 0 otherwise.

    Args:

        mean (Tensor): Per-channel means :math:`\mu`, shape (C,).
        std (Tensor): Per-channel standard deviations :math:`\sigma \ge 0`, shape (C,)
                    (the absolute value is taken).

    Returns:
        *Tensor* of **margins**:
        - **margins** (*Tensor*): Shape (C,), all ≤ 0, in the dtype of ``mean``.
    """
    mean = torch.as_tensor(mean)
    std = torch.as_tensor(std)
    if mean.shape != std.shape:
        raise ValueError(
            f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have the same shape"
        )
    dtype = mean.dtype if mean.is_floating_point() else torch.get_default_dtype()
    mu = mean.detach().to(torch.float64)
    sigma = std.detach().to(torch.float64).abs()
    positive = sigma > 0
    safe_sigma = torch.where(positive, sigma, torch.ones_like(sigma))
    a = mu / safe_sigma
    log_pdf = -0.5 * a * a - 0.5 * math.log(2 * math.pi)
    ratio = torch.exp(log_pdf - torch.special.log_ndtr(-a))  # phi(a) / Phi(-a)
    margin = mu - safe_sigma * ratio
    degenerate = torch.where(mu < 0, mu, torch.zeros_like(mu))
    margin = torch.where(positive, margin, degenerate)
    return margin.clamp(max=0.0).to(dtype)


def bn_margin(bn: nn.Module) -> Tensor:
    """Margins of :func:`overhaul_margin` from a BatchNorm's affine parameters.

    The BatchNorm output of channel c is read as a Gaussian with mean ``bn.bias[c]`` and
    standard deviation ``|bn.weight[c]|`` (its input is normalised), as in Heo et al.
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.weight is None or bn.bias is None:
        raise ValueError(
            f"expected an affine BatchNorm layer to read the margins from, got {type(bn).__name__}"
        )
    return overhaul_margin(bn.bias.detach(), bn.weight.detach())


def overhaul_loss(
    student_feats: TensorOrTensors,
    teacher_feats: TensorOrTensors,
    margins: TensorOrTensors,
) -> Tensor:
    r"""Heo et al.'s partial L2 distance between connected Student features and
    margin-ReLU'd Teacher features, summed over stages.

    Per stage: :math:`t' = \max(t, m)` (channel-wise margin),
    :math:`\ell = \sum (s - t')^2 \cdot [\,(s > t') \lor (t' > 0)\,]`: positions where the
    Student is already below a non-positive target are skipped (the ReLU would zero
    both). Stage :math:`j` of :math:`J` is weighted by :math:`2^{-(J-1-j)}` (the last
    stage counts most) and the sum is divided by the batch size, as in the authors' code.

    Args:

        student_feats (Tensor or sequence of Tensor): Student features after the
                    connector, each (N, C_j, h_j, w_j).
        teacher_feats (Tensor or sequence of Tensor): Teacher pre-ReLU features, the
                    same shapes.
        margins (Tensor or sequence of Tensor): Per-channel margins, each (C_j,).

    Returns:
        *Tensor* of **loss**:
        - **loss** (*Tensor*): A scalar.
    """
    s_list = _as_list(student_feats, "student_feats")
    t_list = _as_list(teacher_feats, "teacher_feats")
    m_list = _as_list(margins, "margins")
    if not (len(s_list) == len(t_list) == len(m_list)):
        raise ValueError(
            f"got {len(s_list)} Student, {len(t_list)} Teacher and {len(m_list)} margin "
            "stages; they must match"
        )
    n_stages = len(s_list)
    total = None
    for j, (s, t, m) in enumerate(zip(s_list, t_list, m_list)):
        if s.shape != t.shape or s.dim() != 4:
            raise ValueError(
                f"stage {j}: connected Student features {tuple(s.shape)} and Teacher "
                f"features {tuple(t.shape)} must have the same (N, C, h, w) shape"
            )
        if m.shape != (s.shape[1],):
            raise ValueError(
                f"stage {j}: margins must have shape ({s.shape[1]},), got {tuple(m.shape)}"
            )
        target = torch.maximum(t, m.to(t).view(1, -1, 1, 1))
        keep = (s > target) | (target > 0)
        term = ((s - target).pow(2) * keep.to(s.dtype)).sum() / 2 ** (n_stages - 1 - j)
        total = term if total is None else total + term
    return total / s_list[0].shape[0]


def pre_relu_parts(block: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """The (final ReLU, final BatchNorm) of a residual block.

    Works for torchvision's ``BasicBlock`` (``relu``, ``bn2``) and ``Bottleneck``
    (``relu``, ``bn3``) and any block built the same way: a ``relu`` module applied
    last, after the residual sum, and a last BatchNorm ``bn3`` or ``bn2``.
    """
    relu = getattr(block, "relu", None)
    bn = getattr(block, "bn3", None)
    if bn is None:
        bn = getattr(block, "bn2", None)
    if not isinstance(relu, nn.Module) or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise ValueError(
            f"cannot find the pre-ReLU features of a {type(block).__name__}: overhaul "
            "distillation needs residual blocks with a final `relu` module and a last "
            "BatchNorm `bn2` or `bn3` (torchvision BasicBlock / Bottleneck); pass the last "
            "block of each stage"
        )
    return relu, bn


class _LastReluInput:
    """Forward pre-hook on a block's ``relu`` that keeps a copy of its latest input.

    In torchvision's blocks the same ``relu`` module is called after ``bn1`` (and
    ``bn2`` in a Bottleneck) and, last, on ``bn2/bn3(...) + identity``: after the
    block's forward the kept tensor is therefore the block's pre-ReLU output. The copy
    (``clone``, which keeps the autograd graph) is needed because that ReLU is in-place.
    """

    def __init__(self) -> None:
        self.value: Optional[Tensor] = None

    def __call__(self, module: nn.Module, args: Tuple[Tensor, ...]) -> None:
        self.value = args[0].clone()


class OverhaulOutput(NamedTuple):
    loss: Tensor
    student_logits: Tensor
    teacher_logits: Tensor


class OverhaulDistiller(nn.Module):
    r"""Overhaul feature distillation (Heo et al. 2019) between two residual networks.

    Holds one connector per stage pair (1x1 convolution from the Student's to the
    Teacher's channel count, then BatchNorm, Kaiming-initialised as in the paper) and
    the Teacher's margins (buffers ``margin0``, ``margin1``, …, from the Teacher's last
    BatchNorm of each block, :func:`bn_margin`). Its parameters are the connectors
    only: Student and Teacher are *not* sub-modules, so optimise
    ``list(student.parameters()) + list(distiller.parameters())``.

    **How the pre-ReLU features are captured.** For each listed block, a forward
    pre-hook on the block's ``relu`` module copies the input of its last call during
    the forward pass, i.e. ``bn2(...) + identity`` (BasicBlock) or
    ``bn3(...) + identity`` (Bottleneck) before the final in-place ReLU. Hooks are
    registered for one forward call and removed in a ``finally``.

    Args:

        student (nn.Module): The Student network (``forward(inputs) -> logits``).
        teacher (nn.Module): The Teacher network; run in eval mode under
                    ``torch.no_grad()`` (its mode is restored afterwards).
        layers (sequence of (nn.Module, nn.Module), optional): Pairs
                    (student block, teacher block) whose pre-ReLU outputs are matched,
                    shallow to deep. Default: the last block of each of the four stages
                    of both networks (``captum_unicam.models.stage_layers``).

    Examples::

        >>> distiller = OverhaulDistiller(student, teacher)
        >>> opt = torch.optim.SGD([*student.parameters(), *distiller.parameters()], lr=0.1)
        >>> out = distiller(x)
        >>> loss = F.cross_entropy(out.student_logits, y) + 1e-3 * out.loss
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layers: Optional[Sequence[Tuple[nn.Module, nn.Module]]] = None,
    ) -> None:
        super().__init__()
        if layers is None:
            from captum_unicam.models import stage_layers

            s_stages, t_stages = stage_layers(student), stage_layers(teacher)
            layers = [(s_stages[k], t_stages[k]) for k in s_stages]
        layers = list(layers)
        if not layers:
            raise ValueError("layers must list at least one (student block, teacher block) pair")
        s_modules = dict(student.named_modules())
        t_modules = dict(teacher.named_modules())
        s_ids = {id(m) for m in s_modules.values()}
        t_ids = {id(m) for m in t_modules.values()}
        connectors = []
        self._pairs = []
        for j, pair in enumerate(layers):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(
                    "layers must be a sequence of (student block, teacher block) pairs"
                )
            s_block, t_block = pair
            if id(s_block) not in s_ids:
                raise ValueError(f"pair {j}: the Student block is not a sub-module of the Student")
            if id(t_block) not in t_ids:
                raise ValueError(f"pair {j}: the Teacher block is not a sub-module of the Teacher")
            s_relu, s_bn = pre_relu_parts(s_block)
            t_relu, t_bn = pre_relu_parts(t_block)
            c_s, c_t = s_bn.num_features, t_bn.num_features
            conv = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            bn = nn.BatchNorm2d(c_t)
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
            connectors.append(nn.Sequential(conv, bn))
            margin = bn_margin(t_bn).to(device=t_bn.weight.device, dtype=t_bn.weight.dtype)
            self.register_buffer(f"margin{j}", margin)
            self._pairs.append((s_relu, t_relu))
        self.connectors = nn.ModuleList(connectors)
        device = next(iter(student.parameters()), torch.empty(0)).device
        self.connectors.to(device)
        # plain attributes, not sub-modules: parameters() is the connectors only
        self.__dict__["student"] = student
        self.__dict__["teacher"] = teacher

    @property
    def margins(self) -> List[Tensor]:
        return [getattr(self, f"margin{j}") for j in range(len(self.connectors))]

    def _run(
        self, model: nn.Module, relus: Sequence[nn.Module], inputs, extra
    ) -> Tuple[Tensor, List[Tensor]]:
        catchers = [_LastReluInput() for _ in relus]
        handles = []
        try:
            for relu, catcher in zip(relus, catchers):
                handles.append(relu.register_forward_pre_hook(catcher))
            logits = model(*inputs, *extra)
        finally:
            for h in handles:
                h.remove()
        feats = []
        for j, c in enumerate(catchers):
            if c.value is None:
                raise ValueError(
                    f"stage {j}: the block's relu was not called during the forward pass"
                )
            feats.append(c.value)
        return logits, feats

    def forward(self, inputs, additional_forward_args=None) -> OverhaulOutput:
        r"""Runs Teacher and Student on ``inputs`` and returns the distillation loss.

        Args:

            inputs (Tensor or tuple of Tensor): Model inputs.
            additional_forward_args (Any, optional): Extra positional arguments of both
                        models' forward, after ``inputs``.

        Returns:
            *OverhaulOutput* (**loss**, **student_logits**, **teacher_logits**):
            - **loss** (*Tensor*): :func:`overhaul_loss` of the connected Student
              features and the Teacher's pre-ReLU features (scalar, not yet weighted).
            - **student_logits** (*Tensor*): The Student's output, with gradients.
            - **teacher_logits** (*Tensor*): The Teacher's output, without gradients.
        """
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        if additional_forward_args is None:
            extra: tuple = ()
        elif isinstance(additional_forward_args, tuple):
            extra = additional_forward_args
        else:
            extra = (additional_forward_args,)
        teacher = self.__dict__["teacher"]
        student = self.__dict__["student"]
        was_training = teacher.training
        try:
            teacher.eval()
            with torch.no_grad():
                t_logits, t_feats = self._run(teacher, [p[1] for p in self._pairs], inputs, extra)
        finally:
            teacher.train(was_training)
        s_logits, s_feats = self._run(student, [p[0] for p in self._pairs], inputs, extra)
        connected = [conn(f) for conn, f in zip(self.connectors, s_feats)]
        for j, (s, t) in enumerate(zip(connected, t_feats)):
            if s.shape != t.shape:
                raise ValueError(
                    f"stage {j}: Student features {tuple(s.shape)} (after the connector) and "
                    f"Teacher features {tuple(t.shape)} differ; pair blocks of the same "
                    "spatial resolution"
                )
        loss = overhaul_loss(connected, t_feats, self.margins)
        return OverhaulOutput(loss, s_logits, t_logits)
