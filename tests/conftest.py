"""Shared fixtures: the ../shared CIFAR assets (skipped where absent, required in CI) and tiny synthetic data."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Callable, NoReturn, Sequence

# One thread per test process, and per process a test starts (set before torch is imported, and inherited):
# the tests' tensors are small, so a second thread gains little, and the suite runs one process per core
# (setup.cfg), where more threads spin against each other (tests/test_pipeline.py took 90 s with two threads
# on a busy machine, 25 s with one).
os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from vision_lens.adapters.weights import CIFAR10_CLASSES  # noqa: E402

# pytester: tests/test_kinds.py runs the collection hook below on a scratch suite.
pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VISION_LENS_SHARED", REPO.parent / "shared"))
CIFAR = SHARED / "data" / "cifar10"
RESNET_WEIGHTS = SHARED / "weights" / "cifar10-resnets"
RESNET20 = RESNET_WEIGHTS / "resnet20-12fca82f.th"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def findings_runs() -> list[Path]:
    """The run folders of the ``summarise_results.py --findings`` command that results/README.md prints (its
    tables are that command's output): committed runs, and data read where it is in ../shared (Pythia-12B's
    matrix), whose absence skips the caller (fails it in CI)."""
    text = (REPO / "results" / "README.md").read_text()
    command = re.search(r"python scripts/summarise_results\.py --findings ((?:(?:results/|\.\./shared/)\S+ ?)+)", text)
    assert command, "results/README.md must print the command that makes its tables"
    runs = [SHARED / r.removeprefix("../shared/") if r.startswith("../shared/") else REPO / r
            for r in command.group(1).split()]
    shared = [r for r in runs if not r.is_relative_to(REPO)]
    if shared:
        require_shared(*shared)
    return runs


LLM_ANCHORS = SHARED / "data" / "llm-anchors"  # the tuned-lens authors' Pythia numbers (its README says whence)


def require_shared(*needed: Path) -> None:
    """Skip when ../shared lacks ``needed`` (default: the CIFAR-10 PNGs and checkpoints); fail instead when
    VISION_LENS_REQUIRE_SHARED=1 (as in CI)."""
    needed = needed or (CIFAR, RESNET20)
    if all(path.exists() for path in needed):
        return
    what = "the CIFAR-10 PNGs and checkpoints" if needed == (CIFAR, RESNET20) else ", ".join(
        str(path.relative_to(SHARED)) for path in needed)
    reason = (
        f"needs {what} under {SHARED} (set VISION_LENS_SHARED to their folder); "
        "they are not distributed with the package"
    )
    if os.environ.get("VISION_LENS_REQUIRE_SHARED") == "1":
        pytest.fail(reason + ", and VISION_LENS_REQUIRE_SHARED=1 makes them mandatory")
    pytest.skip(reason)


def unavailable(reason: str, remedy: str) -> NoReturn:
    """Skip a test that this machine lacks a tool or a privilege for; fail it instead where ``CI`` is set (``.ci/run``
    exports CI=1): where the guarantees are checked, a missing tool must not pass silently."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so it must run: {remedy}")
    pytest.skip(reason)


PYPI = "https://pypi.org/simple/"


def require_pypi() -> None:
    """Skip a test that resolves packages on PyPI where PyPI is unreachable (offline); fail it instead where ``CI``
    is set."""
    try:
        urllib.request.urlopen(urllib.request.Request(PYPI + "pip/", method="HEAD"), timeout=15).close()
    except OSError as exc:  # URLError, a timeout, a refused certificate
        unavailable(f"needs the package index {PYPI}, unreachable here ({exc})", "give the machine access to PyPI")


# What a test checks (setup.cfg describes each): every test carries exactly one, so that `-m "unit or contract"`
# runs what a change to the code can break and no test falls outside every subset.
KINDS = ("unit", "contract", "integration", "results")


def kind_fault(item: pytest.Item) -> str | None:
    """Why ``item`` is not sorted (no kind marker, or several), or None when it carries exactly one of ``KINDS``."""
    kinds = sorted({mark.name for mark in item.iter_markers() if mark.name in KINDS})
    if len(kinds) == 1:
        return None
    return (f"{item.nodeid} carries {'the kind markers ' + ', '.join(kinds) if kinds else 'no kind marker'}: give "
            f"it exactly one of {', '.join(KINDS)} (pytestmark for the whole file, or a decorator per test; "
            f"docs/development.md says which is which)")


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """An unsorted test is an error collecting its file, before ``-m`` selects anything: it cannot slip out of
    every subset unseen."""
    made = yield
    faults = [fault for item in (made if isinstance(made, list) else [made])
              if isinstance(item, pytest.Item) and (fault := kind_fault(item))]
    if faults:
        raise pytest.Collector.CollectError("\n".join(faults))
    return made


