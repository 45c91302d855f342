"""The generated conclusion: what it states, and where it refuses to conclude."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_unicam.metrics import KDEvaluation, evaluate_kd
from captum_unicam.metrics.conclusion import CHANCE_MARGIN, MIN_BATCHES, headline, text


def iv(mean, low, high):
    return {"mean": mean, "low": low, "high": high}


def entry(sd, sr, rs_s, rs_b, p):
    return {
        "rs_distilled": sd,
        "rs_residual": sr,
        "rs_student": rs_s,
        "rs_base": rs_b,
        "p_student_gt_base": p,
        "n_batches": 8,
    }


def statements(e, accuracies=None, num_classes=10):
    head = headline({"L4": {"none": e}}, ["L4"], "none", accuracies or {}, num_classes, ["none"])
    return head["layers"]["L4"]


def test_clear_case_states_all_three():
    got = statements(
        entry(
            iv(0.582, 0.533, 0.631),
            iv(0.086, 0.022, 0.150),
            iv(0.821, 0.80, 0.84),
            iv(0.718, 0.70, 0.74),
            0.0002,
        )
    )
    assert (
        "Student's features carry label structure that the Base's lack (S_d = 0.582 [0.533, 0.631]"
        in got[0]
    )
    assert (
        "Base's features carry label structure that the Student's lack (S_r = 0.086 [0.022, 0.150]"
        in got[1]
    )
    assert got[2].startswith("the Student's features are more related to the labels")
    assert "p = 0.0002" in got[2]


def test_refuses_where_intervals_include_zero_or_overlap():
    got = statements(
        entry(
            iv(0.05, -0.01, 0.11),
            iv(-0.2, -0.3, -0.1),
            iv(0.5, 0.4, 0.6),
            iv(0.45, 0.35, 0.55),
            0.01,
        )
    )
    assert got[0].startswith("no evidence that the Student's") and "includes 0" in got[0]
    assert "runs against the labels" in got[1] and "below 0" in got[1]
    assert got[2].startswith("no conclusion on RS") and "intervals overlap" in got[2]
    got = statements(
        entry(iv(0.3, 0.2, 0.4), iv(0.0, -0.1, 0.1), iv(0.5, 0.4, 0.6), iv(0.2, 0.1, 0.3), 0.2)
    )
    assert got[2].startswith("no conclusion that the Student")  # p >= 0.05


def test_near_chance_refuses_every_comparison():
    e = entry(
        iv(0.3, 0.2, 0.4), iv(0.1, 0.05, 0.15), iv(0.5, 0.45, 0.55), iv(0.2, 0.15, 0.25), 0.001
    )
    near = {"base": 0.1 + CHANCE_MARGIN - 0.001, "student": 0.9}
    got = statements(e, near, 10)
    assert len(got) == 1 and got[0].startswith(
        "no conclusion: the Base (14.9%, chance 10.0%) is near chance"
    )
    assert len(statements(e, {"base": 0.1 + CHANCE_MARGIN, "student": 0.9}, 10)) == 3
    few = statements(dict(e, n_batches=MIN_BATCHES - 1))
    assert len(few) == 1 and few[0].startswith("no conclusion: 3 batch(es) give no usable interval")
    head = headline(
        {"L4": {"none": e}},
        ["L4"],
        "none",
        {"teacher": 0.95, "base": 0.886, "student": 0.994},
        10,
        ["none", "gradcam"],
    )
    out = text(head)
    assert out.startswith("Accuracy: Teacher 95.0%, Base 88.6%, Student 99.4%.")
    assert (
        "L4 (raw features): The Student's features carry" in out
        and "FSS on masked images is left out" in out
    )


class Oracle(nn.Module):
    """Features: the planted pixels (informative) or other pixels (not)."""

    def __init__(self, informative):
        super().__init__()
        self.informative = informative
        self.layer = nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        c = 0 if self.informative else 1
        return self.head(self.layer(x[:, c, :2, :2].reshape(len(x), -1)))


def test_a_model_near_chance_by_design_is_stated_not_refused():
    e = entry(
        iv(0.3, 0.2, 0.4), iv(0.1, 0.05, 0.15), iv(0.5, 0.45, 0.55), iv(0.2, 0.15, 0.25), 0.001
    )
    acc = {"teacher": 0.98, "base": 0.27, "student": 0.78}
    refused = headline({"L4": {"none": e}}, ["L4"], "none", acc, 4, ["none"])
    assert len(refused["layers"]["L4"]) == 1 and refused["explained"] == []
    why = "it learnt a shortcut the evaluated images do not carry"
    head = headline({"L4": {"none": e}}, ["L4"], "none", acc, 4, ["none"], {"base": why})
    # the same three statements as for a model above chance, and the stated reason
    assert head["layers"]["L4"] == statements(e, {"base": 0.9, "student": 0.78}, 4)
    assert head["near_chance"] == []
    assert head["explained"] == [f"the Base (27.0%, chance 25.0%) is near chance by design: {why}."]
    out = text(head).split("\n\n")
    assert out[1] == f"The Base (27.0%, chance 25.0%) is near chance by design: {why}."
    # a reason for one model does not lift the refusal for another near chance
    both = headline(
        {"L4": {"none": e}}, ["L4"], "none", dict(acc, student=0.26), 4, ["none"], {"base": why}
    )
    assert len(both["layers"]["L4"]) == 1 and "the Student (26.0%" in both["layers"]["L4"][0]


def test_end_to_end_on_models_that_differ():
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
        accuracies={"base": 0.52, "student": 0.99},
    )
    assert res.num_classes == 2 and res.accuracies == {"base": 0.52, "student": 0.99}
    out = res.conclusion()
    assert (
        "No conclusion: the Base (52.0%, chance 50.0%) is near chance" in out
    )  # the Base is near chance
    out = res.conclusion(accuracies={"base": 0.7, "student": 0.99})
    e = res.summary()["by_layer"]["L"]["none"]
    assert f"S_d = {e['rs_distilled']['mean']:.3f}" in out and "above 0" in out
    assert "The Student's features are more related to the labels" in out
    md = res.to_markdown()
    assert md.startswith(
        "**Conclusion.** Accuracy: Base 52.0%, Student 99.0%.\n\nL (raw features): No "
    )
    data = json.loads(res.to_json())
    assert data["headline"]["layers"]["L"] == res.headline()["layers"]["L"]
    assert KDEvaluation.from_json(res.to_json()) == res
    raw = res.to_markdown(layout="raw", headline=False).splitlines()
    assert raw[0].startswith("| Layer | S_d = pdCor(Student, Y; Base) | S_r")
    with pytest.raises(ValueError, match="accuracies must map"):
        evaluate_kd(
            s, {"L": (s.layer, b.layer)}, [(x, y)], base_forward_func=b, accuracies={"base": 88.6}
        )
    with pytest.raises(ValueError, match="map kind 'gradcam'"):
        res.conclusion(kind="gradcam")
