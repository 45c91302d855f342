"""One signature for feature_similarity_score, relevance_score and evaluate_kd (no deprecated
call forms); evaluate_kd checks widths, targets and devices before any batch."""

import functools
import inspect
import typing
import warnings

import pytest
import torch
from tiny_models import TinyNet
from torch.utils.data import DataLoader, TensorDataset

from captum_unicam.errors import DeviceError, InputError
from captum_unicam.metrics import _validate, evaluate_kd, feature_similarity_score, relevance_score
from captum_unicam.perturb import mask_multiply, road_impute

ROAD0 = functools.partial(road_impute, noise=0.0)  # deterministic

KW = inspect.Parameter.KEYWORD_ONLY
POS = inspect.Parameter.POSITIONAL_OR_KEYWORD


def params(func):
    return [(p.name, p.kind) for p in inspect.signature(func).parameters.values()]


def test_signatures():
    assert params(feature_similarity_score) == [
        ("forward_func", POS),
        ("layer", POS),
        ("inputs", POS),
        ("base_forward_func", KW),
        ("base_layer", KW),
        ("attributions", KW),
        ("perturbation", KW),
        ("additional_forward_args", KW),
        ("estimator", KW),
        ("attention_mask", KW),
        ("pooling", KW),
    ]
    assert params(relevance_score) == [
        ("forward_func", POS),
        ("layer", POS),
        ("inputs", POS),
        ("target", KW),
        ("label_embeddings", KW),
        ("base_forward_func", KW),
        ("base_layer", KW),
        ("attributions", KW),
        ("perturbation", KW),
        ("additional_forward_args", KW),
        ("estimator", KW),
        ("attention_mask", KW),
        ("pooling", KW),
    ]
    kd = params(evaluate_kd)
    assert kd[:5] == [
        ("forward_func", POS),
        ("layers", POS),
        ("data", POS),
        ("base_forward_func", KW),
        ("label_embeddings", KW),
    ]
    assert all(kind == KW for _, kind in kd[3:])
    names = [n for n, _ in kd]
    assert (
        names.index("maps")
        < names.index("perturbation")
        < names.index("estimator")
        < names.index("device")
    )
    assert inspect.signature(evaluate_kd).parameters["device"].default is None
    for func in (feature_similarity_score, relevance_score, evaluate_kd):
        assert (
            "perturb_func" not in names and "perturb_func" not in inspect.signature(func).parameters
        )
        hints = typing.get_type_hints(func)
        assert hints["estimator"] == typing.Literal["u", "v"]
        assert inspect.signature(func).parameters["perturbation"].default is mask_multiply


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    s, b = TinyNet(4).eval(), TinyNet(5).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 8, 8, generator=g)
    y = torch.arange(8) % 3
    attr = torch.rand(8, 1, 4, 4, generator=g)
    return s, b, x, y, attr


def test_new_forms_do_not_warn(setup):
    s, b, x, y, attr = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        feature_similarity_score(
            s, s.layer1, x, base_forward_func=b, base_layer=b.layer1, attributions=attr
        )
        relevance_score(
            s, s.layer1, x, target=y, base_forward_func=b, base_layer=b.layer1, attributions=attr
        )
        evaluate_kd(
            s,
            {"L1": (s.layer1, b.layer1)},
            [(x, y)],
            base_forward_func=b,
            maps=("none",),
            progress=False,
            n_bootstrap=10,
        )


def test_base_is_keyword_only(setup):
    s, b, x, y, _ = setup
    with pytest.raises(TypeError, match="positional"):
        evaluate_kd(s, {"L2": (s.layer2, b.layer2)}, [(x, y)], b)


def test_evaluate_kd_perturbation_names(setup):
    s, b, x, y, _ = setup
    layers = {"L1": (s.layer1, b.layer1), "L2": (s.layer2, b.layer2)}
    data = [(x, y), (x.flip(0), y.flip(0))]
    opts = dict(progress=False, n_bootstrap=20, n_permutations=20)
    new = evaluate_kd(
        s,
        layers,
        data,
        base_forward_func=b,
        maps=("none", "gradcam"),
        perturbation=road_impute,
        **opts,
    )
    # the strings of the command line: "road" is road_impute, "none" raw features only
    assert (
        evaluate_kd(
            s,
            layers,
            data,
            base_forward_func=b,
            maps=("none", "gradcam"),
            perturbation="road",
            **opts,
        ).values
        == new.values
    )
    raw = evaluate_kd(s, layers, data, base_forward_func=b, perturbation=None, **opts)
    assert raw.map_kinds == ["none"] and raw.values["L2"]["none"] == new.values["L2"]["none"]
    assert raw.settings["perturbation"] == "none" and new.settings["perturbation"] == "road_impute"


def test_perturbation_none_is_raw_features(setup):
    s, b, x, y, attr = setup
    raw = feature_similarity_score(s, s.layer2, x, base_forward_func=b, base_layer=b.layer2)
    none = feature_similarity_score(
        s, s.layer2, x, base_forward_func=b, base_layer=b.layer2, perturbation=None
    )
    assert float(raw) == float(none)
    masked = feature_similarity_score(
        s, s.layer2, x, base_forward_func=b, base_layer=b.layer2, attributions=attr
    )
    assert abs(float(masked) - float(raw)) > 1e-6


# ---------------------------------------------------------------------------
# evaluate_kd: checks before any batch
# ---------------------------------------------------------------------------


class Counting:
    """Data that records how many items were taken from it."""

    def __init__(self, items):
        self.items, self.taken = items, 0

    def __iter__(self):
        for item in self.items:
            self.taken += 1
            yield item