@pytest.fixture(autouse=True)
def _required_by_marker(request):
    if request.node.get_closest_marker("shared"):
        require_shared()
    if request.node.get_closest_marker("pypi"):
        require_pypi()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Feature caches of the test session go to its temporary folder, never to ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISION_LENS_CACHE", str(tmp_path_factory.getbasetemp() / "vision-lens-cache"))
        yield


def write_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 32, seed: int = 0,
                       names: Sequence[str] | None = None) -> Path:
    """Random RGB PNGs in ``root/<class>/<i>.png``, the class folders named ``names`` (default: class_0, ...)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / (names[c] if names else f"class_{c}")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A dataset root with train/ and test/ splits of random 32x32 images in the 10 CIFAR-10 classes (a cifar:
    model's outputs, matched by name)."""
    write_image_folder(tmp_path / "data" / "train", classes=10, per_class=4, seed=1, names=CIFAR10_CLASSES)
    write_image_folder(tmp_path / "data" / "test", classes=10, per_class=2, seed=2, names=CIFAR10_CLASSES)
    return tmp_path / "data"


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(path)`` once per test session, in whichever pytest-xdist worker asks first; the others wait for it
    and get the same folder (the workers' temporary folders share a parent). Its users only read it."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, a crashed builder's too
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a builder that failed half-way
            build(path)
            done.touch()
    return path


def _cli_run(*args: str) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from vision_lens.cli import main

        assert main(["run", *args, "--out", str(out)]) == 0

    return build


@pytest.fixture(scope="session")
def resnet20_run(tmp_path_factory) -> Path:
    """A real `vision-lens run` on ResNet-20: 2,000 fit images and all 10,000 test images."""
    require_shared()
    return built_once(tmp_path_factory, "cifar10-resnet20", _cli_run(
        "--model", "cifar:resnet20", "--weights", str(RESNET20), "--data", str(CIFAR), "--fit-limit", "2000"))


RESNET32 = RESNET_WEIGHTS / "resnet32-d509ac18.th"


@pytest.fixture(scope="session")
def resnet32_run(tmp_path_factory) -> Path:
    """A small real `vision-lens run` on ResNet-32 (300 fit, 200 eval images, 20 L-BFGS steps).

    A second, deeper model for the cross-model plots; the lenses are under-fitted, which the plots don't mind.
    """
    require_shared()
    return built_once(tmp_path_factory, "cifar10-resnet32", _cli_run(
        "--model", "cifar:resnet32", "--weights", str(RESNET32), "--data", str(CIFAR), "--fit-limit", "300",
        "--eval-limit", "200", "--max-iter", "20", "--workers", "0"))


RESNET20_BLOCKS = ["stem"] + [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
RESNET20_STAGES = ["stem"] + [f"layer{s}" for s in (1, 2, 3) for b in range(3)]


def write_synthetic_run(out: Path, images: int = 400, seed: int = 0) -> Path:
    """A run folder over ResNet-20's block names from synthetic per-image values, with bootstrap intervals.

    Accuracy and CE improve with depth; the transfer CE grows with |i - j| and doubles across stages;
    the stem row is far worse than the rest (as in the real runs). Cell (3, 9) is undefined.
    """
    from vision_lens.artifacts import mark_complete, write_results
    from vision_lens.metrics import bootstrap_intervals, pair_groups, transfer_penalty

    rng = np.random.default_rng(seed)
    blocks = len(RESNET20_BLOCKS)
    depth = np.linspace(0, 1, blocks)
    acc = (rng.random((images, blocks)) < 0.2 + 0.7 * depth).astype(np.float32)
    ce = (3 - 2.5 * depth + rng.normal(0, 0.5, (images, blocks))).astype(np.float32)
    rows, cols = np.indices((blocks, blocks))
    extra = np.abs(rows - cols) * np.where(pair_groups(RESNET20_STAGES)["across_stage"], 2.0, 1.0)
    extra[0] *= 5  # the stem's translator
    transfer = (ce[:, None, :] + extra + rng.normal(0, 0.3, (images, blocks, blocks))).astype(np.float32)
    transfer[:, rows == cols] = ce  # a translator on its own block is the lens
    transfer[:, 3, 9] = np.nan
    per_image = {"tuned": {"acc": acc, "ce": ce, "kl": ce / 2, "layer_transfer": {"ce": transfer}},
                 "logit": {"acc": acc * 0.5, "ce": ce * 1.5, "kl": ce}}

    def means(node):
        if isinstance(node, dict):
            return {k: means(v) for k, v in node.items()}
        with np.errstate(invalid="ignore"):  # the undefined cell: NaN for every image
            mean = np.nansum(node.astype(float), axis=0) / (~np.isnan(node)).sum(0)
        if mean.ndim == 1:
            return {f"layer_{k}": float(v) for k, v in enumerate(mean)}
        return {f"layer_{i}": {f"layer_{j}": None if np.isnan(v) else float(v) for j, v in enumerate(row)}
                for i, row in enumerate(mean)}

    aggregate = means(per_image)
    aggregate["tuned"]["layer_transfer"]["penalty"] = transfer_penalty(aggregate["tuned"]["layer_transfer"]["ce"])
    aggregate["baseline"] = {"acc": {"final": 0.9}, "ce": {"final": 0.4}}
    intervals = bootstrap_intervals(per_image, resamples=200, seed=seed, block_stages=RESNET20_STAGES)
    layers = {f"layer_{k}": name for k, name in enumerate(RESNET20_BLOCKS)}
    run = {"model": "synthetic:resnet20", "blocks": RESNET20_BLOCKS, "block_stages": RESNET20_STAGES, "num_classes": 10, "eval_images": images,
           "options": {"eval_split": "test"}}
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, aggregate, [], layers, run, intervals)
    mark_complete(out)
    return out


# A synthetic `tuned-lens eval --layer_transfer` folder whose signatures are known by hand (tests/test_signatures.py):
# four layers; every batch has the same own CE, logit-lens CE and model CE, and the transfer penalty
# SYNTHETIC_PENALTY times that batch's factor.
SYNTHETIC_OWN_CE = (3.0, 2.0, 1.5, 1.0)
SYNTHETIC_LOGIT_CE = (5.0, 3.0, 2.0, 1.2)
SYNTHETIC_MODEL_CE = 0.8
# An earlier layer's translator on a later one costs 0.1 per layer of distance, a later one's on an earlier 0.3.
SYNTHETIC_PENALTY = tuple(tuple(0.1 * (j - i) if j > i else 0.3 * (i - j) for j in range(4)) for i in range(4))


def write_tuned_lens_eval(out: Path, factors: Sequence[float] = (0.5, 1.5)) -> Path:
    """``aggregate_metrics.json`` and ``batches.jsonl`` as ``tuned-lens eval --layer_transfer`` writes them (its
    nesting; one JSON list of per-batch means; the aggregate the mean of the batches), one batch per factor."""
    import json

    layers = [f"layer_{k}" for k in range(4)]

    def batch(factor: float) -> dict:
        ce = {i: {j: SYNTHETIC_OWN_CE[m] + factor * SYNTHETIC_PENALTY[n][m]
                  for m, j in enumerate(layers)} for n, i in enumerate(layers)}
        return {"tuned": {"ce": dict(zip(layers, SYNTHETIC_OWN_CE)), "kl": dict(zip(layers, (1.0, 0.5, 0.3, 0.2))),
                          "layer_transfer": {"ce": ce, "kl": {i: {j: factor for j in layers} for i in layers}}},
                "logit": {"ce": dict(zip(layers, SYNTHETIC_LOGIT_CE)), "kl": dict(zip(layers, (3.0, 1.0, 0.6, 0.3)))},
                "baseline": {"ce": {"final": SYNTHETIC_MODEL_CE}, "entropy": {"final": 1.0}}}

    batches = [batch(f) for f in factors]

    def mean(nodes: list):
        if isinstance(nodes[0], dict):
            return {k: mean([n[k] for n in nodes]) for k in nodes[0]}
        return sum(nodes) / len(nodes)

    out.mkdir(parents=True, exist_ok=True)
    (out / "aggregate_metrics.json").write_text(json.dumps(mean(batches)))
    (out / "batches.jsonl").write_text(json.dumps(batches))
    return out
