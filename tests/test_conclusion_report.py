"""Reports open with the sanity check and the generated conclusion; every warning of a run,
the evaluated classes and the leakage mark reach index.html and metrics.json."""

import json
import re

import numpy as np
import pytest
import torch

from captum_unicam import cli
from captum_unicam.metrics import KDEvaluation
from captum_unicam.models import build_model, save_checkpoint
from captum_unicam.output import report
from captum_unicam.pipeline import evaluation

CLASSES = ["circle", "square", "triangle", "cross"]
METRICS = ("fss", "rs_base", "rs_student", "rs_distilled", "rs_residual")


def _evaluation(kinds=("none", "gradcam")):
    """A KDEvaluation of controlled per-batch values (8 batches): at L4 the Student's
    unique part is clearly above 0 (S_d ~ 0.5), the Base's is 0 +- 0.01, RS Student 0.8 >>
    RS Base 0.3."""
    rng = np.random.default_rng(0)
    centre = {
        "fss": 0.6,
        "rs_base": 0.3,
        "rs_student": 0.8,
        "rs_distilled": 0.5,
        "rs_residual": 0.0,
    }
    vals = {
        "L4": {
            k: {m: list(centre[m] + 0.01 * rng.standard_normal(8)) for m in METRICS} for k in kinds
        }
    }
    return KDEvaluation(
        layers=["L4"],
        map_kinds=list(kinds),
        values=vals,
        batch_indices=list(range(8)),
        batch_sizes=[16] * 8,
        settings={"n_bootstrap": 200, "n_permutations": 2000, "seed": 0},
        num_classes=4,
    )


MODELS = {
    "Teacher": {"arch": "t", "accuracy": 0.95},
    "Base": {"arch": "b", "accuracy": 0.70},
    "Student": {"arch": "s", "accuracy": 0.85},
}
ACC = {"teacher": 0.95, "base": 0.70, "student": 0.85}


def _write(tmp_path, **fields):
    fields.setdefault("models", MODELS)
    return report.write_report(
        tmp_path / "rep", report.Report(title="t", command="x", **fields), progress=False
    )


