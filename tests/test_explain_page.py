"""The explain page answers the question per image: predictions, the images where the two
models disagree first, S_d / S_r of the evaluated set, Teacher maps, empty-map counts over
everything computed, one colour per model, titles that do not overlap."""

import json

import pytest
import torch

from captum_unicam import cli, viz
from captum_unicam.data import load_dataset
from captum_unicam.models import build_model, load_checkpoint, save_checkpoint, stage_layers
from captum_unicam.pipeline import evaluation, stratified_loader
from captum_unicam.stats import partial_distance_correlation

CLASSES = ["circle", "square", "triangle", "cross"]


# ---------------------------------------------------------------------------
# picking and marking the drawn images
# ---------------------------------------------------------------------------


def test_pick_images_disagreements_first():
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    base = torch.tensor([1, 1, 2, 0, 0, 1, 0, 3])  # wrong at 0, 3, 6
    student = torch.tensor([0, 2, 2, 3, 0, 0, 2, 3])  # wrong at 1, 5
    pick, counts = evaluation.pick_images(y, {"Base": base, "Student": student}, 6)
    # Base wrong / Student right: 0, 3, 6 (classes 0, 3, 2): two (a third of 6), one class
    # after another in class order -> 0 (circle), 6 (triangle); Student wrong / Base right:
    # 1, 5 (both squares); then one per class among the rest (2, 3, 4, 7), in class order
    assert counts == {"base_wrong_student_right": 3, "student_wrong_base_right": 2}
    assert pick[:2] == [0, 6] and pick[2:4] == [1, 5]
    assert pick[4:] == [4, 2]
    marks = evaluation.prediction_marks(pick[:2], y, {"Base": base, "Student": student}, CLASSES)
    assert marks == [
        [("Base", "square", False), ("Student", "circle", True)],
        [("Base", "circle", False), ("Student", "triangle", True)],
    ]


def test_empty_map_counts_cover_every_map_computed():
    m = torch.rand(7, 1, 2, 2)
    m[[1, 4]] = 0.0
    m[5] = -1.0
    counts = evaluation.empty_map_counts({"L4": {"distilled": m}}, {"L4": torch.ones(7, 1, 2, 2)})
    assert counts == {"L4": {"UniCAM distilled": (3, 7), evaluation.TEACHER_COLUMN: (0, 7)}}


# ---------------------------------------------------------------------------
# figures: colours, titles
# ---------------------------------------------------------------------------


def _bar_colours(ax):
    import matplotlib.colors as mc
    from matplotlib.container import BarContainer

    return {
        c.get_label(): mc.to_hex(c.patches[0].get_facecolor())
        for c in ax.containers
        if isinstance(c, BarContainer) and c.get_label()
    }


def test_one_colour_per_model_across_panels():
    iv = {"L1": (0.2, 0.1, 0.3), "L2": (0.4, 0.3, 0.5)}
    fig = viz.scores_per_layer(
        {
            "(b) RS on Grad-CAM regions": {"Base": iv, "Student": iv},
            "(c) RS on UniCAM regions": {
                "Student on distilled map": iv,
                "Base on residual map": iv,
            },
        }
    )
    b, c = (_bar_colours(ax) for ax in fig.axes)
    assert b["Base"] == c["Base on residual map"] == viz.MODEL_COLOURS["Base"]
    assert b["Student"] == c["Student on distilled map"] == viz.MODEL_COLOURS["Student"]
    assert len(set(viz.MODEL_COLOURS.values())) == 3


def test_grid_title_does_not_overlap_column_titles_or_marks():
    imgs = torch.rand(3, 3, 16, 16)
    maps = {
        "Grad-CAM student": torch.rand(3, 1, 4, 4),
        "Grad-CAM base": torch.rand(3, 1, 4, 4),
        "Grad-CAM teacher": torch.rand(3, 1, 4, 4),
    }
    marks = [
        [("Teacher", "circle", True), ("Base", "square", False), ("Student", "circle", True)]
    ] * 3
    fig = viz.attribution_grid(
        imgs, maps, title="Layer L4", row_labels=["a", "b", "c"], row_marks=marks
    )
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    sup = fig._suptitle.get_window_extent(r)
    axes = [a for a in fig.axes if a.get_title()]
    titles = [a.title.get_window_extent(r) for a in axes]
    assert all(sup.y0 > t.y1 for t in titles)  # the figure title lies above every column title
    # column titles in the colour of their model
    colours = {a.get_title(): a.title.get_color() for a in axes}
    assert colours["Grad-CAM base"] == viz.MODEL_COLOURS["Base"]
    assert colours["Grad-CAM teacher"] == viz.MODEL_COLOURS["Teacher"]
    # the marks under one row end above the next row's image
    texts = [t for t in fig.axes[0].texts if "Student" in t.get_text()]
    assert (
        texts and texts[0].get_window_extent(r).y0 > fig.axes[len(maps) + 1].get_window_extent(r).y1
    )
    with pytest.raises(ValueError, match="row_marks"):
        viz.attribution_grid(imgs, maps, row_marks=marks[:2])


