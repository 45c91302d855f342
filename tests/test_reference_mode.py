"""Reference mode: each input scored with a fixed reference set alone (n = 1 + m).

Oracles: batch mode with the reference set as context (each input explained on its own,
an independent code path: one joint forward pass, one n x n problem), dcor for the
scores, and the call itself on other batchings of the same inputs.
"""

from __future__ import annotations

import dcor
import pytest
import torch
from captum.metrics import sensitivity_max
from hypothesis import given, settings
from hypothesis import strategies as st
from test_unicam_common import SmallResNet, TinyViT, all_hooks, batch, make, one_hot, tokens_to_grid

from captum_unicam.attr import UniCAM
from captum_unicam.errors import InputError


@pytest.fixture(scope="module")
def setting():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, _ = batch(16, seed=4)
    ref_x, ref_y = batch(10, seed=5)  # classes 0..3, repeated
    y = torch.arange(16) % 4
    return student, base, x, y, ref_x, ref_y


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-6) -> None:
    scale = float(b.abs().max())
    assert scale > 0, "degenerate oracle: all-zero map"
    assert float((a - b).abs().max()) <= rel * scale


def test_each_map_equals_its_own_call_and_batch_mode_with_context(setting):
    student, base, x, y, ref_x, ref_y = setting
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x, ref_y))
    plain = UniCAM(student, student.layer2, base, base.layer2)
    (d, r), (s_d, s_r) = unicam.attribute(
        x, target=y, features="both", relu_attributions=False, return_score=True
    )
    assert d.shape == (16, 1, 4, 4) and s_d.shape == (16,) and s_r.shape == (16,)
    for i in range(16):
        di, ri = unicam.attribute(
            x[i : i + 1], target=y[i : i + 1], features="both", relu_attributions=False
        )
        _close(d[i : i + 1], di)
        _close(r[i : i + 1], ri)
        (bd, br), (bs_d, bs_r) = plain.attribute(
            x[i : i + 1],
            target=y[i : i + 1],
            features="both",
            relu_attributions=False,
            context=(ref_x, ref_y),
            return_score=True,
        )
        _close(d[i : i + 1], bd)
        _close(r[i : i + 1], br)
        assert float(s_d[i]) == pytest.approx(float(bs_d), abs=1e-10)
        assert float(s_r[i]) == pytest.approx(float(bs_r), abs=1e-10)
    assert all_hooks(student, base) == 0


def test_scores_equal_dcor_on_input_plus_reference(setting):
    student, base, x, y, ref_x, ref_y = setting
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x, ref_y))
    s_d, s_r = unicam.score(x[:5], target=y[:5])
    with torch.no_grad():
        joint = torch.cat([x[:5], ref_x])
        f_s = student.layer2(student.layer1_out(joint)).flatten(1).numpy()
        f_b = base.layer2(base.layer1_out(joint)).flatten(1).numpy()
    labels = one_hot(torch.cat([y[:5], ref_y])).numpy()
    rows = list(range(5, 15))
    for i in range(5):
        keep = [i] + rows
        exp_d = dcor.partial_distance_correlation(f_s[keep], labels[keep], f_b[keep])
        exp_r = dcor.partial_distance_correlation(f_b[keep], labels[keep], f_s[keep])
        assert float(s_d[i]) == pytest.approx(exp_d, abs=1e-9)
        assert float(s_r[i]) == pytest.approx(exp_r, abs=1e-9)


@settings(max_examples=5, deadline=None)
@given(perm=st.permutations(list(range(16))), cut=st.integers(1, 15))
def test_permuting_or_splitting_the_batch_changes_nothing(setting, perm, cut):
    student, base, x, y, ref_x, ref_y = setting
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x, ref_y))
    d, r = unicam.attribute(x, target=y, features="both", relu_attributions=False)
    p = torch.tensor(perm)
    dp, rp = unicam.attribute(x[p], target=y[p], features="both", relu_attributions=False)
    _close(dp, d[p], rel=1e-9)
    _close(rp, r[p], rel=1e-9)
    parts = [
        unicam.attribute(x[s], target=y[s], relu_attributions=False)
        for s in (slice(0, cut), slice(cut, 16))
    ]
    _close(torch.cat(parts), d, rel=1e-9)


def test_batch_of_one_and_per_call_reference(setting):
    student, base, x, y, ref_x, ref_y = setting
    cached = UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x, ref_y))
    plain = UniCAM(student, student.layer2, base, base.layer2)
    one = cached.attribute(x[:1], target=y[:1], relu_attributions=False)
    assert one.shape == (1, 1, 4, 4)
    _close(
        plain.attribute(x[:1], target=y[:1], relu_attributions=False, reference=(ref_x, ref_y)),
        one,
        rel=1e-12,
    )
    s = plain.score(x[:3], target=y[:3], reference=(ref_x, ref_y))
    t = cached.score(x[:3], target=y[:3])
    assert torch.allclose(s[0], t[0], atol=1e-12) and torch.allclose(s[1], t[1], atol=1e-12)


def test_feature_layer_and_transform_in_reference_mode(setting):
    student, base, x, y, ref_x, ref_y = setting
    kwargs = dict(student_feature_layer=student.layer2, base_feature_layer=base.layer2)
    unicam = UniCAM(student, student.layer1, base, base.layer1, reference=(ref_x, ref_y), **kwargs)
    plain = UniCAM(student, student.layer1, base, base.layer1, **kwargs)
    d, r = unicam.attribute(x[:3], target=y[:3], features="both", relu_attributions=False)
    for i in range(3):
        bd, br = plain.attribute(
            x[i : i + 1],
            target=y[i : i + 1],
            features="both",
            relu_attributions=False,
            context=(ref_x, ref_y),
        )
        _close(d[i : i + 1], bd)
        _close(r[i : i + 1], br)
    vs, vb = make(TinyViT, 3), make(TinyViT, 4)
    kw = dict(reshape_transform=tokens_to_grid)
    vit = UniCAM(vs, vs.block1, vb, vb.block1, reference=(ref_x, ref_y), **kw)
    vit_plain = UniCAM(vs, vs.block1, vb, vb.block1, **kw)
    got = vit.attribute(x[:2], target=y[:2], relu_attributions=False)
    for i in range(2):
        _close(
            got[i : i + 1],
            vit_plain.attribute(
                x[i : i + 1], target=y[i : i + 1], relu_attributions=False, context=(ref_x, ref_y)
            ),
        )


def test_sensitivity_max_identity_is_exactly_zero(setting):
    student, base, x, y, ref_x, ref_y = setting
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x, ref_y))
    sens = sensitivity_max(
        unicam.attribute,
        x[:4],
        perturb_func=lambda inputs, perturb_radius=0.0: inputs,
        target=y[:4],
        n_perturb_samples=3,
    )
    assert torch.equal(sens, torch.zeros_like(sens))


def test_reference_errors(setting):
    student, base, x, y, ref_x, ref_y = setting
    with pytest.raises(InputError, match="at least 4"):
        UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x[:3], ref_y[:3]))
    with pytest.raises(InputError, match="ref_inputs, ref_target"):
        UniCAM(student, student.layer2, base, base.layer2, reference=ref_x)
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x, ref_y))
    with pytest.raises(InputError, match="cannot be combined"):
        unicam.attribute(x[:2], target=y[:2], context=(ref_x, ref_y))
    assert all_hooks(student, base) == 0