def _page_text(out):
    return (out / "index.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# the sanity line
# ---------------------------------------------------------------------------


def test_sanity_lines_chance_and_checkpoint_thresholds():
    # 4 classes: chance 25 %, margin 5 points -> flagged below 30 %
    assert evaluation.CHANCE_MARGIN == 0.05 and evaluation.CHECKPOINT_DROP == 0.10
    lines = evaluation.sanity_lines({"Base": {"accuracy": 0.29}, "Student": {"accuracy": 0.31}}, 4)
    assert len(lines) == 1 and lines[0].startswith("Base: accuracy 29.0 %")
    assert "chance (25.0 % for 4 classes)" in lines[0] and "class-order" in lines[0]
    # 10 points below the checkpoint's accuracy: 0.79 vs 0.90 flagged, 0.81 not
    lines = evaluation.sanity_lines(
        {
            "Teacher": {"accuracy": 0.79, "recorded_accuracy": 0.90},
            "Student": {"accuracy": 0.81, "recorded_accuracy": 0.90},
            "Base": {"accuracy": None},
        },
        10,
    )
    assert len(lines) == 1 and lines[0].startswith("Teacher: accuracy 79.0 %")
    assert "11.0 points below the 90.0 % its checkpoint records" in lines[0]
    assert evaluation.sanity_lines(MODELS, 4) == []
    # on 8 images, 62.5 % against a recorded 73.2 % is within 2 standard errors (0.31): not flagged;
    # on 500 images (2 SE = 0.040) it is
    drop = {"Teacher": {"accuracy": 0.625, "recorded_accuracy": 0.732}}
    assert evaluation.sanity_lines(drop, 4, n_images=8) == []
    assert len(evaluation.sanity_lines(drop, 4, n_images=500)) == 1


# ---------------------------------------------------------------------------
# the conclusion the page opens with
# ---------------------------------------------------------------------------


def test_report_opens_with_the_conclusion_of_the_map_free_scores(tmp_path):
    ev = _evaluation()
    out = _write(tmp_path, evaluation=ev, data="d")
    expected = ev.conclusion(accuracies=ACC)
    m = json.loads((out / "metrics.json").read_text())
    assert m["headline"]["text"] == expected
    assert (
        m["headline"]["kind"] == "none"
        and m["headline"]["accuracy"] == "Accuracy: Teacher 95.0%, Base 70.0%, Student 85.0%."
    )
    statements = m["headline"]["layers"]["L4"]
    s_d = float(
        np.mean(ev.values["L4"]["none"]["rs_distilled"])
    )  # batch_mean: the mean of the batches
    assert statements[0].startswith(
        f"the Student's features carry label structure that the Base's lack (S_d = {s_d:.3f} ["
    )
    assert statements[1].startswith("no evidence that the Base's features carry")
    assert statements[2].startswith(
        "the Student's features are more related to the labels than the Base's"
    )
    page = _page_text(out)
    # the conclusion is the first section, before "What was compared" and Table 1
    assert page.index('id="conclusion"') < page.index('id="compared"') < page.index('id="table1"')
    assert f"S_d = {s_d:.3f}" in page and "p = " in page
    # masked FSS labelled with the reason, † explained
    assert "the mask alone makes FSS close to 1 for any pair of models" in page
    assert "† marks an RS whose interval is not above its leakage baseline" in page
    # said once, with the † note
    assert m["headline"]["fss_note"] and m["headline"]["fss_note"] not in page
    assert m["sanity"] == [] and m["warnings"] == []


def test_raw_features_not_evaluated_says_no_conclusion(tmp_path):
    out = _write(tmp_path, evaluation=_evaluation(kinds=("gradcam",)))
    m = json.loads((out / "metrics.json").read_text())
    assert m["headline"]["text"].startswith("No conclusion: the raw features")


def test_sanity_flag_refuses_the_conclusion_and_comes_first(tmp_path):
    ev = _evaluation()
    flagged = evaluation.sanity_lines({"Base": {"accuracy": 0.26}}, 4)
    out = _write(tmp_path, evaluation=ev, sanity=flagged, warnings=["a class-name note"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["headline"]["refused"] == flagged
    assert m["headline"]["text"].startswith(report.REFUSAL)
    assert m["warnings"] == flagged + ["a class-name note"]  # every warning, once
    page = _page_text(out)
    assert page.index('id="sanity"') < page.index('id="conclusion"') < page.index('id="compared"')
    assert "Base: accuracy 26.0 %" in page and "a class-name note" in page
    # the accuracy sentence does not read the accuracies as a result of distillation
    assert (
        "distillation did not help" not in page and "not read as a result of distillation" in page
    )


def test_data_section_lists_classes_and_counts(tmp_path):
    summary = {
        "classes": CLASSES,
        "n_images": 10,
        "class_counts": {"circle": 3, "square": 3, "triangle": 2, "cross": 2},
        "preprocessing": {"image_size": 32, "resize": "none", "normalize": False, "augment": False},
    }
    out = _write(tmp_path, data_summary=summary)
    m = json.loads((out / "metrics.json").read_text())
    assert m["classes"] == CLASSES and m["data_summary"]["class_counts"]["triangle"] == 2
    page = _page_text(out)
    assert "Data: 4 classes, 10 images" in page
    rows = re.findall(r"<tr><td>(\d)</td><td>(\w+)</td><td>(\d+)</td></tr>", page)
    assert rows == [
        ("0", "circle", "3"),
        ("1", "square", "3"),
        ("2", "triangle", "2"),
        ("3", "cross", "2"),
    ]
    assert "image_size 32, resize none" in page


# ---------------------------------------------------------------------------
# quantify end to end: a class-order mismatch and untrained models
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def permuted(tmp_path_factory):
    """Untrained models whose checkpoints record the classes in another order than the
    data's, and an accuracy of 90 % (never reached here)."""
    d = tmp_path_factory.mktemp("perm")
    for i, name in enumerate(("student", "base")):
        torch.manual_seed(i)
        m = build_model("small_resnet_s", 4, cifar_stem=True)
        save_checkpoint(
            d / f"{name}.pt",
            m,
            arch="small_resnet_s",
            num_classes=4,
            class_names=["square", "circle", "triangle", "cross"],
            accuracy=0.9,
        )
    return d


def test_quantify_carries_warnings_sanity_and_classes(tmp_path, capsys, permuted):
    out = tmp_path / "q"
    code = cli.main(
        [
            "quantify",
            "--student",
            str(permuted / "student.pt"),
            "--base",
            str(permuted / "base.pt"),
            "--data",
            "controlled",
            "--image-size",  # the checkpoints record no preprocessing
            "32",
            "--normalize",
            "none",
            "--limit",
            "20",
            "--batch-size",
            "5",
            "--layers",
            "L4",
            "--one-hot",
            "--no-progress",
            "--n-bootstrap",
            "50",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    # every warning line printed on stderr is in metrics.json["warnings"]
    printed = [line.split("warning: ", 1)[1] for line in err.splitlines() if "warning: " in line]
    assert printed and all(p in m["warnings"] for p in printed)
    assert any("class-order" in w for w in m["warnings"])  # named as a possible cause
    # the models' accuracies, measured independently, decide the sanity lines
    accs = {r: m["models"][r]["accuracy"] for r in ("Base", "Student")}
    assert m["models"]["Base"]["recorded_accuracy"] == pytest.approx(0.9)
    assert m["sanity"] == evaluation.sanity_lines(
        {r: {"accuracy": a, "recorded_accuracy": 0.9} for r, a in accs.items()}, 4
    )
    assert len(m["sanity"]) == 2  # untrained: both near chance or far below 90 %
    assert m["headline"]["refused"] == m["sanity"]
    assert all(line in err for line in m["sanity"])  # on stderr too
    # classes matched by name: the data are read in the checkpoints' class order
    assert m["classes"] == ["square", "circle", "triangle", "cross"]
    assert sorted(m["classes"]) == sorted(CLASSES)
    assert sum(m["data_summary"]["class_counts"].values()) == 20
    assert "none" in m["map_kinds"]  # the raw row is in the default --maps
    page = _page_text(out)
    assert page.index('id="sanity"') < page.index('id="conclusion"')
    for w in m["warnings"]:
        if w not in m["sanity"]:
            assert re.sub(r"\s+", " ", w.replace("'", "&#x27;").replace('"', "&quot;"))[:60] in page
