"""The dataset-level estimator against dcor, its intervals and swap test, and its independence
of the batching; reference-mode maps in evaluate_kd."""

import itertools
import warnings

import dcor
import numpy as np
import pytest
import torch
from tiny_models import TinyNet
from torch.utils.data import DataLoader, TensorDataset

from captum_unicam.attr.unicam import UniCAM
from captum_unicam.metrics import evaluate_kd, feature_similarity_score, relevance_score
from captum_unicam.metrics._features import layer_features
from captum_unicam.metrics.estimators import scores_from_products, swap_models
from captum_unicam.metrics.intervals import (
    bootstrap_ci,
    bootstrap_statistic,
    paired_permutation_pvalue,
    swap_permutation_pvalue,
)
from captum_unicam.output.tables import METRICS

EMB = torch.randn(3, 5, generator=torch.Generator().manual_seed(5))


def models():
    torch.manual_seed(0)
    return TinyNet(4).eval(), TinyNet(5).eval()


def signal_data(n=192, seed=3):
    """Images whose channels carry the class, so that every statistic is far from 0."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 3, 8, 8, generator=g)
    x[:, 0] += 0.8 * (y == 1).float().view(-1, 1, 1)
    x[:, 1, :4] += 0.8 * (y == 2).float().view(-1, 1, 1)
    return x, y


def labels_of(y):
    return torch.nn.functional.one_hot(y, 3).double().numpy()


def run(s, b, data, **kw):
    opts = dict(progress=False, n_bootstrap=300, n_permutations=2000)
    opts.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_kd(
            s,
            {"L1": (s.layer1, b.layer1), "L2": (s.layer2, b.layer2)},
            data,
            base_forward_func=b,
            **opts,
        )


def test_one_batch_equals_dcor_on_the_whole_set():
    s, b = models()
    x, y = signal_data(40)
    res = run(s, b, [(x, y)], maps=("none",))
    summ = res.summary(aggregation="dataset")["by_layer"]
    for name, (sl, bl) in {"L1": (s.layer1, b.layer1), "L2": (s.layer2, b.layer2)}.items():
        fs, fb = layer_features(s, sl, x).numpy(), layer_features(b, bl, x).numpy()
        lab = labels_of(y)
        want = {
            "fss": dcor.u_distance_correlation_sqr(fs, fb),
            "rs_base": dcor.u_distance_correlation_sqr(fb, lab),
            "rs_student": dcor.u_distance_correlation_sqr(fs, lab),
            "rs_distilled": dcor.partial_distance_correlation(fs, lab, fb),
            "rs_residual": dcor.partial_distance_correlation(fb, lab, fs),
        }
        for m in METRICS:
            e = summ[name]["none"][m]
            assert e["mean"] == pytest.approx(want[m], abs=1e-10), (name, m)
            assert e["low"] == e["high"] == e["mean"]  # one batch: no interval
            # and the per-batch value is the same number
            assert res.values[name]["none"][m][0] == pytest.approx(want[m], abs=1e-10)


def test_dataset_estimate_is_the_ratio_of_averaged_dcor_covariances():
    s, b = models()
    x, y = signal_data(60)
    batches = [(x[i : i + 15], y[i : i + 15]) for i in range(0, 60, 15)]
    res = run(s, b, batches, maps=("none",))
    e = res.summary(aggregation="dataset")["by_layer"]["L2"]["none"]
    cov = {k: [] for k in ("ss", "bb", "yy", "sb", "sy", "by")}
    for xb, yb in batches:
        f = {
            "s": layer_features(s, s.layer2, xb).numpy(),
            "b": layer_features(b, b.layer2, xb).numpy(),
            "y": labels_of(yb),
        }
        for k in cov:
            cov[k].append(dcor.u_distance_covariance_sqr(f[k[0]], f[k[1]]))
    m = {k: np.mean(v) for k, v in cov.items()}
    assert e["fss"]["mean"] == pytest.approx(m["sb"] / np.sqrt(m["ss"] * m["bb"]), abs=1e-10)
    assert e["rs_student"]["mean"] == pytest.approx(m["sy"] / np.sqrt(m["ss"] * m["yy"]), abs=1e-10)
    num = m["sy"] - m["sb"] * m["by"] / m["bb"]
    den = np.sqrt((m["ss"] - m["sb"] ** 2 / m["bb"]) * (m["yy"] - m["by"] ** 2 / m["bb"]))
    assert e["rs_distilled"]["mean"] == pytest.approx(num / den, abs=1e-10)
    # the stored products are dcor's, batch by batch
    assert res.products["L2"]["none"]["sy"] == pytest.approx(cov["sy"], abs=1e-10)
    # the interval: the bootstrap of bootstrap_ci (same resamples), applied to the products
    rows = np.stack([np.array(cov[k]) for k in ("ss", "bb", "yy", "sb", "sy", "by")], axis=1)
    want = bootstrap_statistic(
        rows, lambda r: scores_from_products(r.mean(1))["rs_student"], 300, 0
    )
    assert (e["rs_student"]["low"], e["rs_student"]["high"]) == pytest.approx(
        (want["low"], want["high"]), abs=1e-12
    )
    # the swap test, enumerated by hand: 2^4 patterns of swapping Student and Base per batch
    diffs = []
    for signs in itertools.product([1, -1], repeat=4):
        r = np.array([row if sg > 0 else swap_models(row) for row, sg in zip(rows, signs)]).mean(0)
        sc = scores_from_products(r)
        diffs.append(sc["rs_student"] - sc["rs_base"])
    want_p = np.mean(np.array(diffs) >= diffs[0] - 1e-9 * np.abs(diffs).mean())
    assert e["p_student_gt_base"] == pytest.approx(want_p, abs=1e-15)


def test_bootstrap_statistic_of_the_mean_is_bootstrap_ci():
    v = np.array([0.1, 0.4, 0.2, 0.9, 0.3])
    got = bootstrap_statistic(v[:, None], lambda r: r[..., 0].mean(-1), 500, 7)
    assert (got["low"], got["high"]) == bootstrap_ci(v, 500, 7)
    d = np.array([0.3, -0.1, 0.2, 0.5])
    p = swap_permutation_pvalue(lambda sg: (sg * d).mean(1), 4, 100, tol=1e-9 * np.abs(d).mean())
    assert p == paired_permutation_pvalue(d, np.zeros(4), 100)


def test_batch_sizes_and_orders_agree_within_the_intervals():
    """Batches of 16 / 32 / 64 in file order and shuffled: every pair of dataset estimates has
    overlapping intervals, and the raw-feature interval of each batching covers the exact
    whole-set value (dcor on the 192 concatenated images)."""
    s, b = models()
    x, y = signal_data(192)
    ds = TensorDataset(x, y)
    ref = (x[:24], y[:24])  # one reference set: the UniCAM maps do not depend on the batching
    loaders = {bs: DataLoader(ds, batch_size=bs) for bs in (16, 32, 64)}
    loaders["32 shuffled"] = DataLoader(
        ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    loaders["16 shuffled"] = DataLoader(
        ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(2)
    )
    results = {
        k: run(s, b, v, maps=("none", "gradcam", "distilled"), reference=ref)
        for k, v in loaders.items()
    }
    whole = run(s, b, [(x, y)], maps=("none",)).summary()["by_layer"]
    summaries = {k: r.summary()["by_layer"] for k, r in results.items()}
    for layer, kind, m in itertools.product(
        ("L1", "L2"), ("none", "gradcam", "distilled"), METRICS
    ):
        entries = {k: summ[layer][kind][m] for k, summ in summaries.items()}
        for (ka, a), (kb, c) in itertools.combinations(entries.items(), 2):
            assert a["low"] <= c["high"] and c["low"] <= a["high"], (layer, kind, m, ka, kb)
    covered = [
        summ[layer]["none"][m]["low"]
        <= whole[layer]["none"][m]["mean"]
        <= summ[layer]["none"][m]["high"]
        for summ in summaries.values()
        for layer in ("L1", "L2")
        for m in METRICS
    ]
    assert all(covered)


def test_reference_mode_maps_equal_unicam_with_that_reference():
    s, b = models()
    x, y = signal_data(24, seed=4)
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    res = run(s, b, batches, maps=("distilled", "residual"), label_embeddings=EMB, leakage=False)
    assert res.settings["reference"].endswith(": 24 images")  # all 24 (at most 11 per class)
    ref = (x, y)  # auto: the first images, class-stratified, in data order
    xb, yb = batches[1]
    dist, resid = UniCAM(s, s.layer2, b, b.layer2, label_embeddings=EMB, reference=ref).attribute(
        xb, target=yb, features="both"
    )
    for kind, h in (("distilled", dist), ("residual", resid)):
        fss = feature_similarity_score(
            s, s.layer2, xb, base_forward_func=b, base_layer=b.layer2, attributions=h
        )
        rs = relevance_score(s, s.layer2, xb, target=yb, label_embeddings=EMB, attributions=h)
        assert res.values["L2"][kind]["fss"][1] == pytest.approx(float(fss), abs=1e-9)
        assert res.values["L2"][kind]["rs_student"][1] == pytest.approx(float(rs), abs=1e-9)
    # a map does not depend on its batch-mates: the same images in other batches, the same maps
    other = run(
        s,
        b,
        [(x[12:18], y[12:18]), (x[18:], y[18:])],
        maps=("distilled",),
        leakage=False,
        label_embeddings=EMB,
        reference=ref,
    )
    single = UniCAM(s, s.layer2, b, b.layer2, label_embeddings=EMB, reference=ref).attribute(
        x[12:18], target=y[12:18], features="distilled"
    )
    assert torch.allclose(single, dist[:6], atol=1e-12)
    fss = feature_similarity_score(
        s, s.layer2, x[12:18], base_forward_func=b, base_layer=b.layer2, attributions=single
    )
    assert other.values["L2"]["distilled"]["fss"][0] == pytest.approx(float(fss), abs=1e-9)


def test_reference_errors():
    s, b = models()
    x, y = signal_data(12)
    with pytest.raises(ValueError, match="reference must be"):
        run(s, b, [(x, y)], reference="first")
    with pytest.raises(ValueError, match="labels carry no information"):
        run(
            s,
            b,
            [(x, torch.zeros(12, dtype=torch.long))],
            maps=("distilled",),
            label_embeddings=None,
        )
    with pytest.raises(ValueError, match="aggregation must be"):
        run(s, b, [(x, y)], aggregation="mean")


def test_v_estimator_dataset_value_is_the_v_statistic_on_one_batch():
    s, b = models()
    x, y = signal_data(30)
    res = run(s, b, [(x, y)], maps=("none",), estimator="v")
    e = res.summary()["by_layer"]["L2"]["none"]
    fs, fb = layer_features(s, s.layer2, x).numpy(), layer_features(b, b.layer2, x).numpy()
    assert e["fss"]["mean"] == pytest.approx(dcor.distance_correlation_sqr(fs, fb), abs=1e-10)
    assert e["rs_base"]["mean"] == pytest.approx(
        dcor.distance_correlation_sqr(fb, labels_of(y)), abs=1e-10
    )
    # the partial correlations stay the bias-corrected ones
    want = dcor.partial_distance_correlation(fs, labels_of(y), fb)
    assert e["rs_distilled"]["mean"] == pytest.approx(want, abs=1e-10)
