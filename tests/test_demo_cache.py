"""The demo's model cache replaces only files it wrote: a user's own teacher.pt, base.pt
and student.pt in --cache-dir stay byte-identical (refused before any training), while the
demo's own stale files are still replaced and its cache still reused."""

from __future__ import annotations

import json

import pytest

from captum_unicam import cli
from captum_unicam.errors import OutputError
from captum_unicam.pipeline import cache as model_cache
from captum_unicam.pipeline import demo

ROLES = ("teacher", "base", "student")


@pytest.fixture
def tiny(monkeypatch):
    """The quick recipe on a few images and one epoch; counts the trainings."""
    real = demo.demo_recipe
    trainings = []

    def tiny_recipe(seed=0, quick=False):
        r = real(seed, quick=True)
        r["sizes"] = {"teacher": 32, "base": 16, "student": 32, "test": 16}
        r["epochs"] = {"teacher": 1, "base": 1, "student": 1}
        r["batch_size"] = {"teacher": 16, "base": 8, "student": 16}
        return r

    real_train = demo._train_roles

    def counted(*args, **kwargs):
        trainings.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(demo, "demo_recipe", tiny_recipe)
    monkeypatch.setattr(demo, "_train_roles", counted)
    return trainings


def _users_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    content = {}
    for role in ROLES:
        content[role] = f"my own {role} model".encode()
        (folder / f"{role}.pt").write_bytes(content[role])
    return content


def test_a_users_own_files_are_never_replaced(tiny, tmp_path):
    mine = _users_files(tmp_path / "cache")
    with pytest.raises(OutputError, match="was not written by this cache"):
        demo.train_demo_models(0, quick=True, cache_dir=tmp_path / "cache", progress=False)
    assert tiny == []  # refused before any training
    for role in ROLES:
        assert (tmp_path / "cache" / f"{role}.pt").read_bytes() == mine[role]
    assert not (tmp_path / "cache" / model_cache.MARKER).exists()


def test_the_command_line_refuses_them_in_one_line(tmp_path, capsys):
    mine = _users_files(tmp_path / "cache")
    code = cli.main(
        [
            "demo",
            "--quick",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "teacher.pt" in err and "--cache-dir" in err and "Traceback" not in err
    for role in ROLES:
        assert (tmp_path / "cache" / f"{role}.pt").read_bytes() == mine[role]
    assert not (tmp_path / "r").exists()


def test_the_demos_own_files_are_reused_and_replaced_when_stale(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = demo.train_demo_models(0, quick=True, cache_dir=cache, progress=False)
    marker = json.loads((cache / model_cache.MARKER).read_text())
    assert sorted(marker["files"]) == ["base.pt", "student.pt", "teacher.pt"]
    second = demo.train_demo_models(0, quick=True, cache_dir=cache, progress=False)
    assert second.from_cache and len(tiny) == 1
    old = {role: (cache / f"{role}.pt").read_bytes() for role in ROLES}
    # a changed recipe retrains and replaces the demo's own (stale) files
    changed = demo.demo_recipe

    def longer(seed=0, quick=False):
        r = changed(seed, quick)
        r["epochs"] = {"teacher": 2, "base": 1, "student": 1}
        return r

    monkeypatch.setattr(demo, "demo_recipe", longer)
    third = demo.train_demo_models(0, quick=True, cache_dir=cache, progress=False)
    assert not third.from_cache and len(tiny) == 2
    assert (cache / "teacher.pt").read_bytes() != old["teacher"]
    again = json.loads((cache / model_cache.MARKER).read_text())
    assert again["files"]["teacher.pt"] != marker["files"]["teacher.pt"]
    assert first.class_names == third.class_names


def test_a_demo_file_changed_by_the_user_is_no_longer_the_caches(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    demo.train_demo_models(0, quick=True, cache_dir=cache, progress=False)
    (cache / "base.pt").write_bytes(b"now mine")
    with pytest.raises(OutputError, match="base.pt"):
        demo.train_demo_models(0, quick=True, cache_dir=cache, progress=False)
    assert (cache / "base.pt").read_bytes() == b"now mine" and len(tiny) == 1


def test_a_foreign_marker_file_is_refused(tmp_path):
    (tmp_path / model_cache.MARKER).write_text("{}")
    with pytest.raises(OutputError, match="not the model cache's marker"):
        model_cache.check_replaceable(tmp_path, ["teacher.pt"])
    assert (tmp_path / model_cache.MARKER).read_text() == "{}"
    assert model_cache.check_replaceable(tmp_path / "absent", ["teacher.pt"]) == {
        "teacher.pt": False
    }


def test_the_demo_recipe_the_cache_key_is_unchanged():
    """The cache key of the quick demo, spelt out: a change would retrain every cache."""
    assert demo.demo_recipe(0, quick=True) == {
        "version": 3,
        "seed": 0,
        "quick": True,
        "image_size": 32,
        "num_classes": 4,
        "cue_strength": 0.9,
        "arch": {
            "teacher": "small_resnet_s",
            "base": "small_resnet_s",
            "student": "small_resnet_s",
        },
        "sizes": {"teacher": 800, "base": 200, "student": 800, "test": 500},
        "epochs": {"teacher": 6, "base": 15, "student": 5},
        "splits": {"teacher": "val", "base": "train", "student": "transfer", "test": "test"},
        "batch_size": {"teacher": 64, "base": 64, "student": 64},
        "optimizer": "sgd",
        "lr": 0.2,
        "weight_decay": 5e-4,
        "method": "overhaul",
        "temperature": 4.0,
        "beta": 1e-3,
    }
