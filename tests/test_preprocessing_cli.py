"""explain / quantify / compare never guess how images are read nor which class is which:
an image size or normalisation that no checkpoint records and no flag gives is refused,
images already at the size are read untouched, the resize rule is a recorded flag, the
preprocessing used is printed once and carried on the Pair, and the checkpoints' class
names index the data by name (--class-map renames; plain state dicts get a note)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from captum_unicam import cli
from captum_unicam.models import build_model, save_checkpoint
from captum_unicam.pipeline.pair import load_pair
from captum_unicam.pipeline.requests import ExplainRequest, PairRequest, QuantifyRequest

NAMES = ["disc", "bar", "ring", "cross"]  # the training order: not alphabetical


def _image(c: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """A ``side`` px square image; 40 gives 48 x 40 (taller than wide)."""
    img = rng.integers(1, 80, size=(48 if side == 40 else side, side, 3))
    img[side // 4 : side // 2 + c, side // 4 : 3 * side // 4] = [230, 40 * c, 60]
    return img.astype(np.uint8)


def _tree(root, side: int, names=NAMES, n: int = 3):
    """ROOT/{train,test}/<class>/*.png, ``n`` images of ``side`` px per class and part;
    returns ROOT and the pixels of each test file ``{(class, i): uint8 array}``."""
    rng = np.random.default_rng(side)
    pixels = {}
    for part in ("train", "test"):
        for c, name in enumerate(names):
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                pixels[(name, i)] = _image(c, side, rng)
                Image.fromarray(pixels[(name, i)]).save(root / part / name / f"{i}.png")
    return root, pixels


def _ckpt(path, seed: int, *, names=NAMES, preprocessing=None, plain: bool = False) -> str:
    torch.manual_seed(seed)
    model = build_model("small_resnet_s", len(names), **({} if plain else {"width": 2}))
    if plain:  # a plain state dict of the architecture as --arch names it
        torch.save(model.state_dict(), path)
    else:
        save_checkpoint(
            path,
            model,
            arch="small_resnet_s",
            num_classes=len(names),
            class_names=list(names),
            preprocessing=preprocessing,
        )
    return str(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    at32, px32 = _tree(d / "at32", 32)
    at40, px40 = _tree(d / "at40", 40)
    digits, _ = _tree(d / "digits", 32, names=["0", "1", "2", "3"])
    prep = {"image_size": 32, "resize": "shorter-side-crop", "normalize": "none"}
    return {
        "at32": str(at32),
        "px32": px32,
        "at40": str(at40),
        "px40": px40,
        "digits": str(digits),
        "dir": d,
        "named": {
            r: _ckpt(d / f"{r}.pt", i, preprocessing=prep)
            for i, r in enumerate(("student", "base"))
        },
        "bare": {r: _ckpt(d / f"{r}_bare.pt", i) for i, r in enumerate(("student", "base"))},
        "plain": {
            r: _ckpt(d / f"{r}_plain.pt", i, plain=True) for i, r in enumerate(("student", "base"))
        },
    }


def _argv(command, pair, data, out, *extra):
    argv = [
        command,
        "--student",
        pair["student"],
        "--base",
        pair["base"],
        "--data",
        f"imagefolder:{data}",
        "--out",
        str(out),
        "--batch-size",
        "6",
        "--layers",
        "L4",
        "--one-hot",
        "--no-progress",
    ]
    if command == "quantify":
        argv += ["--maps", "gradcam", "--n-bootstrap", "20"]
    return argv + list(extra)


def _run(capsys, argv):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# ---------------------------------------------------------------------------
# image size and normalisation: recorded or given, never guessed
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["explain", "quantify", "compare"])
def test_an_unrecorded_image_size_is_refused_naming_the_flag(folders, tmp_path, capsys, command):
    """Checkpoints without preprocessing (and plain state dicts) read 32 px images at 224
    px before; now the command refuses, naming --image-size, and writes nothing."""
    out = tmp_path / "r"
    for pair, extra in ((folders["bare"], []), (folders["plain"], ["--arch", "small_resnet_s"])):
        if command == "compare":
            argv = [
                "compare",
                "--student",
                pair["student"],
                "--base",
                pair["base"],
                "--data",
                f"imagefolder:{folders['at32']}",
                "--out",
                str(out),
                "--images",
                "8",
                "--no-progress",
                *extra,
            ]
        else:
            argv = _argv(command, pair, folders["at32"], out, *extra)
        code, _, err = _run(capsys, argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--image-size N" in err and "none is guessed" in err
        code, _, err = _run(capsys, argv + ["--image-size", "32"])
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--normalize none" in err and "input normalisation" in err
        assert not out.exists()


def test_given_preprocessing_is_used_printed_once_and_carried_on_the_pair(
    folders, tmp_path, capsys
):
    out = tmp_path / "r"
    argv = _argv(
        "explain",
        folders["bare"],
        folders["at32"],
        out,
        "--image-size",
        "32",
        "--normalize",
        "none",
    )
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "preprocessing:" in ln]
    assert len(lines) == 1, err
    assert "32 px (--image-size)" in lines[0] and "normalize none (--normalize)" in lines[0]
    assert "resize shorter-side-crop (default; images already 32 px are not resized)" in lines[0]
    assert "12 images of 4 classes" in lines[0]
    m = json.loads((out / "metrics.json").read_text())
    assert m["preprocessing"] == {
        "image_size": 32,
        "resize": "shorter-side-crop",
        "normalize": "none",
    }

    seen = []
    pair = load_pair(
        ExplainRequest(
            student=folders["bare"]["student"],
            base=folders["bare"]["base"],
            data=f"imagefolder:{folders['at32']}",
            out="unused",
            image_size=32,
            normalize="none",
            layers=("L4",),
            one_hot=True,
        ),
        info=seen.append,
    )
    assert seen == [pair.preprocessing_line]
    s = pair.data_summary
    assert s["preprocessing"] == {
        "image_size": 32,
        "resize": "shorter-side-crop",
        "normalize": "none",
        "augment": False,
    }
    assert s["preprocessing_sources"] == {
        "image_size": "image_size=",
        "resize": "default",
        "normalize": "normalize=",
    }
    assert (
        s["classes"] == NAMES and s["class_counts"] == {c: 3 for c in NAMES} and s["n_images"] == 12
    )
    assert s["spec"] == f"imagefolder:{folders['at32']}" and s["split"] == "test"


def test_recorded_preprocessing_is_read_from_the_checkpoints(folders):
    seen = []
    pair = load_pair(
        PairRequest(
            student=folders["named"]["student"],
            base=folders["named"]["base"],
            data=f"imagefolder:{folders['at32']}",
            out="unused",
            layers=("L4",),
            one_hot=True,
        ),
        info=seen.append,
    )
    assert pair.preprocessing.to_dict() == {
        "image_size": 32,
        "resize": "shorter-side-crop",
        "normalize": "none",
    }
    assert pair.data_summary["preprocessing_sources"] == {
        k: "recorded in the checkpoints" for k in ("image_size", "resize", "normalize")
    }
    assert "32 px (recorded in the checkpoints)" in seen[0] and pair.notes == []


def test_images_at_the_target_size_are_read_untouched(folders):
    """32 x 32 files at --image-size 32: every pixel is the file's / 255 (no 37 px resize
    and centre crop), whatever the resize rule."""
    for resize in (None, "exact", "pad", "none"):
        pair = load_pair(
            PairRequest(
                student=folders["bare"]["student"],
                base=folders["bare"]["base"],
                data=f"imagefolder:{folders['at32']}",
                out="unused",
                image_size=32,
                normalize="none",
                resize=resize,
                layers=("L4",),
                one_hot=True,
            ),
            info=lambda line: None,
        )
        files = pair.data.samples
        for k, (path, label) in enumerate(files):
            name, i = pair.class_names[label], int(path.rsplit("/", 1)[1].split(".")[0])
            expected = torch.from_numpy(folders["px32"][(name, i)]).permute(2, 0, 1).float() / 255
            assert torch.equal(pair.data[k][0], expected), (resize, path)
        checked = len(files)
        assert checked == 12


def test_the_resize_rule_is_a_recorded_flag(folders, tmp_path, capsys):
    """48 x 40 files at --image-size 32: --resize exact is torchvision's resize to 32 x 32,
    pad keeps the whole image between black columns, none refuses."""
    from torchvision.transforms import functional as TF

    base = ["--image-size", "32", "--normalize", "none"]
    got = {}
    for rule in ("exact", "pad"):
        pair = load_pair(
            PairRequest(
                student=folders["bare"]["student"],
                base=folders["bare"]["base"],
                data=f"imagefolder:{folders['at40']}",
                out="unused",
                image_size=32,
                normalize="none",
                resize=rule,
                layers=("L4",),
                one_hot=True,
            ),
            info=lambda line: None,
        )
        path, label = pair.data.samples[0]
        original = folders["px40"][
            (pair.class_names[label], int(path.rsplit("/", 1)[1].split(".")[0]))
        ]
        got[rule] = pair.data[0][0]
        assert pair.data_summary["preprocessing"]["resize"] == rule
    x = torch.from_numpy(original).permute(2, 0, 1).float() / 255
    assert torch.allclose(
        got["exact"], TF.resize(x, [32, 32], antialias=True).clamp(0, 1), atol=1e-6
    )
    dark = (got["pad"].abs().sum(dim=(0, 1)) == 0).tolist()  # all-black columns
    assert dark[0] and dark[-1] and not any(dark[8:24])
    assert not any((got["exact"].abs().sum(dim=(0, 1)) == 0).tolist())
    out = tmp_path / "q"
    code, _, err = _run(
        capsys, _argv("quantify", folders["bare"], folders["at40"], out, *base, "--resize", "pad")
    )
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["preprocessing"]["resize"] == "pad"
    assert "resize pad (--resize)" in err
    code, _, err = _run(
        capsys,
        _argv(
            "quantify", folders["bare"], folders["at40"], tmp_path / "n", *base, "--resize", "none"
        ),
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    code, _, err = _run(
        capsys,
        _argv(
            "quantify", folders["bare"], folders["at40"], tmp_path / "n", *base, "--resize", "crop"
        ),
    )
    assert code == 2 and "--resize" in err and "shorter-side-crop" in err


# ---------------------------------------------------------------------------
# classes by name
# ---------------------------------------------------------------------------


def test_recorded_class_names_index_the_data_by_name(folders):
    """Folders sort as bar, cross, disc, ring; the checkpoints were trained on disc, bar,
    ring, cross: label i is NAMES[i] for every image."""
    pair = load_pair(
        PairRequest(
            student=folders["named"]["student"],
            base=folders["named"]["base"],
            data=f"imagefolder:{folders['at32']}",
            out="unused",
            layers=("L4",),
            one_hot=True,
        ),
        info=lambda line: None,
    )
    assert pair.class_names == NAMES
    assert pair.class_match == {"Student": "by name", "Base": "by name"}
    assert pair.data_summary["class_order"] == "the checkpoints' class names"
    for path, label in pair.data.samples:
        assert path.split("/")[-2] == NAMES[label]


def test_class_names_that_do_not_match_are_refused_then_mapped(folders, tmp_path, capsys):
    out = tmp_path / "r"
    argv = _argv("explain", folders["named"], folders["digits"], out)
    code, _, err = _run(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "disc" in err and "'0'" in err and not out.exists()
    code, _, err = _run(capsys, argv + ["--class-map", "0=disc,1=bar,2=ring,3=cross"])
    assert code == 0, err
    pair = load_pair(
        PairRequest(
            student=folders["named"]["student"],
            base=folders["named"]["base"],
            data=f"imagefolder:{folders['digits']}",
            out="unused",
            layers=("L4",),
            one_hot=True,
            class_map={"3": "cross", "0": "disc", "2": "ring", "1": "bar"},
        ),
        info=lambda line: None,
    )
    assert pair.class_names == NAMES and pair.data_summary["class_map"]["3"] == "cross"
    for bad in ("0=disc,1", "0=disc,0=bar"):
        code, _, err = _run(capsys, argv + ["--class-map", bad])
        assert code == 2 and "--class-map" in err


def test_checkpoints_in_other_class_orders_are_refused(folders, tmp_path, capsys):
    prep = {"image_size": 32, "normalize": "none"}
    other = _ckpt(
        tmp_path / "other.pt", 3, names=["bar", "disc", "ring", "cross"], preprocessing=prep
    )
    code, _, err = _run(
        capsys,
        _argv(
            "explain",
            {"student": folders["named"]["student"], "base": other},
            folders["at32"],
            tmp_path / "r",
        ),
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "in another order" in err and "Student" in err and "Base" in err


def test_plain_state_dicts_get_a_class_order_note_in_the_report(folders, tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = _run(
        capsys,
        _argv(
            "explain",
            folders["plain"],
            folders["at32"],
            out,
            "--arch",
            "small_resnet_s",
            "--image-size",
            "32",
            "--normalize",
            "none",
        ),
    )
    assert code == 0, err
    # the sanity lines of these untrained models (near chance) aside
    warned = [ln for ln in err.splitlines() if "warning" in ln and "of chance" not in ln]
    assert len(warned) == 1 and "record no class names" in warned[0]
    assert "0 = bar, 1 = cross, 2 = disc, 3 = ring" in warned[0] and "--class-map" in warned[0]
    assert "record no class names" in (out / "index.html").read_text()
    pair = load_pair(
        PairRequest(
            student=folders["plain"]["student"],
            base=folders["plain"]["base"],
            data=f"imagefolder:{folders['at32']}",
            out="unused",
            arch="small_resnet_s",
            image_size=32,
            normalize="none",
            layers=("L4",),
            one_hot=True,
        ),
        info=lambda line: None,
    )
    assert pair.class_match == {"Student": "unnamed", "Base": "unnamed"}
    assert any("record no class names" in n for n in pair.notes)
    assert pair.data_summary["class_order"] == "the data's"


# ---------------------------------------------------------------------------
# the evaluated set and the flags
# ---------------------------------------------------------------------------


def test_explain_and_quantify_evaluate_the_same_set_by_default():
    """explain evaluated a seeded subset of 256 images by default, quantify all of them:
    one Teacher read two accuracies. Both now default to all images (--limit for both)."""
    parser = cli.build_parser()
    common = ["--student", "s.pt", "--base", "b.pt", "--data", "controlled", "--out", "r"]
    ex, qu = parser.parse_args(["explain", *common]), parser.parse_args(["quantify", *common])
    assert ex.limit is None and qu.limit is None
    assert (
        ExplainRequest("s", "b", "d", "o").limit is None
        and QuantifyRequest("s", "b", "d", "o").limit is None
    )


def test_resize_names_agree_with_the_data_layer():
    from captum_unicam.data.resize import RESIZE_RULES
    from captum_unicam.pipeline.requests import RESIZE_NAMES

    assert RESIZE_NAMES == RESIZE_RULES
    compare = cli.build_parser().parse_args(
        [
            "compare",
            "--student",
            "s",
            "--base",
            "b",
            "--data",
            "d",
            "--out",
            "o",
            "--resize",
            "pad",
            "--no-progress",
        ]
    )
    assert compare.resize == "pad" and compare.progress is False
