"""evaluate_kd and KDEvaluation: per-batch values against the metric functions, intervals,
permutation tests, serialisation, tables, errors."""

import csv
import io
import itertools
import json
import warnings

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import TinyNet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_unicam.attr.unicam import UniCAM, UniCAMWarning
from captum_unicam.errors import InputError
from captum_unicam.metrics import (
    KDEvaluation,
    evaluate_kd,
    feature_similarity_score,
    relevance_score,
)
from captum_unicam.metrics.intervals import bootstrap_ci, paired_permutation_pvalue
from captum_unicam.output.tables import METRICS


def make_models():
    torch.manual_seed(0)
    return TinyNet(4).eval(), TinyNet(5).eval()


def make_data(n=26, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    y = torch.arange(n) % 3
    masks = torch.ones(n, 1, 16, 16)
    return TensorDataset(x, y, masks)  # items (x, y, mask): only the first two are used


def layers_of(s, b):
    return {"L1": (s.layer1, b.layer1), "L2": (s.layer2, b.layer2)}


EMB = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def evaluation():
    s, b = make_models()
    loader = DataLoader(make_data(), batch_size=6)  # 6, 6, 6, 6, 2: the last one is skipped
    with pytest.warns(UserWarning, match="batch 4 has 2 samples"):
        result = evaluate_kd(
            s,
            layers_of(s, b),
            loader,
            base_forward_func=b,
            label_embeddings=EMB,
            progress=False,
            n_bootstrap=200,
            reference=None,
            aggregation="batch_mean",  # batch-mode maps, the paper's mean over batches
        )
    return s, b, loader, result


# ---------------------------------------------------------------------------
# statistics of the summary
# ---------------------------------------------------------------------------


def test_bootstrap_ci_hand_computation():
    v = np.array([0.1, 0.4, 0.2, 0.9, 0.3])
    lo, hi = bootstrap_ci(v, n_bootstrap=500, seed=7)
    rng = np.random.default_rng(7)
    means = [
        v[rng.integers(0, 5, size=(1, 5))[0]].mean() for _ in range(500)
    ]  # one resample at a time
    want = np.quantile(np.array(means), [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(want), abs=1e-15)
    assert v.min() <= lo <= v.mean() <= hi <= v.max()
    assert bootstrap_ci([0.3], 100, 0) == (0.3, 0.3)
    assert bootstrap_ci(v, 500, 7) == (lo, hi)  # deterministic


def test_permutation_pvalue_exact_enumeration():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=6), rng.normal(size=6)
    d = a - b
    flips = [
        np.mean(np.array(s) * d) >= d.mean() - 1e-12 for s in itertools.product([-1, 1], repeat=6)
    ]
    assert paired_permutation_pvalue(a, b, n_permutations=10000) == pytest.approx(
        np.mean(flips), abs=1e-15
    )
    # Student >> Base on every batch: only the identity pattern is as extreme
    assert paired_permutation_pvalue(a + 10, a, 10000) == pytest.approx(2**-6)
    # Student == Base: every pattern ties, p = 1
    assert paired_permutation_pvalue(a, a, 10000) == 1.0
    # Student << Base: p = 1 (one-sided)
    assert paired_permutation_pvalue(a, a + 10, 10000) == 1.0


def test_permutation_pvalue_monte_carlo():
    rng = np.random.default_rng(1)
    a = rng.normal(size=20)
    b = a - 0.5 - 0.1 * rng.normal(size=20)  # Student clearly above Base
    p = paired_permutation_pvalue(a, b, n_permutations=2000, seed=3)
    signs = np.random.default_rng(3).choice(np.array([-1.0, 1.0]), size=(2000, 20))
    d = a - b
    want = (1 + np.sum((signs * d).mean(1) >= d.mean() - 1e-9 * np.abs(d).mean())) / 2001
    assert p == pytest.approx(want, abs=1e-15)
    assert p < 0.001
    noise = paired_permutation_pvalue(rng.normal(size=20), rng.normal(size=20), 2000, seed=3)
    assert 0.01 < noise < 0.99
    assert paired_permutation_pvalue(a, a, 2000) == 1.0


# ---------------------------------------------------------------------------
# evaluate_kd values
# ---------------------------------------------------------------------------


def test_per_batch_values_equal_metric_functions(evaluation):
    s, b, loader, result = evaluation
    assert result.batch_indices == [0, 1, 2, 3] and result.batch_sizes == [6] * 4
    assert result.skipped_batches == [4]
    assert result.layers == ["L1", "L2"] and result.map_kinds == [
        "none",
        "gradcam",
        "distilled",
        "residual",
    ]
    checked = 0
    for i, (x, y, _) in enumerate(loader):
        if i not in (0, 3):
            continue
        for name, (sl, bl) in layers_of(s, b).items():
            cam_s = LayerGradCam(s, sl).attribute(x, target=y, relu_attributions=True)
            cam_b = LayerGradCam(b, bl).attribute(x, target=y, relu_attributions=True)
            dist, res = UniCAM(s, sl, b, bl, label_embeddings=EMB).attribute(
                x, target=y, features="both"
            )
            maps = {"none": None, "gradcam": (cam_s, cam_b), "distilled": dist, "residual": res}
            for kind, attr in maps.items():
                pair = attr if isinstance(attr, tuple) else (attr, attr)
                want = {
                    "fss": feature_similarity_score(
                        s, sl, x, base_forward_func=b, base_layer=bl, attributions=attr
                    ),
                    "rs_student": relevance_score(
                        s, sl, x, target=y, label_embeddings=EMB, attributions=pair[0]
                    ),
                    "rs_base": relevance_score(
                        b, bl, x, target=y, label_embeddings=EMB, attributions=pair[1]
                    ),
                    "rs_distilled": relevance_score(
                        s,
                        sl,
                        x,
                        target=y,
                        label_embeddings=EMB,
                        base_forward_func=b,
                        base_layer=bl,
                        attributions=attr,
                    ),
                    "rs_residual": relevance_score(
                        b,
                        bl,
                        x,
                        target=y,
                        label_embeddings=EMB,
                        base_forward_func=s,
                        base_layer=sl,
                        attributions=attr if attr is None else (pair[1], pair[0]),
                    ),
                }
                pos = result.batch_indices.index(i)
                for m in METRICS:
                    got = result.values[name][kind][m][pos]
                    assert got == pytest.approx(float(want[m]), abs=1e-9), (name, kind, m)
                    checked += 1
    assert checked == 2 * 2 * 4 * 5
    # the maps really differ between kinds
    v = result.values["L2"]
    assert len({round(v[k]["fss"][0], 8) for k in result.map_kinds}) == 4


def test_summary_matches_hand_computation(evaluation):
    _, _, _, result = evaluation
    summ = result.summary()
    e = summ["by_layer"]["L2"]["gradcam"]
    v = np.array(result.values["L2"]["gradcam"]["rs_student"])
    assert e["rs_student"]["mean"] == pytest.approx(v.mean(), abs=1e-15)
    assert (e["rs_student"]["low"], e["rs_student"]["high"]) == bootstrap_ci(v, 200, 0)
    assert e["p_student_gt_base"] == paired_permutation_pvalue(
        v, result.values["L2"]["gradcam"]["rs_base"], 10000, 0
    )
    assert e["n_batches"] == 4
    rows = [r for r in summ["rows"] if r["layer"] == "L2" and r["map"] == "gradcam"]
    assert [r["key"] for r in rows] == list(METRICS)
    assert (
        rows[2]["series"] == "Student"
        and rows[2]["metric"] == "RS"
        and rows[2]["p"] == e["p_student_gt_base"]
    )
    assert rows[0]["metric"] == "FSS" and rows[0]["low"] == e["fss"]["low"]
    assert len(summ["rows"]) == 2 * 4 * 5


def test_json_round_trip(evaluation, tmp_path):
    _, _, _, result = evaluation
    path = tmp_path / "sub" / "metrics.json"
    text = result.to_json(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no temporary left
    back = KDEvaluation.from_json(path)
    assert back == result
    assert KDEvaluation.from_json(text) == result
    data = json.loads(path.read_text())
    assert data["summary"] == json.loads(json.dumps(result.summary()))
    assert (
        data["settings"]["label_embeddings"] == "table 3x6" and data["settings"]["estimator"] == "u"
    )
    with pytest.raises(ValueError, match="not a KDEvaluation"):
        KDEvaluation.from_json('{"format": "other"}')


def test_markdown_and_csv_layout(evaluation, tmp_path):
    _, _, _, result = evaluation
    md = result.to_markdown(tmp_path / "table1.md", headline=False)
    lines = md.splitlines()
    assert lines[0] == (
        "| Layer | Map | FSS | RS Base | RS Student | RS distilled | RS residual | p (Student > Base) "
        "| FSS leakage | RS Base leakage | RS Student leakage |"
    )
    body = [line for line in lines[2:] if line.startswith("|")]
    assert len(body) == 8
    assert [c.strip() for c in body[0].strip("|").split("|")][:2] == ["L1", "raw features"]
    assert [c.strip() for c in body[5].strip("|").split("|")][:2] == ["L2", "Grad-CAM"]
    e = result.summary()["by_layer"]["L2"]["gradcam"]["fss"]
    cell = [c.strip() for c in body[5].strip("|").split("|")][2]
    assert cell == f"{e['mean']:.4f} ± {(e['high'] - e['low']) / 2:.4f}"
    assert (tmp_path / "table1.md").read_text() == md

    text = result.to_csv(tmp_path / "table1.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 8 and rows[0]["layer"] == "L1" and rows[0]["map"] == "none"
    r = rows[5]
    assert (r["layer"], r["map"]) == ("L2", "gradcam")
    assert float(r["fss_mean"]) == e["mean"] and float(r["fss_ci_low"]) == e["low"]
    assert list(rows[0])[-2:] == ["p_student_gt_base", "p_distilled_gt_residual"]
    assert (tmp_path / "table1.csv").read_text() == text


def test_subset_of_kinds_v_estimator_and_modes():
    s, b = make_models()
    s.train()
    loader = DataLoader(make_data(12), batch_size=6)
    with pytest.warns(UserWarning, match="training mode"):
        res = evaluate_kd(
            s,
            {"L2": (s.layer2, b.layer2)},
            [(x, y) for x, y, _ in loader],
            base_forward_func=b,
            maps=("none",),
            estimator="v",
            progress=False,
        )
    assert s.training and not b.training  # modes untouched
    s.eval()
    x, y, _ = next(iter(loader))
    want = feature_similarity_score(
        s, s.layer2, x, base_forward_func=b, base_layer=b.layer2, estimator="v"
    )
    assert res.values["L2"]["none"]["fss"][0] == pytest.approx(float(want), abs=1e-9)
    assert res.map_kinds == ["none"] and res.settings["label_embeddings"] == "one-hot"
    for m in list(s.modules()) + list(b.modules()):
        assert not m._forward_hooks and not m._backward_hooks


def test_value_errors():
    s, b = make_models()
    data = make_data(12)
    loader = DataLoader(data, batch_size=6)
    lay = layers_of(s, b)

    def run(**kw):
        args = dict(forward_func=s, base_forward_func=b, data=loader, layers=lay, progress=False)
        args.update(kw)
        return evaluate_kd(**args)

    with pytest.raises(
        InputError, match="batch 0: target holds class index 3, but the models have 3 outputs"
    ):
        run(
            data=[(torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1]))],
            label_embeddings=torch.randn(3, 4),
        )
    with pytest.raises(InputError, match="batch 0: inputs contain NaN"):
        run(data=[(torch.full((6, 3, 16, 16), float("nan")), torch.arange(6) % 3)])
    with pytest.raises(InputError, match="at least 5"):
        run(data=DataLoader(data, batch_size=4), small_batches="error")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="no batch could be scored"):
            run(data=DataLoader(data, batch_size=4))
    with pytest.raises(InputError, match="maps must be"):
        run(maps=("gradcam", "unicam"))
    with pytest.raises(InputError, match="perturbation=None scores raw features only"):
        run(perturbation=None, maps=("gradcam",))
    with pytest.raises(InputError, match="perturbation must be"):
        run(perturbation="blur")
    with pytest.raises(ValueError, match="not a module of the student"):
        run(layers={"L1": (b.layer1, b.layer1)})
    with pytest.raises(ValueError, match="non-empty mapping"):
        run(layers={})
    with pytest.raises(ValueError, match="estimator"):
        run(estimator="x")
    with pytest.raises(ValueError, match="n_bootstrap"):
        run(n_bootstrap=0)
    with pytest.raises(ValueError, match="label_embeddings contain NaN"):
        run(label_embeddings=torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\(inputs, target"):
        run(data=[torch.rand(6, 3, 16, 16)])
    for m in list(s.modules()) + list(b.modules()):
        assert not m._forward_hooks and not m._backward_hooks


def test_student_much_better_than_base_gives_small_p():
    """A Student whose features carry the label and a Base whose features do not."""

    class Oracle(nn.Module):
        def __init__(self, informative):
            super().__init__()
            self.informative = informative
            self.layer = nn.Identity()

        def forward(self, x):
            feats = x[:, 0, :2, :2].reshape(len(x), -1)  # label planted in these pixels
            if not self.informative:
                feats = x[:, 1, :2, :2].reshape(len(x), -1)
            return self.layer(feats)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 2, 4, 4, generator=g)
    y = torch.arange(48) % 2
    x[:, 0, :2, :2] += 3.0 * y.view(-1, 1, 1).float()
    s, b = Oracle(True).eval(), Oracle(False).eval()
    res = evaluate_kd(
        s,
        {"L": (s.layer, b.layer)},
        DataLoader(TensorDataset(x, y), batch_size=8),
        base_forward_func=b,
        maps=("none",),
        progress=False,
    )
    e = res.summary()["by_layer"]["L"]["none"]
    assert e["rs_student"]["mean"] > 0.5 > 0.1 > e["rs_base"]["mean"]
    assert e["p_student_gt_base"] == pytest.approx(2**-6)
    assert e["p_distilled_gt_residual"] == pytest.approx(2**-6)
    with pytest.warns(
        UniCAMWarning, match="same distance structure"
    ):  # one warning for all batches
        same = evaluate_kd(
            s,
            {"L": (s.layer, s.layer)},
            DataLoader(TensorDataset(x, y), batch_size=8),
            base_forward_func=s,
            maps=("none",),
            progress=False,
        )
    assert same.degenerate_values == {"L/none/rs_distilled": 6, "L/none/rs_residual": 6}
    assert same.summary()["by_layer"]["L"]["none"]["p_student_gt_base"] == 1.0


def test_paper_layout(evaluation):
    _, _, _, result = evaluation
    md = result.to_markdown(layout="paper", headline=False)
    lines = md.splitlines()
    assert (
        lines[0]
        == "| Layer | Layer-specific: Base | Layer-specific: Student | Residual: Base | Distilled: Student |"
    )
    s = result.summary()["by_layer"]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells[0] == "L2"
    for cell, (k, m) in zip(
        cells[1:],
        [
            ("gradcam", "rs_base"),
            ("gradcam", "rs_student"),
            ("residual", "rs_base"),
            ("distilled", "rs_student"),
        ],
    ):
        assert cell.startswith(f"{s['L2'][k][m]['mean']:.4f} ± ")
    rows = list(csv.DictReader(io.StringIO(result.to_csv(layout="paper"))))
    assert [r["layer"] for r in rows] == ["L1", "L2"]
    assert float(rows[0]["distilled_rs_student_mean"]) == s["L1"]["distilled"]["rs_student"]["mean"]
    assert float(rows[1]["residual_rs_base_ci_high"]) == s["L2"]["residual"]["rs_base"]["high"]
    partial = KDEvaluation(
        result.layers,
        ["none"],
        {layer: {"none": result.values[layer]["none"]} for layer in result.layers},
        result.batch_indices,
        result.batch_sizes,
    )
    with pytest.raises(ValueError, match="needs the map kinds"):
        partial.to_markdown(layout="paper")
    with pytest.raises(ValueError, match="layout"):
        result.to_csv(layout="wide")


def test_random_perturbation_is_seeded_per_batch():
    """road_impute's noise is drawn from (seed, batch index): reproducible, caller's RNG kept."""
    from captum_unicam.perturb import road_impute

    s, b = make_models()
    batches = [(x, y) for x, y, _ in DataLoader(make_data(12), batch_size=6)]
    run = lambda data, seed=0: evaluate_kd(  # noqa: E731
        s,
        {"L1": (s.layer1, b.layer1)},
        data,
        base_forward_func=b,
        maps=("gradcam",),
        perturbation=road_impute,
        seed=seed,
        progress=False,
    )
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = run(batches)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    torch.rand(5)  # whatever the global state, the values are the same
    assert run(batches).values == first.values
    other = run(batches, seed=1).values["L1"]["gradcam"]["rs_student"]
    assert other != first.values["L1"]["gradcam"]["rs_student"]  # the noise is really random
    # batch 1's values depend on its index, not on batch 0 having run first
    with pytest.warns(UserWarning, match="batch 0 has 0 samples"):
        alone = run([(batches[0][0][:0], batches[0][1][:0]), batches[1]])
    assert alone.values["L1"]["gradcam"]["fss"] == first.values["L1"]["gradcam"]["fss"][1:]


@settings(deadline=None, max_examples=40)
@given(
    d=st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=9),
    seed=st.integers(0, 100),
)
def test_permutation_and_bootstrap_properties(d, seed):
    d = np.array(d)
    zeros = np.zeros_like(d)
    p_up, p_down = (
        paired_permutation_pvalue(d, zeros, 1000, seed),
        paired_permutation_pvalue(zeros, d, 1000, seed),
    )
    assert 2.0 ** -len(d) - 1e-15 <= p_up <= 1.0
    assert p_up + p_down >= 1.0 - 1e-12  # the sign-flip distribution is symmetric
    lo, hi = bootstrap_ci(d, 200, seed)
    assert d.min() - 1e-12 <= lo <= hi <= d.max() + 1e-12
