"""KD losses against hand computations on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from captum_unicam.kd.losses import (
    OverhaulDistiller,
    attention_map,
    attention_transfer_loss,
    bn_margin,
    overhaul_loss,
    overhaul_margin,
    response_kd_loss,
)

# ---------------------------------------------------------------------------
# response-based KD
# ---------------------------------------------------------------------------


def _softmax_list(row, T):
    e = [math.exp(v / T) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _kd_by_hand(s_logits, t_logits, T):
    total = 0.0
    per_sample = []
    for s_row, t_row in zip(s_logits, t_logits):
        p_s = _softmax_list(s_row, T)
        p_t = _softmax_list(t_row, T)
        kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
        per_sample.append(kl * T * T)
        total += kl
    return total / len(s_logits) * T * T, per_sample


def test_response_kd_matches_explicit_sums():
    s = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [0.5, 0.5, -2.0]]
    for T in (1.0, 4.0, 0.5):
        expected, per_sample = _kd_by_hand(s, t, T)
        got = response_kd_loss(
            torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64), T
        )
        assert got.item() == pytest.approx(expected, rel=1e-12)
        none = response_kd_loss(torch.tensor(s), torch.tensor(t), T, reduction="none")
        assert none.tolist() == pytest.approx(per_sample, rel=1e-5)
        total = response_kd_loss(torch.tensor(s), torch.tensor(t), T, reduction="sum")
        assert total.item() == pytest.approx(sum(per_sample), rel=1e-5)


def test_response_kd_agrees_with_kl_div():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    ref = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean") * 9
    assert torch.allclose(response_kd_loss(s, t, 3.0), ref, atol=1e-6)


@settings(deadline=None, max_examples=30)
@given(
    st.lists(st.floats(-5, 5), min_size=6, max_size=6),
    st.lists(st.floats(-5, 5), min_size=2, max_size=2),
    st.floats(0.5, 8.0),
)
def test_response_kd_properties(values, shifts, T):
    t = torch.tensor(values, dtype=torch.float64).view(2, 3)
    shifted = t + torch.tensor(shifts, dtype=torch.float64).view(2, 1)
    assert response_kd_loss(shifted, t, T).abs().item() < 1e-10  # softmax is shift invariant
    s = t.flip(1)
    assert response_kd_loss(s, t, T).item() >= -1e-12


def test_response_kd_bad_input():
    with pytest.raises(ValueError, match="same number of classes"):
        response_kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        response_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0)
    with pytest.raises(ValueError, match="reduction"):
        response_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg")


# ---------------------------------------------------------------------------
# attention transfer
# ---------------------------------------------------------------------------


def test_attention_map_explicit_formula():
    a = torch.tensor(
        [[[[1.0, -2.0], [0.0, 3.0]], [[2.0, 0.0], [-1.0, 1.0]]]], dtype=torch.float64
    )  # (1, 2, 2, 2)
    # sum over channels of squares, per position: [1+4, 4+0, 0+1, 9+1] = [5, 4, 1, 10]
    q = [5.0, 4.0, 1.0, 10.0]
    norm = math.sqrt(sum(v * v for v in q))
    expected = [v / norm for v in q]
    assert attention_map(a).flatten().tolist() == pytest.approx(expected, rel=1e-12)
    # p = 1: sum of absolute values [3, 2, 1, 4]
    q1 = [3.0, 2.0, 1.0, 4.0]
    n1 = math.sqrt(sum(v * v for v in q1))
    assert attention_map(a, p=1).flatten().tolist() == pytest.approx(
        [v / n1 for v in q1], rel=1e-12
    )


def test_attention_transfer_loss_by_hand():
    g = torch.Generator().manual_seed(1)
    s1, t1 = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 6, 2, 2, generator=g)
    s2, t2 = torch.randn(3, 5, 1, 3, generator=g), torch.randn(3, 2, 1, 3, generator=g)

    def by_hand(s, t):
        total = 0.0
        for i in range(s.shape[0]):
            qs = [
                float((s[i, :, y, x] ** 2).sum())
                for y in range(s.shape[2])
                for x in range(s.shape[3])
            ]
            qt = [
                float((t[i, :, y, x] ** 2).sum())
                for y in range(t.shape[2])
                for x in range(t.shape[3])
            ]
            ns, nt = math.sqrt(sum(v * v for v in qs)), math.sqrt(sum(v * v for v in qt))
            total += sum((a / ns - b / nt) ** 2 for a, b in zip(qs, qt))
        return total / (s.shape[0] * s.shape[2] * s.shape[3])

    expected = by_hand(s1, t1) + by_hand(s2, t2)
    got = attention_transfer_loss([s1, s2], [t1, t2])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert attention_transfer_loss(s1, s1 * 3).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_transfer_bad_input():
    with pytest.raises(ValueError, match="spatial size"):
        attention_transfer_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="stages"):
        attention_transfer_loss([torch.zeros(2, 3, 4, 4)], [torch.zeros(2, 3, 4, 4)] * 2)


# ---------------------------------------------------------------------------
# overhaul: margins, partial L2, distiller
# ---------------------------------------------------------------------------


def _margin_by_hand(mu, sigma):
    a = mu / sigma
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(-a / math.sqrt(2)))
    return mu - sigma * pdf / cdf


def test_margin_closed_form_and_monte_carlo():
    mu = torch.tensor([0.0, 1.0, -0.5, 2.0, -3.0], dtype=torch.float64)
    sigma = torch.tensor([1.0, 0.5, 2.0, 1.5, 0.1], dtype=torch.float64)
    got = overhaul_margin(mu, sigma)
    assert got[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-12)
    for j in range(5):
        assert got[j].item() == pytest.approx(
            _margin_by_hand(mu[j].item(), sigma[j].item()), rel=1e-9
        )
    g = torch.Generator().manual_seed(0)
    samples = mu + sigma * torch.randn(400_000, 5, generator=g, dtype=torch.float64)
    for j in range(5):
        neg = samples[:, j][samples[:, j] < 0]
        assert got[j].item() == pytest.approx(neg.mean().item(), abs=0.01)
    # sign of gamma does not matter; a negative weight is a standard deviation |gamma|
    assert torch.allclose(overhaul_margin(mu, -sigma), got)


def test_margin_extremes_are_finite():
    got = overhaul_margin(
        torch.tensor([40.0, -40.0, 1.0, -1.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    )
    assert torch.isfinite(got).all()
    assert -0.03 < got[0].item() < 0  # E[x | x<0] -> 0- (about -sigma/a)
    assert got[1].item() == pytest.approx(-40.0, rel=1e-3)
    assert got[2].item() == 0.0 and got[3].item() == -1.0  # constant channels


def test_bn_margin_reads_affine_parameters():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    expected = [_margin_by_hand(0.0, 1.0), _margin_by_hand(1.0, 2.0), _margin_by_hand(-1.0, 0.5)]
    assert bn_margin(bn).tolist() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="BatchNorm"):
        bn_margin(nn.Conv2d(3, 3, 1))


def test_partial_l2_hand_made():
    # one sample, one channel, 2x2 positions; margin -1
    s = torch.tensor([[[[0.5, -2.0], [-0.5, 3.0]]]])
    t = torch.tensor([[[[1.0, -3.0], [-2.0, 2.0]]]])
    m = torch.tensor([-1.0])
    # targets max(t, m): [1, -1, -1, 2]
    # pos0: t'=1 > 0 -> (0.5-1)^2 = 0.25 ; pos1: s=-2 <= t'=-1 and t'<=0 -> skipped
    # pos2: s=-0.5 > t'=-1 -> (0.5)^2 = 0.25 ; pos3: t'=2>0 -> 1
    assert overhaul_loss(s, t, m).item() == pytest.approx(1.5)
    # two stages, batch of 2: stage 0 weighted 1/2, divided by the batch size
    s2 = torch.cat([s, s]), torch.cat([s, torch.zeros_like(s)])
    t2 = torch.cat([t, t]), torch.cat([t, t])
    # stage 0: 2 * 1.5 ; stage 1: 1.5 + zeros vs [1,-1,-1,2]: 1 + 0(0>-1 -> 1) ...
    # zeros sample: pos0 (0-1)^2=1, pos1 0>-1 -> 1, pos2 0>-1 -> 1, pos3 4 -> 7
    expected = (3.0 / 2 + (1.5 + 7.0)) / 2
    assert overhaul_loss(list(s2), list(t2), [m, m]).item() == pytest.approx(expected)


def test_partial_l2_bad_input():
    with pytest.raises(ValueError, match="same"):
        overhaul_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="margins"):
        overhaul_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(3))


class _TinyResNet(nn.Module):
    """torchvision's blocks with few channels: stem, four one-block stages, head."""

    def __init__(self, block, num_classes=3, width=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        inplanes = width
        for k, (planes, stride) in enumerate(
            [(width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)]
        ):
            out = planes * block.expansion
            down = None
            if stride != 1 or inplanes != out:
                down = nn.Sequential(
                    nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
                )
            setattr(self, f"layer{k + 1}", nn.Sequential(block(inplanes, planes, stride, down)))
            inplanes = out
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(h.mean((2, 3)))


def _tiny_resnet(block, seed):
    torch.manual_seed(seed)
    net = _TinyResNet(block)
    net.eval()
    # non-trivial BN statistics / affine parameters
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def _pre_relu_by_hand(block, x):
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    identity = x if block.downsample is None else block.downsample(x)
    return out + identity


def _block_input(net, stage, x):
    h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        if name == stage:
            return h
        h = getattr(net, name)(h)
    raise AssertionError


@pytest.mark.parametrize("teacher_block", [BasicBlock, Bottleneck])
def test_distiller_captures_pre_relu_features(teacher_block):
    student = _tiny_resnet(BasicBlock, 0)
    teacher = _tiny_resnet(teacher_block, 1)
    pairs = [(student.layer2[-1], teacher.layer2[-1]), (student.layer4[-1], teacher.layer4[-1])]
    distiller = OverhaulDistiller(student, teacher, pairs)
    assert [p.shape for p in distiller.parameters()] == [
        q.shape for c in distiller.connectors for q in c.parameters()
    ]
    distiller.eval()  # connectors' BN in eval mode: a deterministic function to compare
    teacher.train()  # the distiller runs the teacher in eval mode and restores this
    torch.manual_seed(2)
    x = torch.rand(2, 3, 16, 16)
    out = distiller(x)
    assert teacher.training
    student.eval()
    with torch.no_grad():
        feats_s, feats_t = [], []
        for stage in ("layer2", "layer4"):
            feats_s.append(
                _pre_relu_by_hand(getattr(student, stage)[-1], _block_input(student, stage, x))
            )
            teacher.eval()
            feats_t.append(
                _pre_relu_by_hand(getattr(teacher, stage)[-1], _block_input(teacher, stage, x))
            )
        connected = [c(f) for c, f in zip(distiller.connectors, feats_s)]
        last_bn = "bn3" if teacher_block is Bottleneck else "bn2"
        margins = [
            bn_margin(getattr(getattr(teacher, st_)[-1], last_bn)) for st_ in ("layer2", "layer4")
        ]
        expected = overhaul_loss(connected, feats_t, margins)
        assert torch.allclose(out.loss, expected, rtol=1e-5)
        assert torch.allclose(out.teacher_logits, teacher(x), atol=1e-6)
        assert torch.allclose(out.student_logits, student(x), atol=1e-6)
        # features really are pre-ReLU: some negative entries
        assert (feats_t[0] < 0).any()
    # no hooks left behind
    for m in list(student.modules()) + list(teacher.modules()):
        assert not m._forward_pre_hooks and not m._forward_hooks


def test_distiller_gradients_reach_student_and_connectors():
    student, teacher = _tiny_resnet(BasicBlock, 0), _tiny_resnet(BasicBlock, 1)
    student.train()
    distiller = OverhaulDistiller(student, teacher, [(student.layer3[-1], teacher.layer3[-1])])
    out = distiller(torch.rand(2, 3, 16, 16))
    out.loss.backward()
    assert student.layer3[-1].conv2.weight.grad.abs().sum() > 0
    assert distiller.connectors[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_distiller_bad_layers_and_hook_cleanup():
    student, teacher = _tiny_resnet(BasicBlock, 0), _tiny_resnet(BasicBlock, 1)
    with pytest.raises(ValueError, match="relu"):
        OverhaulDistiller(student, teacher, [(student.layer1, teacher.layer1)])
    with pytest.raises(ValueError, match="not a sub-module"):
        OverhaulDistiller(student, teacher, [(teacher.layer1[-1], teacher.layer1[-1])])
    # spatial mismatch found at forward time; hooks are removed and the mode restored
    distiller = OverhaulDistiller(student, teacher, [(student.layer1[-1], teacher.layer2[-1])])
    with pytest.raises(ValueError, match="spatial"):
        distiller(torch.rand(2, 3, 16, 16))
    for m in list(student.modules()) + list(teacher.modules()):
        assert not m._forward_pre_hooks
    # a forward that raises leaves no hooks either
    with pytest.raises(RuntimeError):
        distiller(torch.rand(2, 5, 16, 16))
    for m in list(student.modules()) + list(teacher.modules()):
        assert not m._forward_pre_hooks
