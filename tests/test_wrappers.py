"""UniCAM inside Captum's wrappers and conventions, in batch mode, each checked against
LayerGradCam on the same model where Captum defines the behaviour:

- ``NoiseTunnel`` (smoothgrad, smoothgrad_sq, vargrad) over UniCAM equals the hand
  computation over the same noisy inputs (Captum's noise redrawn from the same seed; the
  hand reproduction is first checked on LayerGradCam);
- ``sensitivity_max`` in batch mode measures batch composition (non-zero with no
  perturbation at all), exactly as the hand computation says;
- layers whose output is a tuple give a tuple of maps, as LayerGradCam does, with the
  values of an independent oracle;
- Captum's tuple targets; an int target shared by the whole batch is refused;
- ``torch.inference_mode()`` is named in the error;
- all-zero maps reach Captum's visualisers through ``captum_unicam.viz``.

Reference-mode versions live in tests/test_reference_wrappers.py.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel  # noqa: E402
from captum.attr import visualization as captum_viz  # noqa: E402
from captum.metrics import sensitivity_max  # noqa: E402
from test_unicam_common import (  # noqa: E402
    SmallResNet,
    all_hooks,
    assert_close,
    batch,
    gradcam_oracle,
    make,
    one_hot,
    pdcor_oracle,
)
from torch import nn  # noqa: E402

from captum_unicam import viz  # noqa: E402
from captum_unicam.attr import UniCAM  # noqa: E402
from captum_unicam.errors import InputError  # noqa: E402

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


@pytest.fixture(scope="module")
def setup():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, y = batch(8, seed=21)
    return student, base, x, y


def noisy_copies(x: torch.Tensor, k: int, stdev: float, seed: int) -> torch.Tensor:
    """The inputs NoiseTunnel draws after torch.manual_seed(seed), with nt_samples=k and
    one partition (nt_samples_batch_size=None): each input repeated k times in a row,
    plus N(0, stdev^2) noise drawn with torch.normal from a default-dtype std tensor."""
    torch.manual_seed(seed)
    size = (x.shape[0] * k,) + tuple(x.shape[1:])
    noise = torch.normal(0, torch.tensor(stdev).repeat(size))
    return x.repeat_interleave(k, dim=0) + noise


def smoothing(maps: torch.Tensor, n: int, k: int, nt_type: str) -> torch.Tensor:
    per = maps.reshape((n, k) + tuple(maps.shape[1:]))
    mean, mean_sq = per.mean(1), (per**2).mean(1)
    return {"smoothgrad": mean, "smoothgrad_sq": mean_sq, "vargrad": mean_sq - mean**2}[nt_type]


@pytest.mark.parametrize("nt_type", NT_TYPES)
def test_noise_tunnel_runs_and_equals_the_hand_computation(setup, nt_type):
    student, base, x, y = setup
    k, stdev, n = 3, 0.2, x.shape[0]
    noisy = noisy_copies(x, k, stdev, seed=7)
    # the hand reproduction of NoiseTunnel, checked on LayerGradCam (per-image maps)
    grad_cam = LayerGradCam(student, student.layer2)
    torch.manual_seed(7)
    got_gc = NoiseTunnel(grad_cam).attribute(
        x, nt_type=nt_type, nt_samples=k, stdevs=stdev, target=y, relu_attributions=True
    )
    want_gc = smoothing(
        grad_cam.attribute(noisy, target=y.repeat_interleave(k), relu_attributions=True),
        n,
        k,
        nt_type,
    )
    torch.testing.assert_close(got_gc, want_gc, rtol=1e-9, atol=1e-12)
    # UniCAM in batch mode: NoiseTunnel hands it all n * k noisy copies in one call
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    torch.manual_seed(7)
    got = NoiseTunnel(unicam).attribute(x, nt_type=nt_type, nt_samples=k, stdevs=stdev, target=y)
    want = smoothing(unicam.attribute(noisy, target=y.repeat_interleave(k)), n, k, nt_type)
    assert got.shape == got_gc.shape == (n, 1, 4, 4)
    assert_close(got, want)
    # keyword arguments pass through: residual maps, on the Base's layer
    torch.manual_seed(7)
    got_r = NoiseTunnel(unicam).attribute(
        x, nt_type=nt_type, nt_samples=k, stdevs=stdev, target=y, features="residual"
    )
    want_r = smoothing(
        unicam.attribute(noisy, target=y.repeat_interleave(k), features="residual"), n, k, nt_type
    )
    assert_close(got_r, want_r)
    assert all_hooks(student, base) == 0


def test_sensitivity_max_in_batch_mode_measures_the_batch(setup):
    """With an identity perturbation every input is unchanged, yet the number is not 0:
    sensitivity_max scores the n_perturb_samples copies in one batch of another make-up
    (each image repeated), and a batch-mode map depends on the batch."""
    student, base, x, y = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    k = 4

    def identity(inputs, perturb_radius=0.0):
        return inputs

    got = sensitivity_max(unicam.attribute, x, perturb_func=identity, target=y, n_perturb_samples=k)
    (a,) = unicam.attribute((x,), target=y)
    a_copies = unicam.attribute(x.repeat_interleave(k, dim=0), target=y.repeat_interleave(k))
    a_rep = a.repeat_interleave(k, dim=0)
    norm = a.flatten(1).norm(dim=1)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm).repeat_interleave(k)
    want = ((a_rep - a_copies).flatten(1).norm(dim=1) / norm).reshape(-1, k).amax(1)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert float(want.max()) > 0.05  # no perturbation, yet far from 0
    # LayerGradCam, a per-image map, gives exactly 0 under the same identity perturbation
    grad_cam = LayerGradCam(student, student.layer2)
    gc = sensitivity_max(
        lambda inp, **kw: (grad_cam.attribute(inp, **kw),),
        x,
        perturb_func=identity,
        target=y,
        n_perturb_samples=k,
    )
    assert float(gc.abs().max()) == 0.0


# ---------------------------------------------------------------------------
# Layers with several output tensors
# ---------------------------------------------------------------------------


class TwoHeads(nn.Module):
    """A block whose output is a tuple: (conv features 6x8x8, a second branch 4x4x4)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.b = nn.Conv2d(3, 4, 3, stride=4, padding=1)

    def forward(self, x):
        return torch.relu(self.a(x)), torch.tanh(self.b(x))


class TupleNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.block = TwoHeads()
        self.fc = nn.Linear(10, classes)

    def forward(self, x):
        a, b = self.block(x)
        return self.fc(torch.cat([a.mean((2, 3)), b.mean((2, 3))], dim=1))


def test_tuple_output_layer_gives_a_tuple_of_maps_like_layer_grad_cam():
    torch.manual_seed(0)
    student, base = TupleNet().double().eval(), TupleNet().double().eval()
    x, y = batch(8, seed=3)
    grad_cam = LayerGradCam(student, student.block).attribute(x, target=y, relu_attributions=True)
    unicam = UniCAM(student, student.block, base, base.block)
    d, r = unicam.attribute(x, target=y, features="both")
    # Captum's convention: one map per tensor of the layer's output, in a tuple
    assert isinstance(grad_cam, tuple) and isinstance(d, tuple) and isinstance(r, tuple)
    assert [m.shape for m in d] == [m.shape for m in grad_cam] == [(8, 1, 8, 8), (8, 1, 4, 4)]
    # values: the representation is the row-wise concatenation of the flattened tensors
    with torch.no_grad():
        acts_s, acts_b = student.block(x), base.block(x)
    leaves = [t.detach().clone().requires_grad_() for t in acts_s]
    flat_s = torch.cat([t.flatten(1) for t in leaves], dim=1)
    flat_b = torch.cat([t.flatten(1) for t in acts_b], dim=1)
    s_d = pdcor_oracle(flat_s, one_hot(y), flat_b)
    grads = torch.autograd.grad(s_d, leaves)
    for got, a, g in zip(d, acts_s, grads):
        assert_close(got, gradcam_oracle(a, g))
    # a single map per tensor with attribute_to_layer_input=False and a tuple of inputs too
    d_tuple = unicam.attribute((x,), target=y)
    assert isinstance(d_tuple, tuple) and len(d_tuple) == 2
    for got, want in zip(d_tuple, d):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert all_hooks(student, base) == 0


def test_tuple_output_layer_with_a_deeper_feature_layer():
    """graph=True path: the hook hands the network differentiable copies of both tensors."""
    torch.manual_seed(1)
    student, base = TupleNet().double().eval(), TupleNet().double().eval()
    x, y = batch(8, seed=4)
    unicam = UniCAM(student, student.block, base, base.block, student_feature_layer=student.fc)
    d = unicam.attribute(x, target=y)
    with torch.no_grad():
        acts_s, acts_b = student.block(x), base.block(x)
    leaves = [t.detach().clone().requires_grad_() for t in acts_s]
    rep = student.fc(torch.cat([leaves[0].mean((2, 3)), leaves[1].mean((2, 3))], dim=1))
    flat_b = torch.cat([t.flatten(1) for t in acts_b], dim=1)
    grads = torch.autograd.grad(pdcor_oracle(rep, one_hot(y), flat_b), leaves)
    for got, a, g in zip(d, acts_s, grads):
        assert_close(got, gradcam_oracle(a, g))
    assert all_hooks(student, base) == 0