def forward_sizes(*models):
    sizes = []
    handles = [
        m.register_forward_hook(lambda mod, i, o: sizes.append(i[0].shape[0])) for m in models
    ]
    return sizes, handles


def test_output_widths_are_checked_before_any_batch():
    torch.manual_seed(0)
    s, b2 = TinyNet(4, classes=4).eval(), TinyNet(4, classes=2).eval()
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    sizes, handles = forward_sizes(s, b2)
    try:
        with pytest.raises(InputError, match="the Student has 4 outputs and the Base 2"):
            evaluate_kd(
                s, {"L1": (s.layer1, b2.layer1)}, [(x, y)] * 3, base_forward_func=b2, progress=False
            )
    finally:
        for h in handles:
            h.remove()
    assert sizes == [2, 2]  # only the probe: two samples through each model, no batch
    b = TinyNet(5, classes=4).eval()
    with pytest.raises(
        InputError, match="label_embeddings has 3 rows but the models have 4 outputs"
    ):
        evaluate_kd(
            s,
            {"L1": (s.layer1, b.layer1)},
            [(x, y)],
            base_forward_func=b,
            label_embeddings=torch.randn(3, 2),
            progress=False,
        )


def test_each_batch_target_is_checked_before_work_on_it():
    torch.manual_seed(0)
    s, b = TinyNet(4, classes=3).eval(), TinyNet(5, classes=3).eval()
    good = (torch.rand(6, 3, 8, 8), torch.arange(6) % 3)
    bad = (torch.rand(7, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1, 2]))
    sizes, handles = forward_sizes(s, b)
    try:
        with pytest.raises(
            InputError,
            match=r"batch 1: target holds class index 3, but the models have 3 outputs \(classes 0\.\.2\)",
        ):
            evaluate_kd(
                s,
                {"L1": (s.layer1, b.layer1)},
                [good, bad],
                base_forward_func=b,
                maps=("none", "gradcam"),
                progress=False,
            )
    finally:
        for h in handles:
            h.remove()
    assert 7 not in sizes  # nothing ran on the bad batch
    with pytest.raises(InputError, match="batch 0: target holds a negative class index"):
        evaluate_kd(
            s,
            {"L1": (s.layer1, b.layer1)},
            [(good[0], -good[1])],
            base_forward_func=b,
            progress=False,
        )


# ---------------------------------------------------------------------------
# evaluate_kd: the models' device
# ---------------------------------------------------------------------------


def test_device_none_is_the_students_device():
    s, b = TinyNet(4), TinyNet(5)
    layers = {"L1": (s.layer1, b.layer1)}
    assert _validate.resolve_device(None, s, b, layers) == torch.device("cpu")
    s_meta, b_meta = TinyNet(4).to("meta"), TinyNet(5).to("meta")
    assert _validate.resolve_device(
        None, s_meta, b_meta, {"L1": (s_meta.layer1, b_meta.layer1)}
    ) == torch.device("meta")
    assert _validate.resolve_device("cpu", s, b, layers) == torch.device("cpu")
    # a model without parameters: its layers' device, else leave the batches where they are
    assert (
        _validate.resolve_device(
            None, lambda x: x, lambda x: x, {"L": (torch.nn.Identity(), torch.nn.Identity())}
        )
        is None
    )


def test_models_on_two_devices_are_refused_before_any_batch():
    s, b = TinyNet(4).eval(), TinyNet(5).to("meta").eval()
    data = Counting([(torch.rand(6, 3, 8, 8), torch.arange(6) % 3)])
    with pytest.raises(
        DeviceError, match="the Student's parameters are on cpu and the Base's on meta"
    ):
        evaluate_kd(s, {"L1": (s.layer1, b.layer1)}, data, base_forward_func=b, progress=False)
    assert data.taken == 0
    b = TinyNet(5).eval()
    with pytest.raises(
        DeviceError, match="device='meta', but the models' parameters are on cpu.*device=None"
    ):
        evaluate_kd(
            s,
            {"L1": (s.layer1, b.layer1)},
            data,
            base_forward_func=b,
            device="meta",
            progress=False,
        )
    assert data.taken == 0


def test_batches_are_moved_to_the_models_device(monkeypatch):
    """Batches go to the device that _resolve_device names (CUDA itself: tests/test_cuda.py)."""
    s, b = TinyNet(4).eval(), TinyNet(5).eval()
    seen = []
    s.layer1.register_forward_hook(lambda m, i, o: seen.append((i[0].device, i[0].dtype)))
    moved = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        moved.append(args[0] if args else kwargs.get("device"))
        return real_to(self, *args, **kwargs)

    x = torch.rand(6, 3, 8, 8)
    monkeypatch.setattr(torch.Tensor, "to", spy)
    evaluate_kd(
        s,
        {"L1": (s.layer1, b.layer1)},
        [(x, torch.arange(6) % 3)],
        base_forward_func=b,
        maps=("none",),
        progress=False,
        n_bootstrap=10,
    )
    monkeypatch.undo()
    assert torch.device("cpu") in moved
    assert all(d == torch.device("cpu") for d, _ in seen)


def test_dataloader_and_lists_of_batches_agree(setup):
    s, b, x, y, _ = setup
    layers = {"L1": (s.layer1, b.layer1)}
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    a = evaluate_kd(
        s, layers, loader, base_forward_func=b, maps=("none",), progress=False, n_bootstrap=10
    )
    c = evaluate_kd(
        s, layers, [(x, y)], base_forward_func=b, maps=("none",), progress=False, n_bootstrap=10
    )
    assert a.values == c.values and a.settings["device"] == "cpu"