# ---------------------------------------------------------------------------
# explain end to end
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    d = tmp_path_factory.mktemp("trio")
    for i, name in enumerate(("student", "base", "teacher")):
        torch.manual_seed(10 + i)
        save_checkpoint(
            d / f"{name}.pt",
            build_model("small_resnet_s", 4, cifar_stem=True),
            arch="small_resnet_s",
            num_classes=4,
            class_names=CLASSES,
        )
    return d


def test_explain_page_predictions_scores_teacher_maps(tmp_path, capsys, trio):
    out = tmp_path / "ex"
    code = cli.main(
        [
            "explain",
            "--student",
            str(trio / "student.pt"),
            "--base",
            str(trio / "base.pt"),
            "--teacher",
            str(trio / "teacher.pt"),
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
            "--images",
            "6",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    # independent oracle: the same batches, the models' own argmax
    ds = load_dataset("controlled", "test", limit=20)
    batches = list(stratified_loader(ds, 5, seed=0))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    nets = {
        r: load_checkpoint(trio / f"{r.lower()}.pt")[0].eval()
        for r in ("Teacher", "Base", "Student")
    }
    with torch.no_grad():
        pred = {r: net(x).argmax(1) for r, net in nets.items()}
    gained = [i for i in range(20) if pred["Student"][i] == y[i] and pred["Base"][i] != y[i]]
    lost = [i for i in range(20) if pred["Base"][i] == y[i] and pred["Student"][i] != y[i]]
    assert m["disagreements"] == {
        "base_wrong_student_right": len(gained),
        "student_wrong_base_right": len(lost),
    }
    pick, _ = evaluation.pick_images(y, {"Base": pred["Base"], "Student": pred["Student"]}, 6)
    want = [
        [
            {"model": r, "predicted": CLASSES[int(pred[r][i])], "correct": bool(pred[r][i] == y[i])}
            for r in ("Teacher", "Base", "Student")
        ]
        for i in pick
    ]
    assert m["drawn"] == want
    if gained:  # the first drawn image is one the Base gets wrong and the Student right
        assert [d["correct"] for d in m["drawn"][0][1:]] == [False, True]
    # S_d / S_r of the evaluated set: pdCor over all 20 images at once, by hand from the features
    s, b = nets["Student"], nets["Base"]
    feats = {}
    hooks = [
        stage_layers(s)["L4"].register_forward_hook(
            lambda _m, _i, o: feats.__setitem__("s", o.detach())
        ),
        stage_layers(b)["L4"].register_forward_hook(
            lambda _m, _i, o: feats.__setitem__("b", o.detach())
        ),
    ]
    with torch.no_grad():
        s(x), b(x)
    for h in hooks:
        h.remove()
    onehot = torch.nn.functional.one_hot(y, 4).float()
    xs, xb = feats["s"].flatten(1).double(), feats["b"].flatten(1).double()
    s_d = float(partial_distance_correlation(xs, onehot.double(), xb))
    s_r = float(partial_distance_correlation(xb, onehot.double(), xs))
    assert m["set_scores"]["L4"]["s_d"]["mean"] == pytest.approx(s_d, abs=1e-4)
    assert m["set_scores"]["L4"]["s_r"]["mean"] == pytest.approx(s_r, abs=1e-4)
    # Teacher maps, and empty-map counts over all 20 evaluated images (not the 6 drawn)
    empty = m["empty_maps"]["L4"]
    assert set(empty) == {
        "Grad-CAM student",
        "Grad-CAM base",
        "UniCAM distilled",
        "UniCAM residual",
        evaluation.TEACHER_COLUMN,
    }
    assert all(v["computed"] == 20 for v in empty.values())
    page = (out / "index.html").read_text()
    assert 'id="set_scores"' in page and "UniCAM.score on all 20 evaluated images" in page
    assert "the Base gets" in page and m["classes"] == CLASSES


def test_leakage_baseline_drawn_beside_every_masked_rs():
    from captum_unicam.output.report import _panels_from_summary

    iv = {"mean": 0.3, "low": 0.2, "high": 0.4}
    leak = {"mean": 0.35, "low": 0.3, "high": 0.4}
    entry = {m: dict(iv) for m in ("fss", "rs_base", "rs_student", "rs_distilled", "rs_residual")}
    summary = {
        "L4": {
            "gradcam": dict(entry, leakage={"rs_base": leak, "rs_student": {**leak, "mean": 0.1}}),
            "none": dict(entry),
        }
    }
    panels = _panels_from_summary(summary)
    rs = panels["(b) RS on Grad-CAM regions"]
    assert rs["Base"]["L4"]["leakage"] == 0.35 and rs["Student"]["L4"]["leakage"] == 0.1
    assert all("leakage" not in v["L4"] for v in panels[next(iter(panels))].values())  # not on FSS
    fig = viz.scores_per_layer(panels)
    ax = fig.axes[1]
    ticks = [c for c in ax.collections if c.get_label() == "leakage baseline (the mask alone)"]
    assert len(ticks) == 1  # labelled once
    ys = sorted(
        round(float(seg[0][1]), 6)
        for c in ax.collections
        for seg in c.get_segments()
        if len(seg) == 2 and seg[0][1] == seg[1][1] and c.get_linewidth()[0] == 2.0
    )
    assert ys == [0.1, 0.35]
