"""Image folders and CIFAR-format folders as they come from the wild: pixel modes, hidden
files, links out of the data folder, size limits from the header, damaged files, the
whole-folder header check, classes matched by name, explicit resize rules."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from captum_unicam.data import (
    MAX_ASPECT_RATIO,
    ControlledShapes,
    DataSpecError,
    check_images,
    data_summary,
    image_header,
    load_dataset,
    read_image,
)

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _rgb(path: Path, colour=(200, 40, 10), size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _smooth(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth uint8 RGB image (h, w, 3): gradients, so that resampling is well defined."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.2, 1.0, 2)
    chans = [xx / max(w - 1, 1), yy / max(h - 1, 1), 0.5 + 0.4 * np.sin(a * xx / 3 + b * yy / 5)]
    return (np.stack(chans, -1) * 255).round().astype(np.uint8)


def _tree(root: Path, parts=("train", "test"), classes=("cat", "dog", "fox"), n=3) -> Path:
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255), "fox": (0, 255, 0), "owl": (9, 9, 9)}
    for part in parts:
        for c in classes:
            for i in range(n):
                _rgb(root / part / c / f"{i}.png", colours.get(c, (1, 2, 3)))
    return root


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------------------
# 1. pixel modes, read as the user sees them
# ---------------------------------------------------------------------------


def test_16_bit_png_is_scaled_to_its_range(tmp_path):
    # before: Pillow's RGB conversion clipped every value above 255 (a white image)
    a = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode in ("I;16", "I")
    x = read_image(str(tmp_path / "x.png"))
    assert x.shape == (3, 48, 64) and x.dtype == torch.float32
    expected = torch.from_numpy(a.astype(np.float64) / 65535).float()
    for c in range(3):
        assert torch.allclose(x[c], expected, atol=1e-6)
    assert float(x.std()) > 0.1  # not a constant image


def test_float_tiff_in_unit_range_is_read_as_is_and_others_refused(tmp_path):
    f = np.linspace(0, 1, 32 * 16, dtype=np.float32).reshape(16, 32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    x = read_image(str(tmp_path / "f.tif"))
    assert torch.allclose(x[1], torch.from_numpy(f), atol=1e-7)  # before: all black
    Image.fromarray(f * 3 - 1).save(tmp_path / "g.tif")
    with pytest.raises(DataSpecError, match=r"g\.tif.*float image with values in \[-1, 2\]"):
        read_image(str(tmp_path / "g.tif"))
    Image.fromarray((f * 1000).astype(np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(DataSpecError, match=r"i32\.tif.*mode 'I'.*no fixed range"):
        read_image(str(tmp_path / "i32.tif"))


def test_transparency_is_composited_over_white(tmp_path):
    la = Image.new("LA", (4, 4), (100, 255))
    la.putpixel((0, 0), (100, 0))  # fully transparent
    la.putpixel((1, 0), (0, 128))  # half transparent black
    la.save(tmp_path / "la.png")
    x = read_image(str(tmp_path / "la.png"))
    assert torch.allclose(x[:, 0, 0], torch.ones(3))
    assert torch.allclose(x[:, 0, 1], torch.full((3,), 1 - 128 / 255), atol=1e-6)
    assert torch.allclose(x[:, 2, 2], torch.full((3,), 100 / 255), atol=1e-6)
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((3, 3), 0)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    y = read_image(str(tmp_path / "p.png"))
    assert torch.allclose(y[:, 3, 3], torch.ones(3))  # the transparent index: white
    assert torch.allclose(y[:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


def test_cmyk_and_greyscale_modes_and_exif_orientation(tmp_path):
    Image.new("CMYK", (5, 3), (0, 255, 0, 0)).save(tmp_path / "c.tif")
    x = read_image(str(tmp_path / "c.tif"))
    oracle = np.asarray(Image.open(tmp_path / "c.tif").convert("RGB"), dtype=np.float32) / 255
    assert torch.allclose(x, torch.from_numpy(oracle).permute(2, 0, 1))
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, 1.0]))  # magenta
    # EXIF orientation 6 (rotate 90 degrees): shown 10 wide and 20 high
    img = Image.fromarray(_smooth(20, 10))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    h = image_header(str(tmp_path / "r.jpg"))
    assert (h.width, h.height, h.mode, h.format) == (10, 20, "RGB", "JPEG")
    r = read_image(str(tmp_path / "r.jpg"))
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "r.jpg")), dtype=np.float32)
    assert r.shape == (3, 20, 10)
    assert torch.allclose(r, torch.from_numpy(shown / 255).permute(2, 0, 1))


# ---------------------------------------------------------------------------
# 1. limits from the header, damaged and empty files
# ---------------------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch):
    """Decoding pixels fails: what still works reads headers only."""

    def fail(self, *a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)


def test_thin_and_huge_images_are_refused_from_the_header(tmp_path, no_decoding):
    thin = tmp_path / "thin.png"
    Image.new("L", (200_000, 1), 0).save(thin)  # about 700 bytes, 1.2 GB once resized
    assert thin.stat().st_size < 5000
    with pytest.raises(
        DataSpecError,
        match=r"thin\.png.*200000 x 1.*aspect ratio of 200,000.*"
        r"limit of 20 \(max_aspect_ratio\)",
    ):
        read_image(str(thin))
    big = _rgb(tmp_path / "big.png", size=(300, 200))
    with pytest.raises(
        DataSpecError, match=r"big\.png.*60,000 pixels.*limit of 10,000 \(max_pixels\)"
    ):
        read_image(str(big), max_pixels=10_000)
    h = image_header(str(big))
    assert (h.width, h.height, h.mode, h.format) == (300, 200, "RGB", "PNG")
    assert MAX_ASPECT_RATIO == 20


def test_limits_apply_to_datasets_and_are_checked(tmp_path):
    root = _tree(tmp_path / "d", parts=(), classes=())
    _rgb(root / "a" / "0.png", size=(30, 30))
    _rgb(root / "b" / "0.png", size=(30, 30))
    Image.new("L", (2000, 1)).save(root / "b" / "thin.png")
    ds = load_dataset(f"imagefolder:{root}", "train", image_size=8, test_fraction=0.01)
    i = [Path(p).name for p, _ in ds.base.samples].index("thin.png")
    with pytest.raises(DataSpecError, match="thin.png.*aspect ratio"):
        ds.base[i]
    small = load_dataset(f"imagefolder:{root}", "train", image_size=8, max_pixels=100)
    with pytest.raises(DataSpecError, match=r"0\.png.*900 pixels.*max_pixels"):
        small.base[0]
    for bad in ({"max_pixels": 0}, {"max_aspect_ratio": 0.5}, {"max_pixels": True}):
        with pytest.raises(DataSpecError, match=next(iter(bad))):
            load_dataset(f"imagefolder:{root}", **bad)


def test_damaged_truncated_and_empty_files_are_named(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_smooth(64, 64)).save(good)
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    (tmp_path / "empty.png").write_bytes(b"")
    for name, what in (("cut.png", "damaged"), ("junk.png", "damaged"), ("empty.png", "zero-byte")):
        with pytest.raises(DataSpecError, match=re.escape(name) + ".*" + what):
            read_image(str(tmp_path / name))
    assert read_image(str(good)).shape == (3, 64, 64)


# ---------------------------------------------------------------------------
# 1. hidden files and folders, links out of the data folder
# ---------------------------------------------------------------------------


def _hide_things(root: Path) -> None:
    cat = root / "test" / "cat"
    (cat / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS companion file
    (cat / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    _rgb(cat / ".thumbnails" / "0.png", (1, 1, 1))
    _rgb(cat / ".hidden.png", (1, 1, 1))
    _rgb(root / "test" / ".Trash" / "0.png")  # a hidden class folder
    _rgb(root / "train" / "__MACOSX" / "0.png")
    (root / "train" / "dog" / "._1.png").write_bytes(b"junk")


def test_hidden_files_and_folders_are_skipped_everywhere(tmp_path):
    root = _tree(tmp_path / "pets")
    clean = {s: load_dataset(f"imagefolder:{root}", s, image_size=8) for s in ("train", "test")}
    _hide_things(root)
    with _no_warnings():
        for split, ref in clean.items():
            ds = load_dataset(f"imagefolder:{root}", split, image_size=8)
            assert ds.samples == ref.samples and ds.classes == ["cat", "dog", "fox"]
            for i in range(len(ds)):
                ds[i]  # before: '._0.png' ended the run as a damaged image
        summary = check_images(root)
    assert summary.n_images == 18
    # an unlabelled folder (one sub-folder of images) skips them too
    t = tmp_path / "transfer"
    _rgb(t / "images" / "0.png")
    _rgb(t / "images" / ".thumbnails" / "1.png")
    (t / "images" / "._0.png").write_bytes(b"junk")
    assert len(load_dataset(f"imagefolder:{t}", "transfer", image_size=8, test_fraction=0.01)) == 1


def test_links_out_of_the_data_folder_are_skipped_with_one_warning(tmp_path):
    root = _tree(tmp_path / "pets")
    outside = tmp_path / "system_icons"
    for i in range(4):
        _rgb(outside / f"icon{i}.png", (5, 5, 5))
    cat = root / "train" / "cat"
    (cat / "icons").symlink_to(outside)
    (cat / "one.png").symlink_to(outside / "icon0.png")
    (root / "train" / "fox" / "inside.png").symlink_to(root / "test" / "fox" / "0.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(f"imagefolder:{root}", "train", image_size=8)
    out = [str(w.message) for w in caught if "lead out of the data folder" in str(w.message)]
    assert len(out) == 1 and "2 symbolic link(s)" in out[0]
    assert "cat/icons" in out[0] and "cat/one.png" in out[0] and "follow_links=True" in out[0]
    assert len(ds) == 10  # 9 files and the link inside the data folder
    assert not any(str(outside) in os.path.realpath(p) for p, _ in ds.samples)
    followed = load_dataset(f"imagefolder:{root}", "train", image_size=8, follow_links=True)
    assert len(followed) == 14  # the 4 icons once (the file link is the same file as icon0)


# ---------------------------------------------------------------------------
# 2. the whole folder checked from the headers before training
# ---------------------------------------------------------------------------


def test_check_images_finds_a_damaged_test_image_before_training(tmp_path, no_decoding):
    root = _tree(tmp_path / "pets")
    _rgb(root / "train" / "dog" / "wide.png", size=(16, 8))
    ok = check_images(f"imagefolder:{root}")
    assert ok.n_images == 19 and ok.sizes == {(8, 8): 18, (16, 8): 1} and ok.modes == {"RGB": 19}
    assert ok.summary().startswith("19 images; 2 size(s): 8 x 8 (18), 16 x 8 (1)")
    assert ok.to_dict()["sizes"] == {"16x8": 1, "8x8": 18}
    (root / "test" / "fox" / "bad.png").write_bytes(b"not an image at all")
    (root / "test" / "cat" / "bad2.jpg").write_bytes(b"\xff\xd8 truncated")
    train = load_dataset(f"imagefolder:{root}", "train", image_size=8)
    assert check_images(train).n_images == 10  # the train part alone is fine
    test = load_dataset(f"imagefolder:{root}", "test", image_size=8)
    for target in (test, root, str(root)):
        with pytest.raises(DataSpecError, match=r"2 of (11|21) image files cannot be used") as info:
            check_images(target)
        assert "bad.png" in str(info.value) and "bad2.jpg" in str(info.value)


def test_check_images_through_subsets_and_in_memory_data(tmp_path):
    root = _tree(tmp_path / "pets", parts=("",), classes=("cat", "dog"), n=5)
    sub = load_dataset(f"imagefolder:{root}", "test", image_size=8, limit=1)
    assert check_images(sub).n_images == 1
    mem = check_images(ControlledShapes(7))
    assert mem.in_memory and mem.n_images == 7
    _rgb(root / "cat" / "big.png", size=(12, 12))
    found = []
    for split in ("train", "test"):  # big.png is in one of the two parts
        part = load_dataset(f"imagefolder:{root}", split, image_size=8, resize="none")
        try:
            check_images(part)
        except DataSpecError as e:
            found.append(str(e))
    assert len(found) == 1
    assert re.search(r"big\.png.*12 x 12 pixels, not 8 x 8.*resize='none'", found[0])
    with pytest.raises(DataSpecError, match=r"big\.png.*12 x 12"):
        check_images(root, image_size=8, resize="none")
    assert check_images(root).n_images == 11


# ---------------------------------------------------------------------------
# 3. classes by name
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "test_classes,message",
    [
        (("cat", "fox"), r"missing in test/: \['dog'\]"),
        (("cat", "dog", "fox", "owl"), r"extra in test/: \['owl'\]"),
        (
            ("cat", "dgo", "fox"),
            r"missing in test/: \['dog'\]; extra in test/: \['dgo'\] \(renamed\?\)",
        ),
    ],
)
def test_train_and_test_class_folders_are_compared_by_name(tmp_path, test_classes, message):
    # before: a test/ without 'dog' labelled its 'fox' images 1 ('dog' in train/)
    root = tmp_path / "pets"
    _tree(root, parts=("train",))
    _tree(root, parts=("test",), classes=test_classes)
    for split in ("train", "test"):
        with pytest.raises(DataSpecError, match=message + ".*class_map"):
            load_dataset(f"imagefolder:{root}", split, image_size=8)


def test_val_part_is_compared_too(tmp_path):
    root = _tree(tmp_path / "pets")
    _tree(root, parts=("val",), classes=("cat", "dog"))
    with pytest.raises(DataSpecError, match=r"train/ and val/ differ.*missing in val/: \['fox'\]"):
        load_dataset(f"imagefolder:{root}", "test", image_size=8)


def _colour_class(x: torch.Tensor) -> str:
    return {0: "cat", 2: "dog", 1: "fox"}[int(x[:, 0, 0].argmax())]


def test_expected_classes_index_the_data_by_name(tmp_path):
    root = _tree(tmp_path / "pets")
    order = ["fox", "cat", "dog"]
    for split in ("train", "test"):
        ds = load_dataset(f"imagefolder:{root}", split, image_size=8, expected_classes=order)
        assert ds.classes == order and ds.class_to_idx == {"fox": 0, "cat": 1, "dog": 2}
        for i in range(len(ds)):
            x, y = ds[i]
            assert order[y] == _colour_class(x) and ds.targets[i] == y
    with pytest.raises(DataSpecError, match=r"missing in .*: \['owl'\]"):
        load_dataset(f"imagefolder:{root}", "test", expected_classes=["cat", "dog", "fox", "owl"])
    with pytest.raises(DataSpecError, match=r"extra in .*: \['fox'\]"):
        load_dataset(f"imagefolder:{root}", "test", expected_classes=["cat", "dog"])
    with pytest.raises(DataSpecError, match="names a class twice"):
        load_dataset(f"imagefolder:{root}", "test", expected_classes=["cat", "cat", "fox"])


def test_class_map_renames_folders(tmp_path):
    root = tmp_path / "digits"
    for d in ("0", "1"):
        for i in range(3):
            _rgb(root / d / f"{i}.png", (200 * int(d), 0, 0))
    ds = load_dataset(
        f"imagefolder:{root}",
        "test",
        image_size=8,
        class_map={"0": "zero", "1": "one"},
        expected_classes=["zero", "one"],
    )
    assert ds.classes == ["zero", "one"]
    for i in range(len(ds)):
        x, y = ds[i]
        assert y == int(float(x[0, 0, 0]) > 0.5)
    plain = load_dataset(f"imagefolder:{root}", "test", image_size=8, class_map={"0": "zero"})
    assert plain.classes == ["1", "zero"]
    with pytest.raises(DataSpecError, match=r"class_map renames \['2'\], which is not a class"):
        load_dataset(f"imagefolder:{root}", class_map={"2": "two"})
    with pytest.raises(DataSpecError, match="the same name"):
        load_dataset(f"imagefolder:{root}", class_map={"0": "x", "1": "x"})
    with pytest.raises(DataSpecError, match="class_map must map"):
        load_dataset(f"imagefolder:{root}", class_map={"0": 3})


def test_split_of_a_folder_does_not_depend_on_the_class_order(tmp_path):
    root = _tree(tmp_path / "pets", parts=("",), n=6)

    def test_files(**kw):
        ds = load_dataset(f"imagefolder:{root}", "test", image_size=8, **kw)
        return sorted(ds.base.samples[i][0] for i in ds.indices)

    assert test_files() == test_files(expected_classes=["fox", "dog", "cat"])
    assert test_files() == test_files(class_map={"cat": "zzz"})


def test_controlled_and_cifar_in_a_given_class_order(tmp_path):
    ref = ControlledShapes(20, seed=1)
    order = ["square", "circle", "cross", "triangle"]
    ds = load_dataset("controlled:1", "train", limit=20, expected_classes=order)
    assert ds.classes == order
    for i in range(20):
        x, y, m = ds[i]
        x0, y0, m0 = ref[i]
        assert torch.equal(x, x0) and torch.equal(m, m0) and order[y] == ref.classes[y0]
    assert ds.targets == [order.index(ref.classes[t]) for t in ref.targets]
    same = load_dataset("controlled:1", limit=5, expected_classes=list(ref.classes))
    assert isinstance(same, ControlledShapes)
    with pytest.raises(DataSpecError, match=r"missing in the controlled dataset: \['dog'\]"):
        load_dataset(
            "controlled", limit=5, expected_classes=["circle", "square", "triangle", "dog"]
        )
    folder = _cifar(tmp_path)
    raw = pickle.loads((folder / "test_batch").read_bytes())
    names = NAMES[::-1]
    c = load_dataset(f"cifar10:{tmp_path}", "test", expected_classes=names)
    assert c.classes == names
    assert c.targets == [9 - v for v in raw["labels"]]


# ---------------------------------------------------------------------------
# 4. no silent re-cropping: explicit resize rules, recorded
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("resize", ["shorter-side-crop", "exact", "pad", "none"])
def test_images_at_the_target_size_are_not_changed(tmp_path, resize):
    # before: a 32 x 32 image at image_size 32 was resized to 37 and centre-cropped
    root = tmp_path / "d"
    arrays = {}
    for c in ("a", "b"):
        arrays[c] = _smooth(32, 32, seed=ord(c))
        (root / c).mkdir(parents=True)
        Image.fromarray(arrays[c]).save(root / c / "0.png")
    ds = load_dataset(
        f"imagefolder:{root}", "train", image_size=32, resize=resize, test_fraction=0.01
    )
    for i in range(len(ds)):
        x, y = ds[i]
        expected = torch.from_numpy(arrays[ds.classes[y]].astype(np.float32) / 255).permute(2, 0, 1)
        assert torch.equal(x, expected)
    assert ds.preprocessing == {
        "image_size": 32,
        "resize": resize,
        "normalize": "none",
        "augment": False,
    }


def _pil_resized(a: np.ndarray, w: int, h: int) -> torch.Tensor:
    img = Image.fromarray(a).resize((w, h), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def test_resize_rules_on_an_image_of_another_size(tmp_path):
    a = _smooth(96, 48)  # 96 wide, 48 high
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.fromarray(a).save(root / c / "0.png")

    def item(resize):
        ds = load_dataset(
            f"imagefolder:{root}", "train", image_size=24, resize=resize, test_fraction=0.01
        )
        assert ds.preprocessing["resize"] == resize
        return ds[0][0]

    tol = 3 / 255  # torch's antialiased bilinear against Pillow's
    exact = item("exact")
    assert exact.shape == (3, 24, 24)
    assert (exact - _pil_resized(a, 24, 24)).abs().max() < tol
    crop = item("shorter-side-crop")  # to 48 x 24, then the centre 24 columns
    assert (crop - _pil_resized(a, 48, 24)[:, :, 12:36]).abs().max() < tol
    pad = item("pad")  # to 24 x 12, then 6 black rows above and below
    black = torch.zeros(3, 6, 24)
    assert torch.equal(pad[:, :6], black) and torch.equal(pad[:, 18:], black)
    assert (pad[:, 6:18] - _pil_resized(a, 24, 12)).abs().max() < tol
    with pytest.raises(DataSpecError, match=r"0\.png.*96 x 48 pixels, not 24 x 24.*resize='none'"):
        item("none")
    with pytest.raises(DataSpecError, match="resize must be one of"):
        load_dataset(f"imagefolder:{root}", resize="crop")


def test_preprocessing_is_recorded_for_every_scheme(tmp_path):
    _cifar(tmp_path)
    c = load_dataset(
        f"cifar10:{tmp_path}",
        "train",
        image_size=40,
        resize="pad",
        normalize=True,
        augment=True,
        limit=3,
    )
    assert c.preprocessing == {
        "image_size": 40,
        "resize": "pad",
        "normalize": "cifar10",
        "augment": True,
    }
    assert c[0][0].shape == (3, 40, 40)
    with pytest.raises(DataSpecError, match="32 x 32 pixels, not 40 x 40"):
        load_dataset(f"cifar10:{tmp_path}", "test", image_size=40, resize="none")
    g = load_dataset("controlled", limit=3, image_size=40)
    assert g.preprocessing == {
        "image_size": 40,
        "resize": None,
        "normalize": "none",
        "augment": False,
    }
    root = _tree(tmp_path / "pets")
    f = load_dataset(f"imagefolder:{root}", "test", normalize=True)
    assert f.preprocessing == {
        "image_size": 224,
        "resize": "shorter-side-crop",
        "normalize": "imagenet",
        "augment": False,
    }


# ---------------------------------------------------------------------------
# 5. CIFAR-format folders
# ---------------------------------------------------------------------------

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar(root: Path, n=4, protocol=4, keys=str, edit=None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            keys("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            keys("labels"): [int(v) for v in rng.integers(0, 10, n)],
        }
        if edit is not None and name == "test_batch":
            edit(d)
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
    meta = {keys("label_names"): [keys(c) for c in NAMES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


@pytest.fixture
def no_download(monkeypatch):
    import torchvision

    def fail(*args, **kwargs):
        raise AssertionError("a test tried to download CIFAR-10")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", fail)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("keys", [str, str.encode], ids=["str-keys", "bytes-keys"])
def test_cifar_format_folders_are_read_exactly(tmp_path, no_download, protocol, keys):
    # before: torchvision's MD5 check refused every folder but the official release
    folder = _cifar(tmp_path, protocol=protocol, keys=keys)
    raw = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
    data, labels = raw[keys("data")], raw[keys("labels")]
    ds = load_dataset(f"cifar10:{tmp_path}", "test", download=True)  # present: nothing fetched
    assert ds.classes == NAMES and len(ds) == 4 and ds.targets == labels
    for i in range(4):
        x, y = ds[i]
        expected = torch.from_numpy(data[i].reshape(3, 32, 32).astype(np.float32) / 255)
        assert torch.equal(x, expected) and y == labels[i]
    assert len(load_dataset(f"cifar10:{folder}", "train")) == 20


class _Reduce:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def test_malicious_cifar_pickles_never_run(tmp_path, no_download):
    marker = tmp_path / "ran"
    folder = _cifar(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(_Reduce(os.system, f"touch {marker}")))
    with pytest.raises(
        DataSpecError,
        match=r"test_batch.*not a batch in CIFAR-10's python "
        r"format.*posix.system|test_batch.*os.system",
    ) as info:
        load_dataset(f"cifar10:{tmp_path}", "test")
    assert not marker.exists() and "download" not in str(info.value)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": _Reduce(eval, "1")}))
    with pytest.raises(DataSpecError, match=r"batches\.meta.*builtins\.eval"):
        load_dataset(f"cifar10:{tmp_path}", "train")


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda d: d.update(data=d["data"].astype(np.float32)),
            r"uint8 array of shape \(N, 3072\), got float32",
        ),
        (lambda d: d.update(data=d["data"][:, :3000]), r"got uint8 \(4, 3000\)"),
        (lambda d: d.update(labels=[0, 1, 2, 10]), r"label 10 is outside 0\.\.9"),
        (lambda d: d.update(labels=[0, 1, 2]), "4 images but 3 labels"),
        (lambda d: d.update(labels=["a"] * 4), "'labels' must be a list of ints"),
        (lambda d: d.pop("labels"), "no 'labels' entry"),
    ],
)
def test_malformed_cifar_batches_are_named_without_offering_a_download(
    tmp_path, no_download, edit, message
):
    _cifar(tmp_path, edit=edit)
    with pytest.raises(DataSpecError, match=r"test_batch'?:? .*" + message) as info:
        load_dataset(f"cifar10:{tmp_path}", "test")
    assert "download" not in str(info.value)


def test_missing_or_damaged_cifar_files(tmp_path, no_download):
    folder = _cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataSpecError, match="has no 'data_batch_3'") as info:
        load_dataset(f"cifar10:{tmp_path}", "train")
    assert "download" not in str(info.value)
    assert len(load_dataset(f"cifar10:{tmp_path}", "test")) == 4
    (folder / "test_batch").write_bytes(b"\x80\x04 truncated")
    with pytest.raises(DataSpecError, match="test_batch.*not a batch") as info:
        load_dataset(f"cifar10:{tmp_path}", "test")
    assert "download" not in str(info.value)


def test_data_summary_and_checks_through_a_wrapper(tmp_path):
    class Wrapper(torch.utils.data.Dataset):  # as the pipeline's normalising wrapper
        def __init__(self, base):
            self.base, self.targets = base, base.targets

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            return self.base[i]

    root = _tree(tmp_path / "pets", n=2)
    _rgb(root / "test" / "dog" / "odd.png", size=(9, 8))
    ds = load_dataset(
        f"imagefolder:{root}",
        "test",
        image_size=8,
        resize="none",
        expected_classes=["dog", "cat", "fox"],
    )
    s = data_summary(Wrapper(ds))
    assert s == {
        "classes": ["dog", "cat", "fox"],
        "n_images": 7,
        "class_counts": {"dog": 3, "cat": 2, "fox": 2},
        "preprocessing": {"image_size": 8, "resize": "none", "normalize": "none", "augment": False},
    }
    with pytest.raises(DataSpecError, match=r"odd\.png.*9 x 8 pixels, not 8 x 8"):
        check_images(Wrapper(ds))  # the rule is found through the wrapper
    g = data_summary(load_dataset("controlled", "test", limit=8))
    assert g["class_counts"] == {"circle": 2, "square": 2, "triangle": 2, "cross": 2}


def test_unlabelled_folder_is_read_whole(tmp_path):
    # before: a transfer folder without train/ and test/ lost 20 % of its images to a
    # test part that is never used (and a flat folder was refused)
    t = tmp_path / "transfer"
    for i in range(7):
        _rgb(t / f"{i}.png")
    for i in range(3):
        _rgb(t / "more" / f"{i}.png")
    _rgb(t / ".thumbnails" / "x.png")
    (t / "._0.png").write_bytes(b"junk")
    ds = load_dataset(f"imagefolder:{t}", "transfer", image_size=8, unlabelled=True)
    assert len(ds) == 10 and ds.classes == ["unlabelled"] and set(ds.targets) == {0}
    assert ds[9][0].shape == (3, 8, 8)
    assert len(load_dataset(f"imagefolder:{t}", "transfer", unlabelled=True, limit=4)) == 4
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DataSpecError, match="unlabelled image folder .* holds no images"):
        load_dataset(f"imagefolder:{empty}", "transfer", unlabelled=True)
