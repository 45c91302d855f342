"""The tutorial notebooks: committed without outputs, linked from tutorials/README.md, and
executed top to bottom with nbclient (marked ``notebook`` and ``slow``).

The executed notebooks share one model cache (``CAPTUM_UNICAM_CACHE``, a session-scoped
temporary folder), so the demo's Teacher, Base and Student are trained once for all of them.
Run only the fast checks with ``pytest -m "not slow"``.

The kernels run torch on one intra-op thread (``OMP_NUM_THREADS=1``). The tutorial models
are tiny (32x32 inputs, 20k-80k parameters), so a second thread buys little wall time; on a
machine shared with other jobs, two OpenMP threads that wait for each other at every
operator cost far more CPU (measured on the project's loaded 2-core machine: up to 10x per
training step of ``small_resnet_s``, 1.3-2x when it was lightly loaded; notebook 2 took
94 s of kernel CPU with two threads and 22 s with one, notebook 3 143 s and 31 s).
"""

from __future__ import annotations

import os
import pathlib
import re
import resource
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = (
    "01_unicam_in_place_of_layergradcam.ipynb",
    "02_quantifying_kd_with_fss_and_rs.ipynb",
    "03_capacity_gap_and_teacher_assistant.ipynb",
    "04_mixed_architectures_vit_and_context.ipynb",
    "05_text_student_vs_base.ipynb",
)
CELL_TIMEOUT = 300  # seconds per cell


def _read(name: str):
    return nbformat.read(TUTORIALS / name, as_version=4)


def test_the_tutorials_folder_holds_exactly_the_listed_notebooks():
    found = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert found == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_committed_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)  # raises on an invalid v4 notebook
    assert nb.nbformat == 4
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 5, "a tutorial needs several small code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"{name}: code cell {i} has outputs; clear them"
        assert cell.get("execution_count") is None, f"{name}: code cell {i} has an execution count"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_linked_from_the_tutorials_readme(name):
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert name in links or f"./{name}" in links, f"tutorials/README.md does not link {name}"


#: Old forms of the metric functions (deprecated) and of batching that the tutorials must not teach.
OLD_FORMS = ("given=", "map_kinds=", "drop_last=")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_uses_the_one_metric_signature(name):
    code = "\n".join(c.source for c in _read(name).cells if c.cell_type == "code")
    for old in OLD_FORMS:
        assert old not in code, f"{name} uses the old form {old!r}"
    # perturb_func= only where Captum's sensitivity_max takes it
    for line in code.splitlines():
        if "perturb_func" in line:
            assert "sensitivity_max" in line, f"{name}: {line.strip()}"
    # evaluate_kd(student, layers, data, base_forward_func=...), not (student, base, loader, layers)
    for call in re.findall(r"evaluate_kd\((.*?)\)\s*$", code, flags=re.S | re.M):
        assert "base_forward_func=" in call, f"{name}: evaluate_kd({call[:60]}...)"
    # relevance_score(model, layer, x, target=y, ...), never a positional target
    for call in re.findall(r"relevance_score\(([^()]*(?:\([^()]*\)[^()]*)*)\)", code):
        args = [a.strip() for a in re.sub(r"\([^()]*\)", "()", call).split(",") if a.strip()]
        assert len([a for a in args if "=" not in a]) <= 3, f"{name}: relevance_score({call})"


@pytest.fixture(scope="session")
def notebook_env(tmp_path_factory):
    """Environment of the notebook kernels: headless matplotlib, one shared model cache,
    no network for Hugging Face, and the demo models trained once up front."""
    cache = tmp_path_factory.mktemp("captum_unicam_cache")
    env = dict(os.environ)
    env.update(
        {
            "MPLBACKEND": "Agg",
            "CAPTUM_UNICAM_CACHE": str(cache),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TQDM_DISABLE": "1",
            # One intra-op thread: see the module docstring.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    # Train (or load) the demo models here, once, so every notebook finds them cached
    # and a single notebook can be run on its own.
    import torch

    from captum_unicam.pipeline.demo import train_demo_models

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CAPTUM_UNICAM_CACHE", str(cache))
            train_demo_models(seed=0, quick=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    return env


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, notebook_env):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = _read(name)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
        allow_errors=False,
    )
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    client.execute(env=notebook_env)  # the kernel's environment
    seconds = time.perf_counter() - start
    # The kernel is a child process, reaped at shutdown: its CPU time is in RUSAGE_CHILDREN.
    cpu = _children_cpu_seconds() - cpu_start
    sys.stderr.write(f"\n{name}: executed in {seconds:.1f} s wall, {cpu:.1f} s CPU of the kernel\n")
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    # no deprecated call on the way (the warning would be printed in a stream output)
    printed = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )
    assert "DeprecationWarning" not in printed, f"{name} calls a deprecated form"
    # Every figure cell drew something.
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, f"{name} produced no figure"
