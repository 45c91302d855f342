"""Tests of captum_unicam.data: the controlled dataset and the loaders by spec."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from captum_unicam.data import SHAPES, ControlledShapes, DataSpecError, load_dataset

# ---------------------------------------------------------------------------
# ControlledShapes
# ---------------------------------------------------------------------------


def _items_equal(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])


def test_item_types_and_ranges():
    ds = ControlledShapes(40, seed=1, num_classes=5)
    image, label, mask = ds[7]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.float32 and mask.shape == (1, 32, 32)
    assert isinstance(label, int) and 0 <= label < 5
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert set(torch.unique(ds.masks).tolist()) == {0.0, 1.0}
    assert ds.classes == list(SHAPES[:5]) == ["circle", "square", "triangle", "cross", "ring"]
    assert len(ds) == 40 and ds.images.shape == (40, 3, 32, 32)
    # the whole-dataset tensors agree with the items, and items are copies
    for i in (0, 13, 39, -1):
        img, lab, msk = ds[i]
        j = i % 40
        assert torch.equal(img, ds.images[j]) and torch.equal(msk, ds.masks[j])
        assert lab == int(ds.labels[j]) == ds.targets[j]
    img, _, _ = ds[0]
    img.zero_()
    assert ds[0][0].abs().sum() > 0
    assert ds.images.data_ptr() == ds.images.data_ptr()  # cached, not rebuilt
    with pytest.raises(IndexError):
        ds[40]


def test_same_seed_bit_identical_in_any_subset_and_order():
    a = ControlledShapes(600, seed=3, cue_strength=0.7)
    b = ControlledShapes(600, seed=3, cue_strength=0.7)
    order = [599, 0, 513, 511, 512, 7]  # across the chunk boundary, in any order
    first = [b[i] for i in order]
    assert all(_items_equal(a[i], it) for i, it in zip(order, first))
    # item i does not depend on the dataset size
    small = ControlledShapes(8, seed=3, cue_strength=0.7)
    assert all(_items_equal(small[i], a[i]) for i in range(8))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_different_seed_or_split_differs():
    a = ControlledShapes(64, seed=0)
    b = ControlledShapes(64, seed=1)
    c = ControlledShapes(64, seed=0, split="test")
    for other in (b, c):
        assert not torch.equal(a.images, other.images)
        # no image is shared between the streams
        d = (a.images[:, None] - other.images[None]).abs().flatten(2).amax(2)
        assert float(d.min()) > 0.1


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**40), i=st.integers(0, 40), k=st.integers(2, 8))
def test_item_depends_only_on_seed_and_index(seed, i, k):
    big = ControlledShapes(i + 97, seed=seed, num_classes=k)
    one = ControlledShapes(i + 1, seed=seed, num_classes=k)
    assert _items_equal(big[i], one[i])
    image, label, mask = big[i]
    assert 0 <= label < k
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert mask.sum() > 20  # the object is there


def test_clean_images_are_object_colour_on_mask_and_background_elsewhere():
    # oracle: with no clutter and no noise, every pixel is one of two known colours
    ds = ControlledShapes(120, seed=5, num_classes=8, clutter=0, noise=0.0)
    x, m = ds.images, ds.masks.bool().expand(-1, 3, -1, -1)
    obj = ds.object_colors[:, :, None, None].expand_as(x)
    bg = ds.background_colors[:, :, None, None].expand_as(x)
    assert torch.equal(x[m], obj[m])
    assert torch.equal(x[~m], bg[~m])
    # the object always stands out from the background
    contrast = (ds.object_colors - ds.background_colors).abs().amax(1)
    assert float(contrast.min()) > 0.25


def test_mask_covers_the_object_under_clutter_and_noise():
    ds = ControlledShapes(200, seed=2, num_classes=8, clutter=6, noise=0.05)
    x, m = ds.images, ds.masks.bool()
    dev = (x - ds.object_colors[:, :, None, None]).abs()
    inside = dev.masked_select(m.expand_as(x))
    # object pixels carry only the noise (clipping can only shrink it)
    assert float(inside.abs().mean()) < 0.05
    # every object is clearly visible: on it the image is closer to the object colour
    # than off it, per image
    per_in = (dev * m).sum((1, 2, 3)) / (3 * m.sum((1, 2, 3)))
    per_out = (dev * ~m).sum((1, 2, 3)) / (3 * (~m).sum((1, 2, 3)))
    assert bool((per_out > per_in + 0.1).all())
    frac = m.float().mean((1, 2, 3))
    assert float(frac.min()) > 0.03 and float(frac.max()) < 0.5


def _frame(ds):
    g = ds.geometry.numpy().astype(np.float64)
    c = np.arange(ds.image_size) + 0.5
    dx = c[None, None, :] - g[:, 0, None, None]
    dy = c[None, :, None] - g[:, 1, None, None]
    cos, sin = np.cos(g[:, 3])[:, None, None], np.sin(g[:, 3])[:, None, None]
    return (cos * dx + sin * dy), (cos * dy - sin * dx), g[:, 2, None, None]


def test_circle_and_square_masks_match_geometry():
    # independent oracle: circle of radius 0.85 r, square of half-side 0.72 r
    ds = ControlledShapes(64, seed=9, num_classes=2, image_size=40)
    u, v, r = _frame(ds)
    circle = np.hypot(u, v) <= 0.85 * r
    square = np.maximum(np.abs(u), np.abs(v)) <= 0.72 * r
    lab = ds.labels.numpy()[:, None, None]
    expected = np.where(lab == 0, circle, square)
    got = ds.masks[:, 0].numpy().astype(bool)
    # allow a handful of pixels exactly on the boundary (float32 vs float64)
    assert np.abs(got ^ expected).sum(axis=(1, 2)).max() <= 3
    # area of the circle against pi (0.85 r)^2
    area = got.sum((1, 2))[ds.labels.numpy() == 0]
    r0 = ds.geometry[:, 2].numpy()[ds.labels.numpy() == 0]
    np.testing.assert_allclose(area, math.pi * (0.85 * r0) ** 2, rtol=0.12)


def test_objects_vary_in_position_scale_rotation_and_colour():
    ds = ControlledShapes(400, seed=4)
    g = ds.geometry
    assert float(g[:, 0].std()) > 3 and float(g[:, 1].std()) > 3
    assert float(g[:, 2].max() - g[:, 2].min()) > 3
    assert float(g[:, 3].std()) > 1.0
    assert float(ds.object_colors.std(0).min()) > 0.1


@pytest.mark.parametrize("size,k", [(400, 4), (402, 4), (96, 8), (7, 3)])
def test_classes_are_balanced(size, k):
    counts = torch.bincount(ControlledShapes(size, num_classes=k).labels, minlength=k)
    assert int(counts.max() - counts.min()) <= 1
    assert int(counts.sum()) == size


def test_cue_strength_zero_makes_tint_independent_of_class():
    k = 4
    ds = ControlledShapes(1600, seed=0, num_classes=k, cue_strength=0.0)
    table = torch.zeros(k, k)
    table.index_put_((ds.labels, ds.tints), torch.ones(1600), accumulate=True)
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    assert abs(float((ds.tints == ds.labels).float().mean()) - 1 / k) < 0.04


@pytest.mark.parametrize("cue", [0.6, 0.9, 1.0])
def test_cue_strength_sets_tint_agreement(cue):
    k = 4
    ds = ControlledShapes(1000, seed=1, num_classes=k, cue_strength=cue)
    agree = float((ds.tints == ds.labels).float().mean())
    expected = cue + (1 - cue) / k
    assert abs(agree - expected) < (1e-9 if cue == 1.0 else 0.045)  # > 3 sd


def test_tint_is_the_background_colour_of_the_pixels():
    # measured on pixels: the median background colour is nearest its palette tint
    ds = ControlledShapes(120, seed=8, num_classes=6, cue_strength=1.0, clutter=2)
    x, m = ds.images, ds.masks.bool()
    med = torch.stack([x[i][:, ~m[i, 0]].median(dim=1).values for i in range(len(ds))])
    nearest = torch.cdist(med, ds.palette).argmin(1)
    assert torch.equal(nearest, ds.tints)
    assert torch.equal(ds.tints, ds.labels)


def test_image_size_scales_the_scene():
    ds = ControlledShapes(32, seed=2, image_size=64)
    assert ds.images.shape == (32, 3, 64, 64) and ds.masks.shape == (32, 1, 64, 64)
    small = ControlledShapes(32, seed=2, image_size=32)
    ratio = ds.masks.mean() / small.masks.mean()
    assert 0.85 < float(ratio) < 1.15  # same objects, same fraction of the image


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 9},
        {"num_classes": 1},
        {"cue_strength": 1.5},
        {"seed": -1},
        {"size": -3},
        {"image_size": 8},
        {"noise": -0.1},
        {"clutter": -1},
        {"split": "holdout"},
    ],
)
def test_bad_arguments_raise(kwargs):
    kwargs = {"size": 10, **kwargs}
    with pytest.raises(ValueError):
        ControlledShapes(**kwargs)


def test_empty_dataset():
    ds = ControlledShapes(0)
    assert len(ds) == 0 and ds.images.shape == (0, 3, 32, 32) and ds.labels.shape == (0,)


# ---------------------------------------------------------------------------
# load_dataset: controlled
# ---------------------------------------------------------------------------


def test_load_controlled_specs():
    ds = load_dataset("controlled:7", "test", limit=50, cue_strength=0.3, num_classes=3)
    assert isinstance(ds, ControlledShapes)
    assert (ds.seed, ds.split, len(ds), ds.cue_strength, ds.num_classes) == (7, "test", 50, 0.3, 3)
    default = load_dataset("controlled", image_size=48)
    assert default.seed == 0 and len(default) == 2000 and default.image_size == 48
    assert _items_equal(load_dataset("controlled", limit=5)[4], ControlledShapes(5)[4])
    with pytest.raises(DataSpecError, match="seed"):
        load_dataset("controlled:abc")
    with pytest.raises(DataSpecError, match="cue_strength"):
        load_dataset("controlled", cue_strength=2.0)
    with pytest.raises(DataSpecError, match="unknown keyword"):
        load_dataset("controlled", colour="red")


@pytest.mark.parametrize("spec", ["mnist:/data", "", "cifar10", "imagefolder:", "folder:/x"])
def test_bad_specs_raise_data_spec_error(spec):
    with pytest.raises(DataSpecError) as info:
        load_dataset(spec)
    assert isinstance(info.value, ValueError)


def test_bad_split_and_limit():
    with pytest.raises(DataSpecError, match="split"):
        load_dataset("controlled", "holdout")
    with pytest.raises(DataSpecError, match="limit"):
        load_dataset("controlled", limit=0)


# ---------------------------------------------------------------------------
# load_dataset: image folders
# ---------------------------------------------------------------------------

_COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "fox": (0, 255, 0)}


def _write_tree(root, per_class=5, classes=("cat", "dog", "fox")):
    root.mkdir(parents=True, exist_ok=True)
    for c in classes:
        (root / c).mkdir()
        for j in range(per_class):
            size = (20 + 3 * j, 16 + 2 * j)
            img = Image.new("RGB", size, _COLOURS[c])
            if j == 1:
                img = img.convert("L")  # greyscale files are read as RGB
            img.save(root / c / f"{j:03d}.png")
        (root / c / "notes.txt").write_text("not an image")
        (root / c / "broken.jpg").write_bytes(b"")  # zero-byte, as in PetImages
    return root


def _paths(ds):
    base = ds.base
    return {base.samples[i][0] for i in ds.indices}


def test_imagefolder_items_and_split(tmp_path):
    root = _write_tree(tmp_path / "pets", per_class=5)
    train = load_dataset(f"imagefolder:{root}", "train", image_size=16)
    test = load_dataset(f"imagefolder:{root}", "test", image_size=16)
    # 5 valid images per class (the .txt and the zero-byte file are skipped);
    # ceil(0.2 * 5) = 1 per class goes to test
    assert len(train) == 12 and len(test) == 3
    assert sorted(test.targets) == [0, 1, 2]
    assert sorted(train.targets) == [0] * 4 + [1] * 4 + [2] * 4
    assert not (_paths(train) & _paths(test))
    again = load_dataset(f"imagefolder:{root}", "test", image_size=16)
    assert _paths(again) == _paths(test)
    other = load_dataset(
        f"imagefolder:{root}", "test", image_size=16, split_seed=1, test_fraction=0.5
    )
    assert len(other) == 9
    for i in range(len(train)):
        x, y = train[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        colour = torch.tensor(_COLOURS[train.classes[y]], dtype=torch.float32) / 255
        grey = bool((x[0] - x[1]).abs().max() < 1e-6 and (x[1] - x[2]).abs().max() < 1e-6)
        if grey:  # the greyscale file: three equal channels, the colour's luminance
            assert float(x.std()) < 1e-6 and 0.05 < float(x.mean()) < 0.7
        else:  # solid colour images come back as that colour
            assert torch.allclose(x, colour[:, None, None].expand_as(x), atol=1 / 255)


def test_imagefolder_with_train_and_test_subfolders(tmp_path):
    _write_tree(tmp_path / "plants" / "train", per_class=3, classes=("cat", "dog"))
    _write_tree(tmp_path / "plants" / "test", per_class=2, classes=("cat", "dog"))
    train = load_dataset(f"imagefolder:{tmp_path / 'plants'}", "train", image_size=12)
    test = load_dataset(f"imagefolder:{tmp_path / 'plants'}", "test", image_size=12)
    assert len(train) == 6 and len(test) == 4 and train.classes == ["cat", "dog"]
    assert train[0][0].shape == (3, 12, 12)
    limited = load_dataset(f"imagefolder:{tmp_path / 'plants'}", "train", limit=4)
    assert len(limited) == 4 and limited.classes == ["cat", "dog"]
    assert limited[0][0].shape == (3, 224, 224)  # the default size for folders


def test_imagefolder_transforms(tmp_path):
    root = _write_tree(tmp_path / "pets", per_class=4, classes=("cat", "dog"))
    aug = load_dataset(f"imagefolder:{root}", "train", image_size=16, augment=True)
    assert aug[0][0].shape == (3, 16, 16)
    norm = load_dataset(f"imagefolder:{root}", "train", image_size=16, normalize=True)
    raw = load_dataset(f"imagefolder:{root}", "train", image_size=16)
    mean = torch.tensor(norm.mean)[:, None, None]
    std = torch.tensor(norm.std)[:, None, None]
    assert torch.allclose(norm[0][0], (raw[0][0] - mean) / std, atol=1e-5)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataSpecError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataSpecError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{empty}")
    (empty / "cat").mkdir()
    (empty / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataSpecError, match="no images"):
        load_dataset(f"imagefolder:{empty}")
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DataSpecError, match="not a folder"):
        load_dataset(f"imagefolder:{f}")
    # a damaged (non-empty) image file is named when it is read
    (empty / "cat" / "bad.png").write_bytes(b"not a png at all")
    ds = load_dataset(f"imagefolder:{empty}", "train")
    with pytest.raises(DataSpecError, match="bad.png"):
        ds[0]


# ---------------------------------------------------------------------------
# load_dataset: CIFAR-10 (nothing is downloaded)
# ---------------------------------------------------------------------------


@pytest.fixture
def no_download(monkeypatch):
    import torchvision

    def fail(*args, **kwargs):
        raise AssertionError("a test tried to download CIFAR-10")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", fail)


def test_cifar10_absent_without_download(tmp_path, no_download):
    with pytest.raises(DataSpecError, match="download=True") as info:
        load_dataset(f"cifar10:{tmp_path}")
    assert "--download" in str(info.value) and str(tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def _write_fake_cifar(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [int(v) for v in rng.integers(0, 10, n)]}, f)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return folder


def test_cifar10_format_folder_not_the_official_bytes_is_read(tmp_path, no_download):
    # a folder in CIFAR-10's python format written by other code (its bytes differ from
    # the official release) is read as such: no checksum, no offer to download
    _write_fake_cifar(tmp_path)
    assert len(load_dataset(f"cifar10:{tmp_path}", "test")) == 6


def test_cifar10_reads_local_files(tmp_path, no_download):
    folder = _write_fake_cifar(tmp_path)
    train = load_dataset(f"cifar10:{tmp_path}", "train")
    test = load_dataset(f"cifar10:{folder}", "test")  # the extracted folder works too
    assert len(train) == 30 and len(test) == 6 and train.classes[0] == "airplane"
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)
    x, y = test[2]
    expected = torch.from_numpy(raw["data"][2].reshape(3, 32, 32).astype(np.float32)) / 255
    assert torch.allclose(x, expected) and y == raw["labels"][2]
    big = load_dataset(f"cifar10:{tmp_path}", "test", image_size=64, limit=4, normalize=True)
    assert len(big) == 4 and big[0][0].shape == (3, 64, 64) and big.mean[0] == 0.4914
    aug = load_dataset(f"cifar10:{tmp_path}", "train", augment=True)
    assert aug[0][0].shape == (3, 32, 32)
    assert len(load_dataset(f"cifar10:{tmp_path}", "transfer")) == 30
    assert len(load_dataset(f"cifar10:{tmp_path}", "val")) == 6