def test_layer_output_with_a_non_tensor_is_a_public_input_error(setup):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            # no tensor first (a tensor first with other things after it, as Hugging Face
            # layers return, is read as that tensor)
            return "meta", self.conv(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Odd()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.block(x)[1].mean((2, 3)))

    student, base = Net().double().eval(), Net().double().eval()
    _, _, x, y = setup
    with pytest.raises(InputError, match="hidden states") as info:
        UniCAM(student, student.block, base, base.block).attribute(x, target=y)
    assert type(info.value) is InputError  # not the private hook error
    assert all_hooks(student, base) == 0


# ---------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------


class GridOut(nn.Module):
    """Output (N, 2, 3): a multi-dimensional output, whose elements Captum's tuple
    targets select."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.head = nn.Linear(8, 6)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3))).reshape(-1, 2, 3)


def test_tuple_targets_on_a_multi_dimensional_output():
    torch.manual_seed(2)
    student, base = GridOut().double().eval(), GridOut().double().eval()
    x, _ = batch(8, seed=6)
    pairs = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 0), (1, 2)]
    # Captum: a list of tuples selects output[i, j, k] per example
    gc = LayerGradCam(student, student.conv).attribute(x, target=pairs)
    assert gc.shape == (8, 1, 4, 4)
    table = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    unicam = UniCAM(student, student.conv, base, base.conv, label_embeddings=table)
    got = unicam.attribute(x, target=pairs)
    # the class of (j, k) is its row-major position in the (2, 3) output: 3 j + k
    flat = torch.tensor([3 * j + k for j, k in pairs])
    assert torch.equal(got, unicam.attribute(x, target=flat))
    assert torch.equal(got, unicam.attribute(x, target=table[flat]))  # the label vectors themselves
    assert float(got.max()) > 0
    # without label vectors for the output's elements, a clear error
    with pytest.raises(InputError, match="label_embeddings` with one row per output element"):
        UniCAM(student, student.conv, base, base.conv).attribute(x, target=pairs)
    with pytest.raises(InputError, match="one index per non-batch dimension"):
        unicam.attribute(x, target=[(0, 3)] + pairs[1:])
    assert all_hooks(student, base) == 0


def test_one_element_tuples_on_a_class_output_are_class_indices(setup):
    student, base, x, y = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    got = unicam.attribute(x, target=[(int(c),) for c in y])
    assert torch.equal(got, unicam.attribute(x, target=y))
    # LayerGradCam reads the same target the same way
    gc = LayerGradCam(student, student.layer2)
    assert torch.equal(
        gc.attribute(x, target=[(int(c),) for c in y]), gc.attribute(x, target=y.tolist())
    )


@pytest.mark.parametrize("target", [1, (1,), torch.tensor(1), torch.tensor([1])])
def test_one_target_for_the_whole_batch_is_refused(setup, target):
    student, base, x, y = setup
    calls = []
    handle = student.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError, match="same label.*always zero"):
            UniCAM(student, student.layer2, base, base.layer2).attribute(x, target=target)
        assert calls == []  # refused before any forward pass
    finally:
        handle.remove()


def test_one_target_with_a_context_is_fine(setup):
    student, base, x, y = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    ctx = (x[2:], y[2:])
    got = unicam.attribute(x[:2], target=1, context=ctx)
    assert torch.equal(got, unicam.attribute(x[:2], target=torch.tensor([1, 1]), context=ctx))


# ---------------------------------------------------------------------------
# inference_mode
# ---------------------------------------------------------------------------


def test_inference_mode_is_named(setup):
    student, base, x, y = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    calls = []
    handle = student.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode():
            with pytest.raises(InputError, match=r"torch\.inference_mode\(\)") as info:
                unicam.attribute(x, target=y)
            assert "feature layer" not in str(info.value)
            # the score needs no gradient and works there
            s_d = unicam.score(x, target=y, features="distilled")
        assert calls == [1]  # attribute ran no forward pass
    finally:
        handle.remove()
    assert float(s_d) == pytest.approx(
        float(unicam.score(x, target=y, features="distilled")), abs=1e-12
    )
    # and outside inference mode, under no_grad, the maps work as usual
    with torch.no_grad():
        assert torch.equal(unicam.attribute(x, target=y), unicam.attribute(x, target=y))


# ---------------------------------------------------------------------------
# All-zero maps reach Captum's visualisers
# ---------------------------------------------------------------------------


def zero_unicam_map(setup):
    """A real all-zero UniCAM map: the Student explained against itself (nothing unique)."""
    student, _, x, y = setup
    unicam = UniCAM(student, student.layer2, student, student.layer2)
    with pytest.warns(UserWarning):
        attr = unicam.attribute(x, target=y)
    up = LayerAttribution.interpolate(attr, x.shape[-2:], "bilinear")
    assert float(up.abs().max()) == 0.0
    image = (x[0] - x[0].min()) / (x[0].max() - x[0].min())
    return up[0], image


def test_all_zero_unicam_map_reaches_visualize_image_attr(setup):
    attr, image = zero_unicam_map(setup)
    heat, img = attr.permute(1, 2, 0).numpy(), image.permute(1, 2, 0).numpy()
    with pytest.raises(AssertionError, match="scale factor = 0"):  # Captum alone
        captum_viz.visualize_image_attr(heat, img, "blended_heat_map", "positive", use_pyplot=False)
    for sign in ("positive", "all", "absolute_value"):
        fig, ax = viz.visualize_image_attr(
            heat, img, "blended_heat_map", sign, use_pyplot=False, title="t"
        )
        texts = [t.get_text() for t in ax.texts]
        assert texts == [viz.EMPTY_MAP_NOTE if sign == "positive" else "all-zero map"]
        assert ax.get_title() == "t" and len(ax.images) == 1  # the greyed image, no heat map
    # tensors in UniCAM's layout are accepted as they are
    fig, ax = viz.visualize_image_attr(attr, image, "heat_map", "positive", use_pyplot=False)
    assert [t.get_text() for t in ax.texts] == [viz.EMPTY_MAP_NOTE]


def test_non_empty_map_is_drawn_by_captum_unchanged(setup):
    student, base, x, y = setup
    attr = UniCAM(student, student.layer2, base, base.layer2).attribute(x, target=y)
    up = LayerAttribution.interpolate(attr, x.shape[-2:], "bilinear")
    i = int(up.flatten(1).amax(1).argmax())
    heat = up[i].permute(1, 2, 0).numpy()
    _, ours = viz.visualize_image_attr(heat, None, "heat_map", "positive", use_pyplot=False)
    _, theirs = captum_viz.visualize_image_attr(
        heat, None, "heat_map", "positive", use_pyplot=False
    )
    np.testing.assert_array_equal(
        np.asarray(ours.images[0].get_array()), np.asarray(theirs.images[0].get_array())
    )
    assert len(ours.texts) == 0


def test_all_zero_unicam_map_reaches_visualize_image_attr_multiple(setup):
    attr, image = zero_unicam_map(setup)
    heat, img = attr.permute(1, 2, 0).numpy(), image.permute(1, 2, 0).numpy()
    methods, signs = (
        ["original_image", "heat_map", "blended_heat_map"],
        ["all", "positive", "positive"],
    )
    with pytest.raises(AssertionError, match="scale factor = 0"):  # Captum alone
        captum_viz.visualize_image_attr_multiple(heat, img, methods, signs, use_pyplot=False)
    fig, axes = viz.visualize_image_attr_multiple(
        heat, img, methods, signs, titles=["a", "b", "c"], use_pyplot=False
    )
    assert len(axes) == 3 and [ax.get_title() for ax in axes] == ["a", "b", "c"]
    # the original image is drawn by Captum as usual (8-bit colours); the map panels carry the note
    np.testing.assert_allclose(
        np.asarray(axes[0].images[0].get_array()) / 255, img, atol=1 / 255 + 1e-9
    )
    assert len(axes[0].texts) == 0
    assert [t.get_text() for t in axes[1].texts] == [viz.EMPTY_MAP_NOTE]
    assert [t.get_text() for t in axes[2].texts] == [viz.EMPTY_MAP_NOTE]
    with pytest.raises(InputError, match="same length"):
        viz.visualize_image_attr_multiple(heat, img, methods, signs[:2], use_pyplot=False)
