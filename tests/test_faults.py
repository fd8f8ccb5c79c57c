"""Fault injection: every fault ends in a clear message, never in wrong numbers or lost user files.

Faults of a process (``kill -9``, two runs at once, missing permissions) run
``python -m vision_lens`` as subprocesses; the others call the command line in
process, which is the same code path without the seconds of a torch import.
Everything runs on random-init ``cifar:resnet8`` and a few random images, with
one uninterrupted run (``baseline``) as the reference: a fault that is
recovered from must give its ``aggregate_metrics.json`` byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vision_lens import capture
from vision_lens.adapters import create_adapter
from vision_lens.artifacts import LOCK_NAME, MANIFEST_NAME, write_results
from vision_lens.cli import main
from vision_lens.data import DataError
from vision_lens.files import FolderLock

from .conftest import CIFAR10_CLASSES, REPO, unavailable, write_image_folder


COMMON = ["--model", "cifar:resnet8", "--weights", "random", "--max-iter", "5", "--workers", "0", "--batch-size", "4"]
EVAL_OPTIONS = [o for o in COMMON if o not in ("--max-iter", "5")]  # eval takes no fitting options
# The subprocesses' time limit: a guard against a hung process, not a measure; a tiny run that takes seconds alone
# took over 300 s on a 2-core machine shared with training jobs.
HUNG_AFTER_S = 3600
SETPRIV = shutil.which("setpriv")
NOBODY = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"] if SETPRIV else None

# Runs the command line after arranging a signal (argv[2], e.g. SIGKILL) at one stage (argv[1]): after the second committed batch of
# capture, at the start of the second lens fit, or in the middle of writing the result files; or ("workers") to the
# loader workers after the second committed batch, and to the main process a second later.
KILL_AT = """
import os, signal, sys
import vision_lens.artifacts as artifacts, vision_lens.capture as capture, vision_lens.pipeline as pipeline
from vision_lens.cache import FeatureCache
from vision_lens.cli import main
from vision_lens.files import FolderLock

def die(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))

# Ctrl-C in a terminal reaches Python's handler, but a process started under a background job (`pytest &`)
# inherits SIGINT ignored, and Python then installs none: restore it, as a terminal would have it.
signal.signal(signal.SIGINT, signal.default_int_handler)
stage = sys.argv[1]
capture.COMMIT_BYTES = 0  # a commit after every batch
if stage == "capture":
    commit = FeatureCache.commit
    def commit_then_die(self, done, *args):
        commit(self, done, *args)
        if done >= 8:
            die()
    FeatureCache.commit = commit_then_die
elif stage == "fit":
    fit_lens, calls = pipeline.fit_lens, []
    def second_fit_dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            die()
        return fit_lens(*args, **kwargs)
    pipeline.fit_lens = second_fit_dies
elif stage == "write":
    artifacts.tidy_rows = die  # called by write_results after aggregate_metrics.json is written
elif stage == "workers":  # a Ctrl-C that reaches the DataLoader workers first, and this process a second later
    import multiprocessing, threading
    commit, fired = FeatureCache.commit, []
    def commit_then_interrupt_workers(self, done, *args):
        commit(self, done, *args)
        if done >= 8 and not fired:
            fired.append(1)
            for worker in multiprocessing.active_children():
                os.kill(worker.pid, getattr(signal, sys.argv[2]))
            threading.Timer(1.0, die).start()
    FeatureCache.commit = commit_then_interrupt_workers
sys.exit(main(sys.argv[3:]))
"""


# Session-scoped, not module-scoped: a test process of the suite (setup.cfg: one per core) that switches
# between this module and others would otherwise tear the baseline run down and make it again.
@pytest.fixture(scope="session")
def base():
    """A folder every user can read (pytest's own temporary folders are root-only), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="vision-lens-faults-"))
    path.chmod(0o755)
    write_image_folder(path / "data" / "train", classes=10, per_class=2, seed=1, names=CIFAR10_CLASSES)
    write_image_folder(path / "data" / "test", classes=10, per_class=1, seed=2, names=CIFAR10_CLASSES)
    yield path
    shutil.rmtree(path)


def vision_lens(*args, user: list[str] | None = None, code: str | None = None, background: bool = False):
    """``python -m vision_lens ARGS`` (or ``python -c CODE ARGS``) as a subprocess, optionally as another user.

    Returns the finished process, or with ``background`` the running one.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # one thread each: conftest set OMP_NUM_THREADS
    if user:  # matplotlib and torch want a writable home
        home = writable_dir(Path(tempfile.gettempdir()) / "vision-lens-faults-home")
        env |= {"HOME": str(home), "MPLCONFIGDIR": str(home)}
    command = [*(user or []), sys.executable, *(["-c", code] if code else ["-m", "vision_lens"]), *map(str, args)]
    if background:
        return subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, timeout=HUNG_AFTER_S)


def run_args(data: Path, out: Path, cache: Path) -> list[str]:
    return ["run", *COMMON, "--data", str(data), "--out", str(out), "--cache-dir", str(cache)]


def writable_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


@pytest.fixture(scope="session")
def baseline(base) -> bytes:
    """aggregate_metrics.json of an uninterrupted run (its cache, base/cache, is complete afterwards)."""
    result = vision_lens(*run_args(base / "data", base / "baseline", base / "cache"))
    assert result.returncode == 0, result.stderr
    for path in (base / "cache").rglob("*"):  # readable by the unprivileged runs below
        path.chmod(0o755 if path.is_dir() else 0o644)
    return (base / "baseline" / "aggregate_metrics.json").read_bytes()


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


@pytest.mark.integration
def test_kill_at_every_stage_then_rerun_gives_identical_numbers(base, baseline, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = run_args(base / "data", out, cache)
    for stage in ("capture", "fit", "write"):
        killed = vision_lens(stage, "SIGKILL", *args, code=KILL_AT)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert manifest(out)["complete"] is False
        if stage == "fit":
            assert "reusing 8 of 20 captured rows" in killed.stderr  # the batches committed before the kill
        if stage == "write":
            assert (out / "aggregate_metrics.json").is_file()  # looks like a result, but is marked incomplete
        assert main(["compare", str(out), "--out", str(tmp_path / "c.png")]) == 2
        assert main(["report", str(out)]) == 2
        assert main(["eval", *EVAL_OPTIONS, "--data", str(base / "data"), "--lens", str(out), "--out", str(tmp_path / "e")]) == 2
        expected = 3
        if stage == "write":
            assert main(["compare", str(out / "aggregate_metrics.json"), "--out", str(tmp_path / "c.png")]) == 2
            expected += 1
        err = capsys.readouterr().err
        assert err.count(f"{out} is an incomplete run") == expected and "Traceback" not in err
    assert main(args) == 0  # the same command, no --overwrite needed for a run that stopped
    assert manifest(out)["complete"] is True
    assert (out / "aggregate_metrics.json").read_bytes() == baseline


@pytest.mark.integration
def test_ctrl_c_during_capture_or_fitting_says_what_was_kept_and_the_rerun_resumes(base, baseline, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = run_args(base / "data", out, cache)
    for stage in ("capture", "fit"):
        stopped = vision_lens(stage, "SIGINT", *args, code=KILL_AT)
        assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr
        assert ("vision-lens run: interrupted; the feature cache keeps every row captured so far and --out stays "
                "marked incomplete; rerun the same command to resume") in stopped.stderr
        assert manifest(out)["complete"] is False
        if stage == "fit":
            assert "reusing 8 of 20 captured rows" in stopped.stderr  # what the Ctrl-C during capture kept
    assert main(args) == 0  # the rerun, in process
    assert (out / "aggregate_metrics.json").read_bytes() == baseline


@pytest.mark.integration
def test_ctrl_c_with_loader_workers_ends_in_the_same_one_line(base, tmp_path):
    args = run_args(base / "data", tmp_path / "out", tmp_path / "cache")
    args[args.index("--workers") + 1] = "2"
    stopped = vision_lens("workers", "SIGINT", *args, code=KILL_AT)
    # Before the workers ignored SIGINT, the one that died took its batch along: "error: [Errno 2] No such file".
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr and "Errno" not in stopped.stderr, \
        stopped.stderr
    assert "vision-lens run: interrupted; the feature cache keeps every row captured so far" in stopped.stderr
    assert manifest(tmp_path / "out")["complete"] is False


def read_until(process: subprocess.Popen, text: str) -> str:
    """Read the process's stderr until a line holds ``text`` (or the process ends); return what was read."""
    lines = []
    while (line := process.stderr.readline()) and text not in line:
        lines.append(line)
    return "".join(lines) + line


@pytest.mark.integration
def test_two_runs_sharing_a_cache_wait_for_each_other_and_agree(base, baseline, tmp_path):
    cache = tmp_path / "cache"
    # Both runs meet for sure: the test holds the fit cache's lock until both say they wait for it.
    held = FolderLock(cache / "features" / fit_cache(base / "cache").name)
    held.path.parent.mkdir(parents=True)
    held.acquire()
    runs = [vision_lens(*run_args(base / "data", tmp_path / f"out{i}", cache), background=True) for i in range(2)]
    try:
        for run in runs:
            assert "waiting for another run that is writing" in read_until(run, "waiting for another run")
    finally:
        held.release()
    errors = [run.communicate(timeout=HUNG_AFTER_S)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert sum("reusing 20 of 20 captured rows" in err for err in errors) == 1  # the second read the first's capture
    for i in range(2):
        assert (tmp_path / f"out{i}" / "aggregate_metrics.json").read_bytes() == baseline
    assert not list(cache.rglob("*.tmp"))


# Holds the lock of folder argv[1] (lock file argv[2]) as a run writing there does, until killed or its stdin closes
# (the test's process ended, however slow its test was); no torch import.
HOLD_LOCK = """
import sys
from vision_lens.files import FolderLock
FolderLock(sys.argv[1], sys.argv[2]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_by_another_process(folder: Path):
    """``folder``'s writer lock, held for the block by another process (as a run still fitting there); its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), LOCK_NAME], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.integration
def test_a_second_run_on_a_busy_out_stops_at_once_naming_the_holder(base, baseline, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(base / "baseline", out)
    with held_by_another_process(out) as pid:
        before = tree_bytes(out)
        for extra in ([], ["--overwrite"]):
            assert run_on(base / "data", out, tmp_path / "cache", *extra) == 2
            err = capsys.readouterr().err
            assert f"--out {out} is being written by another vision-lens process (pid {pid})" in err
            assert tree_bytes(out) == before and not (tmp_path / "cache").exists()  # nothing removed, nothing captured
    assert run_on(base / "data", out, base / "cache", "--overwrite") == 0  # free again


@pytest.mark.integration
def test_a_dangling_out_symlink_is_named_as_such(base, tmp_path, capsys):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone")
    assert run_on(base / "data", out, tmp_path / "cache") == 2
    assert f"--out {out} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in capsys.readouterr().err


BAD_OPTIONS = [
    (["--weight-decay", "-1"], "--weight-decay -1.0: give a finite penalty above 0"),
    (["--weight-decay", "nan"], "--weight-decay nan: give a finite penalty above 0"),
    (["--weight-decay", "0"], "--weight-decay 0.0: give a finite penalty above 0"),
    (["--max-iter", "0"], "--max-iter 0: give a number of L-BFGS iterations (at least 1)"),
    (["--fit-limit", "0"], "--fit-limit 0: give a number of images to fit on"),
    (["--eval-limit", "0"], "--eval-limit 0: give a number of images to evaluate on"),
    (["--seed", "-1"], "--seed -1: give an integer from 0 to 4294967295"),
    (["--pool-grid", "0"], "--pool-grid 0: give 1 (the global average) or a grid side k > 1"),
    (["--pool-grid", "1000"], "--pool-grid 1000: block layer3.0 of cifar:resnet8 has a 8x8 output on these images, "
                              "so no grid finer than 8 has distinct cells"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device; use auto, cpu, cuda, cuda:N or mps"),
    (["--device", "cuda"], "--device cuda: torch sees no CUDA GPU on this machine"),
]


@pytest.mark.integration
@pytest.mark.parametrize("extra, message", BAD_OPTIONS, ids=[" ".join(extra) for extra, _ in BAD_OPTIONS])
def test_bad_option_values_stop_before_any_compute_naming_the_option(base, tmp_path, capsys, extra, message):
    if extra == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    # In process: the command line's own path, where any exception but a UserError would fail the test.
    assert run_on(base / "data", tmp_path / "out", tmp_path / "cache", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache" / "features").exists()  # nothing captured
    assert not (tmp_path / "out").exists()  # nothing created


def _without_checksum(lenses: Path, lens: str) -> None:
    """As a lens folder written before config.json recorded params.pt's checksum (nor its schema version)."""
    config = json.loads((lenses / lens / "config.json").read_text())
    del config["params_sha256"], config["schema"]
    (lenses / lens / "config.json").write_text(json.dumps(config))


def _nan_params(lenses: Path) -> None:
    state = torch.load(lenses / "tuned" / "params.pt")
    next(iter(state.values())).view(-1)[0] = float("nan")
    torch.save(state, lenses / "tuned" / "params.pt")


def _swap_params(lenses: Path) -> None:
    tuned, shared = (lenses / t / "params.pt" for t in ("tuned", "shared"))
    tuned_bytes = tuned.read_bytes()
    tuned.write_bytes(shared.read_bytes())
    shared.write_bytes(tuned_bytes)


LENS_DAMAGE = {  # damage to lenses/: (the file named, what the message says), with and without a recorded checksum
    "nan": (_nan_params, "tuned/params.pt", "holds NaN or Inf in"),
    "truncated": (lambda lenses: truncate(lenses / "tuned" / "params.pt"), "tuned/params.pt", "is not a readable torch file"),
    "empty": (lambda lenses: (lenses / "tuned" / "params.pt").write_bytes(b""), "tuned/params.pt",
              "is not a readable torch file"),
    "swapped": (_swap_params, "tuned/params.pt", "does not hold the parameters of a tuned lens of cifar:resnet8"),
}


@pytest.mark.integration
@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "older-folder"])
@pytest.mark.parametrize("damage", sorted(LENS_DAMAGE))
def test_damaged_lens_files_are_named_before_use(base, baseline, tmp_path, capsys, damage, checksum):
    run = tmp_path / "run"
    shutil.copytree(base / "baseline", run)
    harm, file, problem = LENS_DAMAGE[damage]
    if not checksum:
        for lens in ("tuned", "shared"):
            _without_checksum(run / "lenses", lens)
    harm(run / "lenses")
    assert main(["eval", *EVAL_OPTIONS, "--data", str(base / "data"), "--cache-dir", str(base / "cache"),
                 "--lens", str(run), "--out", str(tmp_path / "e")]) == 2
    expected = "does not match the checksum in its config.json" if checksum else problem
    assert f"{run / 'lenses' / file} {expected}" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


@pytest.mark.integration
def test_an_invalid_lens_config_is_named(base, baseline, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base / "baseline", run)
    (run / "lenses" / "shared" / "config.json").write_text('{"model": "cifar:resnet8",\n')
    assert main(["eval", *EVAL_OPTIONS, "--data", str(base / "data"), "--cache-dir", str(base / "cache"),
                 "--lens", str(run), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'lenses' / 'shared' / 'config.json'} is not readable JSON (Expecting" in err


@pytest.fixture
def nobody(base):
    if NOBODY is None:
        unavailable("needs setpriv (util-linux) to run without the root capabilities that bypass file permissions",
                    "install util-linux on the CI machine")
    return NOBODY


@pytest.mark.integration
def test_unwritable_out_stops_before_any_compute(base, nobody):
    locked = base / "locked-out"  # root's, mode 755: not writable for nobody
    locked.mkdir(exist_ok=True)
    cache = writable_dir(base / "nobody-cache")
    result = vision_lens(*run_args(base / "data", locked / "out", cache), user=nobody)
    assert result.returncode == 2
    assert f"--out {locked / 'out'} is not writable" in result.stderr and "Traceback" not in result.stderr
    assert not (cache / "features").exists()  # nothing was captured


@pytest.mark.integration
def test_unwritable_cache_stops_before_any_compute(base, nobody):
    locked = base / "locked-cache"
    locked.mkdir(exist_ok=True)
    outs = writable_dir(base / "nobody-outs")
    result = vision_lens(*run_args(base / "data", outs / "a", locked), user=nobody)
    assert result.returncode == 2
    assert f"feature cache folder {locked / 'features'} is not writable" in result.stderr
    assert "Traceback" not in result.stderr and "[vision-lens] train:" not in result.stderr


@pytest.mark.integration
def test_read_only_complete_cache_is_read(base, baseline, nobody):
    outs = writable_dir(base / "nobody-outs")
    result = vision_lens(*run_args(base / "data", outs / "from-read-only-cache", base / "cache"), user=nobody)
    assert result.returncode == 0, result.stderr
    assert (outs / "from-read-only-cache" / "aggregate_metrics.json").read_bytes() == baseline


@pytest.mark.integration
def test_read_only_damaged_cache_stops_with_a_message(base, baseline, nobody, tmp_path):
    cache = base / "damaged-read-only-cache"  # root's: read-only for nobody
    shutil.copytree(base / "cache", cache)
    flip_bytes(fit_cache(cache) / "logits.npy")
    outs = writable_dir(base / "nobody-outs")
    result = vision_lens(*run_args(base / "data", outs / "from-damaged-cache", cache), user=nobody)
    assert result.returncode == 2
    assert "do not match their checksum (damaged), and the folder is read-only" in result.stderr
    assert not (outs / "from-damaged-cache" / "aggregate_metrics.json").exists()


def fit_cache(cache: Path) -> Path:
    """The feature-cache folder of the fit split (20 images)."""
    (folder,) = [m.parent for m in cache.glob("features/*/manifest.json")
                 if json.loads(m.read_text())["shapes"]["labels"] == [20]]
    return folder


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-40:-30] = bytes(b ^ 0xFF for b in data[-40:-30])
    path.write_bytes(bytes(data))


@pytest.mark.integration
@pytest.mark.parametrize("damage, file, message", [
    (truncate, "block_1.npy", "block_1.npy is"),
    (flip_bytes, "logits.npy", "do not match their checksum (damaged)"),
])
def test_damaged_cache_rows_are_captured_again(base, baseline, tmp_path, capsys, damage, file, message):
    cache = tmp_path / "cache"
    shutil.copytree(base / "cache", cache)
    damage(fit_cache(cache) / file)
    assert main(run_args(base / "data", tmp_path / "out", cache)) == 0
    err = capsys.readouterr().err
    assert message in err and "capturing" in err
    assert (tmp_path / "out" / "aggregate_metrics.json").read_bytes() == baseline


@pytest.mark.integration
def test_damaged_cache_manifest_stops_with_a_message(base, baseline, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(base / "cache", cache)
    folder = fit_cache(cache)
    (folder / "manifest.json").write_text('{"key": ')
    assert main(run_args(base / "data", tmp_path / "out", cache)) == 2
    err = capsys.readouterr().err
    assert f"feature cache {folder} has a damaged manifest.json; delete {folder} and rerun" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "aggregate_metrics.json").exists()
    shutil.rmtree(folder)  # as the message says: the rerun captures that split again, to the same numbers
    assert main(run_args(base / "data", tmp_path / "out", cache)) == 0
    assert (tmp_path / "out" / "aggregate_metrics.json").read_bytes() == baseline


@pytest.fixture
def data_copy(base, tmp_path) -> Path:
    shutil.copytree(base / "data", tmp_path / "data")
    return tmp_path / "data"


def run_on(data: Path, out: Path, cache: Path, *extra) -> int:
    return main([*run_args(data, out, cache), *extra])


@pytest.mark.integration
def test_bad_image_keeps_the_captured_rows_for_the_rerun(data_copy, tmp_path, capsys):
    bad = data_copy / "train" / "dog" / "000.png"  # row 10: batches 0-3 and 4-7 are committed first
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert run_on(data_copy, tmp_path / "out", tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert f"cannot read image {bad}" in err and "Traceback" not in err
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad)  # fixed, under the same name
    assert run_on(data_copy, tmp_path / "out", tmp_path / "cache") == 0
    assert "reusing 8 of 20 captured rows" in capsys.readouterr().err


@pytest.mark.integration
def test_an_image_changed_under_its_name_is_captured_again(data_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(capture, "COMMIT_BYTES", 0)  # a chunk per batch of 4 rows
    assert run_on(data_copy, tmp_path / "first", tmp_path / "cache") == 0
    changed = data_copy / "train" / "airplane" / "000.png"  # row 0, in the first batch of 4
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(changed)
    capsys.readouterr()
    assert run_on(data_copy, tmp_path / "again", tmp_path / "cache") == 0
    assert "images of rows 0-3 changed since they were captured; capturing them again" in capsys.readouterr().err
    assert run_on(data_copy, tmp_path / "fresh", tmp_path / "fresh-cache") == 0
    result = "aggregate_metrics.json"
    assert (tmp_path / "again" / result).read_bytes() == (tmp_path / "fresh" / result).read_bytes()


@pytest.mark.integration
def test_image_of_another_size_is_named_with_both_sizes(data_copy, tmp_path, capsys):
    odd = data_copy / "train" / "bird" / "001.png"
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(odd)
    assert run_on(data_copy, tmp_path / "out", tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert f"image {odd} is 48x40 pixels but the model takes 32x32 images" in err


@pytest.mark.integration
def test_class_missing_from_the_eval_split_stops_before_capture(data_copy, tmp_path, capsys):
    shutil.rmtree(data_copy / "test" / "truck")
    assert run_on(data_copy, tmp_path / "out", tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert f"{data_copy / 'test'} (split 'test')" in err and "unknown to the model: none; missing: truck" in err
    assert "[vision-lens] train:" not in err and not (tmp_path / "cache" / "features").exists()


@pytest.mark.integration
def test_a_renamed_class_folder_is_refused_not_matched_by_position(data_copy, tmp_path, capsys):
    (data_copy / "test" / "cat").rename(data_copy / "test" / "kitty")  # sorts where cat did: position would match it
    assert run_on(data_copy, tmp_path / "out", tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert f"{data_copy / 'test'} (split 'test')" in err
    assert "unknown to the model: kitty; missing: cat" in err and "--match-classes-by-position" in err
    assert not (tmp_path / "cache" / "features").exists() and not (tmp_path / "out").exists()


@pytest.mark.integration
def test_different_class_sets_are_named(data_copy, tmp_path, capsys):
    (data_copy / "test" / "truck").rename(data_copy / "test" / "class_x")
    assert run_on(data_copy, tmp_path / "out", tmp_path / "cache", "--match-classes-by-position") == 2
    assert "only in 'train': truck; only in 'test': class_x" in capsys.readouterr().err


@pytest.mark.integration
def test_nan_activations_name_the_block(base, tmp_path, capsys):
    model = create_adapter("cifar:resnet8", weights="random").model
    state = model.state_dict()
    state["layer2.0.bn1.running_var"] = -torch.ones_like(state["layer2.0.bn1.running_var"])  # sqrt(-1): NaN
    ckpt = tmp_path / "nan.th"
    torch.save({"state_dict": state}, ckpt)
    args = ["run", *COMMON[2:], "--model", "cifar:resnet8", "--weights", str(ckpt), "--data", str(base / "data"),
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 2
    assert "block layer2.0: NaN or Inf activations" in capsys.readouterr().err


@pytest.mark.unit
def test_fit_with_nan_names_the_block():
    from vision_lens.checks import NumericsError, check_fit
    from vision_lens.lenses import build_lenses
    from vision_lens.readout import FeatureLayout

    adapter = create_adapter("cifar:resnet8", weights="random")
    lens = build_lenses(adapter, FeatureLayout.of(adapter.blocks, 1), ("tuned",))["tuned"]
    names = [b.name for b in adapter.blocks]
    with pytest.raises(NumericsError, match="block layer1.0: the fit ended with loss nan"):
        check_fit("tuned", lens, [0.1, float("nan"), 0.2, 0.3], names)
    with torch.no_grad():
        lens.params[2].linear.weight.fill_(float("inf"))
    with pytest.raises(NumericsError, match="block layer2.0: NaN or Inf parameters"):
        check_fit("tuned", lens, [0.1, 0.1, 0.2, 0.3], names)


@pytest.mark.unit
def test_undefined_values_are_written_as_null(tmp_path):
    write_results(tmp_path, {"tuned": {"kl": {"layer_0": float("nan"), "layer_1": 1.0}}}, [{"x": float("inf")}],
                  {"layer_0": "a", "layer_1": "b"}, {})
    assert json.loads((tmp_path / "aggregate_metrics.json").read_text())["tuned"]["kl"]["layer_0"] is None
    assert json.loads((tmp_path / "batches.jsonl").read_text()) == [{"x": None}]  # the inf injected there
    metrics = (tmp_path / "metrics.csv").read_text()
    assert "tuned,layer_0,a,kl,\n" in metrics.replace("\r", "") and "nan" not in metrics.lower()


@pytest.mark.integration
def test_hidden_files_in_class_folders_are_skipped_and_counted(data_copy, baseline, tmp_path, capsys):
    """macOS leaves an AppleDouble ``._<name>`` beside every file it copies to a foreign disk (a .png name, no PNG
    inside), and .DS_Store in every folder it opens: a run skips them, says how many, and gives the same numbers."""
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "
    (data_copy / "train" / "dog" / "._000.png").write_bytes(apple_double)
    (data_copy / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (data_copy / "test" / "cat" / "._000.png").write_bytes(apple_double)
    assert run_on(data_copy, tmp_path / "out", tmp_path / "cache") == 0
    err = capsys.readouterr().err
    assert f"skipped 2 hidden files in {data_copy / 'train'}\n" in err
    assert f"skipped 1 hidden file in {data_copy / 'test'}\n" in err
    assert (tmp_path / "out" / "aggregate_metrics.json").read_bytes() == baseline


@pytest.mark.integration
@pytest.mark.parametrize("inside", ["train", "train/cat"])
def test_an_out_inside_a_split_or_class_folder_of_the_data_is_refused_before_any_work(data_copy, tmp_path, capsys,
                                                                                      inside):
    """Written there, the results folder would be a class folder (or files among a class's images) that the next run
    on that --data stops at."""
    out = data_copy / inside / "results"
    before = tree_bytes(data_copy)
    assert run_on(data_copy, out, tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} lies inside {data_copy / 'train'}, a split folder of --data " \
        f"{data_copy}" in err
    assert not out.exists() and not (tmp_path / "cache").exists() and tree_bytes(data_copy) == before
    beside = data_copy / "results"  # beside the splits: no split of a run, accepted
    assert run_on(data_copy, beside, tmp_path / "cache") == 0
    assert run_on(data_copy, beside, tmp_path / "cache", "--overwrite") == 0  # and so is its rerun


@pytest.mark.integration
def test_overwrite_removes_only_what_the_package_wrote(base, baseline, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(base / "baseline", out)
    (out / "notes.txt").write_text("mine")
    assert run_on(base / "data", out, base / "cache", "--overwrite") == 2
    err = capsys.readouterr().err
    assert "refuses to touch: notes.txt" in err
    assert (out / "notes.txt").read_text() == "mine" and (out / "aggregate_metrics.json").read_bytes() == baseline
    (out / "notes.txt").unlink()
    (out / "drafts").mkdir()  # an empty folder of the user's: not the package's to remove
    assert run_on(base / "data", out, base / "cache", "--overwrite") == 0
    assert (out / "drafts").is_dir() and (out / "aggregate_metrics.json").read_bytes() == baseline


@pytest.mark.integration
@pytest.mark.parametrize("inside", ["data", "cache", "weights"])
def test_overwrite_refuses_an_out_holding_the_data_the_cache_or_the_weights(base, baseline, tmp_path, capsys, inside):
    out = tmp_path / "out"
    shutil.copytree(base / "baseline", out)  # a finished run: --overwrite would replace its files, but for the input
    data, cache, extra = base / "data", tmp_path / "cache", []
    if inside == "data":
        data = out / "data"
        shutil.copytree(base / "data", data)
    if inside == "cache":
        cache = out / "cache"
        shutil.copytree(base / "cache", cache)  # a real one: complete captures of both splits
    if inside == "weights":
        torch.save(create_adapter("cifar:resnet8", weights="random").model.state_dict(), out / "weights.th")
        extra = ["--weights", str(out / "weights.th")]
    before = tree_bytes(out)
    assert run_on(data, out, cache, "--overwrite", *extra) == 2
    err = capsys.readouterr().err
    option = {"data": "--data", "cache": "--cache-dir", "weights": "--weights"}[inside]
    assert "refuses to touch" in err and f"({option})" in err
    assert tree_bytes(out) == before  # the input, and the run beside it, byte for byte
    assert inside == "cache" or not cache.exists()  # nothing captured


def tree_bytes(folder: Path, *without: str) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path, but ``without`` and the lock file (its last holder's pid)."""
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    return {name: p.read_bytes() for name, p in files.items() if name not in (LOCK_NAME, *without)}


@pytest.mark.integration
def test_eval_into_its_own_lens_folder_is_refused_and_deletes_nothing(base, baseline, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base / "baseline", run)
    before = tree_bytes(run)
    for extra in (["--overwrite"], []):
        assert main(["eval", *EVAL_OPTIONS, "--data", str(base / "data"), "--cache-dir", str(base / "cache"),
                     "--lens", str(run), "--out", str(run), *extra]) == 2
        assert f"--out {run} is the --lens folder that this command reads" in capsys.readouterr().err
        assert tree_bytes(run) == before  # the lenses, the results and the manifest, untouched


BAD_INPUTS = {
    "malformed.json": ('{"tuned": {"ce": ', "is not readable JSON"),
    "list.json": ("[1, 2]", "the top level is a list"),
    "empty.json": ("{}", "holds no lens with a layer-wise value"),
    "no-data.json": ('{"tuned": {"ce": {}}}', "tuned.ce is not a table"),
    "wrong-keys.json": ('{"tuned": {"ce": {"block1": 1.0}}}', "tuned.ce is not a table"),
    "transfer-missing-layer.json": (
        '{"tuned": {"ce": {"layer_0": 1.0, "layer_1": 2.0}, "layer_transfer": {"ce": {"layer_0": {"layer_0": 1.0}, '
        '"layer_1": {"layer_0": 1.5, "layer_1": 2.0}}}}}',
        "tuned.layer_transfer.ce.layer_0 has other layers than the table's rows (missing: layer_1; extra: none)"),
    "transfer-extra-layer.json": (
        '{"tuned": {"ce": {"layer_0": 1.0}, "layer_transfer": {"ce": {"layer_0": {"layer_0": 1.0, "layer_3": 2.0}}}}}',
        "tuned.layer_transfer.ce.layer_0 has other layers than the table's rows (missing: none; extra: layer_3)"),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_compare_and_report_name_a_malformed_input(base, baseline, tmp_path, capsys, name):
    text, problem = BAD_INPUTS[name]
    folder = tmp_path / "run"
    shutil.copytree(base / "baseline", folder)
    (folder / "aggregate_metrics.json").write_text(text)
    bad = tmp_path / name
    bad.write_text(text)
    assert main(["compare", str(base / "baseline"), str(bad), "--out", str(tmp_path / "c.png")]) == 2
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}" in err and f"{folder / 'aggregate_metrics.json'}" in err
    assert err.count(problem) == 2 and "expected" in err and "Traceback" not in err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.integration
def test_compare_refuses_an_input_with_nothing_to_draw(base, baseline, tmp_path, capsys):
    probe_only = tmp_path / "probe.json"
    probe_only.write_text(json.dumps({"linear_probe": json.loads(baseline)["linear_probe"]}))
    assert main(["compare", str(base / "baseline"), str(probe_only), "--out", str(tmp_path / "c.png")]) == 2
    assert "has nothing to compare" in capsys.readouterr().err


# --------------------------------------------------------------------------- second round: what issue 21 left open

@pytest.mark.integration
@pytest.mark.parametrize("command", ["run", "train", "eval"])
def test_a_bad_argument_leaves_no_out_folder(base, baseline, tmp_path, capsys, command):
    options = EVAL_OPTIONS if command == "eval" else COMMON
    lens = ["--lens", str(base / "baseline")] if command == "eval" else []
    for bad, message in ((["--model", "cifar:resnt20"], "near matches: cifar:resnet20"),
                         (["--data", str(tmp_path / "no-data")], f"--data {tmp_path / 'no-data'} does not exist")):
        out = tmp_path / "a" / "out"
        assert main([command, *options, "--data", str(base / "data"), *bad, *lens, "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache")]) == 2  # the last --model or --data is the bad one
        assert message in capsys.readouterr().err
        assert not (tmp_path / "a").exists() and not (tmp_path / "cache").exists()  # nothing created


@pytest.mark.integration
def test_result_files_get_the_users_umask_like_any_file(base, baseline, tmp_path):
    from vision_lens.files import write_text_atomic

    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.relative_to(base / "baseline").as_posix(): p.stat().st_mode & 0o777
             for p in (base / "baseline").rglob("*") if p.is_file()}
    assert modes == dict.fromkeys(modes, 0o666 & ~mask)  # the run ran under this process's umask
    for mask in (0o077, 0o002):
        before = os.umask(mask)
        try:
            write_text_atomic(tmp_path / f"{mask:o}.json", "{}")
        finally:
            os.umask(before)
        assert (tmp_path / f"{mask:o}.json").stat().st_mode & 0o777 == 0o666 & ~mask


# Runs the command line with every file this process writes limited to argv[1] bytes (RLIMIT_FSIZE, SIGXFSZ
# ignored): each write past it fails as a write to a full disk does, in the kernel.
SMALL_DISK = """
import resource, signal, sys
from vision_lens.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.integration
def test_a_full_out_stops_in_one_line_naming_the_file_and_the_rerun_resumes(base, baseline, tmp_path):
    out = tmp_path / "out"
    args = run_args(base / "data", out, base / "cache")  # a complete cache: only --out is written
    # 16 KiB stops train at the tuned lens's params.pt (72 KB); 100 KiB stops eval at layerwise.png (145 KB).
    for limit, file, kept in ((16 << 10, "lenses/tuned/params.pt", None),
                              (100 << 10, "layerwise.png", "aggregate_metrics.json")):
        full = vision_lens(limit, *args, code=SMALL_DISK)
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
        assert f"vision-lens run: error: --out {out}: cannot write {out / file} (File too large)" in full.stderr
        assert "rerun the same command, which resumes from the cache" in full.stderr
        assert manifest(out)["complete"] is False and not (out / file).exists() and not list(out.rglob("*.tmp"))
        assert kept is None or json.loads((out / kept).read_text())  # written before, and whole
    assert main(args) == 0  # the rerun, in process
    assert (out / "aggregate_metrics.json").read_bytes() == baseline


@pytest.mark.integration
def test_nan_and_infinity_in_compare_and_report_inputs_are_undefined_not_values(base, baseline, tmp_path, capsys):
    clean = json.loads(baseline)
    clean["tuned"]["ce"]["layer_1"] = clean["logit"]["kl"]["layer_0"] = None
    clean["tuned"]["layer_transfer"]["ce"]["layer_2"]["layer_1"] = None
    text = json.dumps(clean)
    runs = {}
    for name, body in (("nulls", text), ("non-finite", text.replace(
            '"layer_1": null', '"layer_1": NaN', 1).replace("null", "Infinity"))):  # tuned.ce first in the text
        runs[name] = tmp_path / name
        shutil.copytree(base / "baseline", runs[name])
        (runs[name] / "aggregate_metrics.json").write_text(body)
    assert "NaN" in body and "Infinity" in body
    capsys.readouterr()
    numbers = {}
    for name, run in runs.items():
        assert main(["compare", str(run), "--out", str(tmp_path / f"{name}.png")]) == 0
        assert main(["report", str(run)]) == 0
        numbers[name] = json.loads((tmp_path / f"{name}.json").read_text())["inputs"][0]
    err = capsys.readouterr().err
    assert err.count(f"[vision-lens] warning: {runs['non-finite'] / 'aggregate_metrics.json'} holds 3 NaN or infinite "
                     "number(s) (tuned.ce.layer_1, tuned.layer_transfer.ce.layer_2.layer_1, logit.kl.layer_0)") == 2
    note = numbers["non-finite"].pop("non_finite")
    assert numbers["nulls"].pop("non_finite") == [] and len(note) == 1
    for numbers_of in numbers.values():
        numbers_of.pop("path")
    assert numbers["non-finite"] == numbers["nulls"]  # read exactly as undefined values
    page = (runs["non-finite"] / "report.html").read_text()
    assert page.count('<td class="undefined">—</td>') == (runs["nulls"] / "report.html").read_text().count(
        '<td class="undefined">—</td>') and ">nan<" not in page.lower() and ">inf<" not in page.lower()
    assert "shown as undefined, not as values" in page


def _image(mode: str, pixels, **info) -> Image.Image:
    image = Image.fromarray(np.asarray(pixels)) if mode in ("I;16", "F", "I") else Image.new(mode, (2, 2))
    if mode not in ("I;16", "F", "I"):
        image.putdata(pixels)
    image.info.update(info)
    return image


def _palette(transparent: bool) -> Image.Image:
    image = Image.new("P", (2, 2))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0: red, 1: blue
    image.putdata([0, 1, 1, 0])
    if transparent:
        image.info["transparency"] = 1
    return image


WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)
SIXTEEN_BIT = np.array([[0, 257], [32896, 65535]], np.uint16)  # 0, 1, 128 and 255 on 8 bits
GREYS = [(v, v, v) for v in (0, 1, 128, 255)]
# file name -> (the image saved, the RGB pixels it means), or the message refusing it
IMAGE_MODES = {
    "rgb.png": (Image.new("RGB", (2, 2), RED), [RED] * 4),
    "grey.png": (_image("L", [0, 1, 128, 255]), GREYS),
    "bilevel.png": (_image("1", [0, 255, 255, 0]), [(0,) * 3, WHITE, WHITE, (0,) * 3]),
    "palette.png": (_palette(False), [RED, BLUE, BLUE, RED]),
    "palette-transparent.png": (_palette(True), [RED, WHITE, WHITE, RED]),
    "grey16.png": (Image.fromarray(SIXTEEN_BIT), GREYS),
    "grey16.tif": (Image.fromarray(SIXTEEN_BIT), GREYS),
    "grey16.pgm": (Image.fromarray(SIXTEEN_BIT), GREYS),  # PIL opens it as mode I
    "rgba.png": (_image("RGBA", [(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 128)]),
                 [RED, WHITE, WHITE, (127, 127, 127)]),  # over white, as a viewer shows it
    "grey-alpha.png": (_image("LA", [(0, 255), (0, 0), (200, 255), (0, 128)]),
                       [(0,) * 3, WHITE, (200,) * 3, (127,) * 3]),
    "cmyk.tif": (_image("CMYK", [(0, 255, 255, 0)] * 4), [RED] * 4),
    "float.tif": (Image.fromarray(np.full((2, 2), 0.5, np.float32)), "pixels (PIL mode F) have no agreed range"),
    "int32.tif": (Image.fromarray(np.full((2, 2), 70000, np.int32)),
                  "32-bit integer pixels (PIL mode I) have no agreed range"),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(IMAGE_MODES))
def test_every_image_mode_is_read_as_the_file_means_it_or_refused_by_name(tmp_path, name):
    from vision_lens.data import ImageFolderSource

    image, meaning = IMAGE_MODES[name]
    path = tmp_path / "split" / "class" / name
    path.parent.mkdir(parents=True)
    image.save(path)
    source = ImageFolderSource.scan(tmp_path / "split")
    if isinstance(meaning, str):
        with pytest.raises(DataError, match=rf"cannot read image {path} \(UnsupportedImageMode: .*{re.escape(meaning)}"):
            source.load(0)
        return
    for decoded in (source.load(0), source.load_with_content_id(0)[0]):  # from the path, and from the bytes
        assert decoded.mode == "RGB" and [tuple(p) for p in np.asarray(decoded).reshape(-1, 3).tolist()] == meaning


@pytest.mark.integration
def test_lenses_are_not_evaluated_on_the_images_they_were_fitted_on(base, baseline, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(base / "data", data)
    shutil.copytree(data / "train", data / "copy")  # the fit images again, under another split's name
    lens = base / "baseline"
    config = json.loads((lens / "lenses" / "tuned" / "config.json").read_text())["fit_images"]
    assert config["data"] == str((base / "data").resolve()) and config["split"] == "train" and config["images"] == 20
    assert len(config["sample"]) == 20 and all(len(i) == 16 for i in config["sample"])

    def evaluate(data: Path, split: str, out: str, *extra) -> int:
        return main(["eval", *EVAL_OPTIONS, "--data", str(data), "--eval-split", split, "--lens", str(lens),
                     "--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache"), *extra])

    capsys.readouterr()
    assert evaluate(base / "data", "train", "e1") == 2  # the split it was fitted on: refused before capture
    err = capsys.readouterr().err
    assert (f"--lens {lens}: its tuned lens was fitted on 20 images of split 'train' of {(base / 'data').resolve()} "
            "(lenses/tuned/config.json), and --eval-split 'train'") in err and "--eval-on-fit-images" in err
    assert not (tmp_path / "e1").exists() and not (tmp_path / "cache").exists()
    assert evaluate(data, "copy", "e2") == 2  # the same images elsewhere: refused once their content is known
    err = capsys.readouterr().err
    assert f"--lens {lens}: 20 of the 20 eval images are among the 20 sampled from the 20 images" in err
    assert f"e.g. {data / 'copy' / 'airplane' / '000.png'}: the eval images are not held out" in err
    assert not (tmp_path / "e2" / "aggregate_metrics.json").exists()
    assert evaluate(data, "copy", "e3", "--eval-on-fit-images") == 0  # asked for: a loud warning, recorded
    assert "[vision-lens] WARNING: --lens" in capsys.readouterr().err
    run = json.loads((tmp_path / "e3" / "run.json").read_text())
    assert run["options"]["eval_on_fit_images"] is True and "not held-out numbers" in run["warnings"][0]
    assert evaluate(data, "test", "e4") == 0  # held-out images: as before, no warning
    assert "warnings" not in json.loads((tmp_path / "e4" / "run.json").read_text())


# --------------------------------------------------------------------------- third round: what the audit of issue 21 found

def frontier_args(run: Path, cache: Path, *strengths: str) -> list[str]:
    return ["frontier", str(run), "--strengths", *(strengths or ("0.1",)), "--cache-dir", str(cache)]


@pytest.mark.integration
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_frontier_checks_its_strengths_when_the_command_line_is_read(base, baseline, tmp_path, capsys, value):
    run = tmp_path / "run"
    shutil.copytree(base / "baseline", run)
    before = tree_bytes(run)
    assert main(frontier_args(run, tmp_path / "cache", "0.1", value)) == 2
    err = capsys.readouterr().err
    assert f"vision-lens frontier: error: --strengths {float(value)}: give a finite penalty above 0" in err
    assert tree_bytes(run) == before and not (tmp_path / "cache").exists()  # nothing written, nothing captured


@pytest.mark.integration
def test_frontier_holds_the_run_folders_lock(base, baseline, tmp_path, capsys, monkeypatch):
    import vision_lens.frontier as frontier_module

    plain = tmp_path / "plain"  # no run: refused before a lock file is created there
    plain.mkdir()
    assert main(frontier_args(plain, tmp_path / "cache")) == 2
    assert f"{plain} holds no aggregate_metrics.json" in capsys.readouterr().err and not list(plain.iterdir())
    run = tmp_path / "run"
    shutil.copytree(base / "baseline", run)
    with held_by_another_process(run) as pid:
        before = tree_bytes(run)
        assert main(frontier_args(run, tmp_path / "cache")) == 2
        assert (f"vision-lens frontier: error: run folder {run} is being written by another vision-lens process "
                f"(pid {pid}); wait for it to finish") in capsys.readouterr().err
        assert tree_bytes(run) == before and not (tmp_path / "cache").exists()
    # While the frontier refits, a run with --overwrite on its folder (another process) is refused, removing nothing.
    sweep, overwrites = frontier_module.sweep, []

    def overwrite_then_sweep(*args, **kwargs):
        overwrites.append(vision_lens(*run_args(base / "data", run, base / "cache"), "--overwrite"))
        return sweep(*args, **kwargs)

    monkeypatch.setattr(frontier_module, "sweep", overwrite_then_sweep)
    assert main(frontier_args(run, base / "cache")) == 0
    (overwrite,) = overwrites
    assert overwrite.returncode == 2 and (f"--out {run} is being written by another vision-lens process "
                                          f"(pid {os.getpid()})") in overwrite.stderr, overwrite.stderr
    assert tree_bytes(run, MANIFEST_NAME, "frontier.json") == {k: v for k, v in before.items() if k != MANIFEST_NAME}


@pytest.mark.integration
def test_a_full_disk_under_frontier_stops_in_one_line_and_the_rerun_writes_it(base, baseline, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base / "baseline", run)
    before = tree_bytes(run, MANIFEST_NAME)  # which lists frontier.json before it is written
    args = frontier_args(run, base / "cache")  # a complete cache: only the run folder is written
    # frontier.json is about 1 KB, the manifest under 500 bytes, the strength's point kept before it under 700.
    full = vision_lens(700, *args, code=SMALL_DISK)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert (f"vision-lens frontier: error: run folder {run}: cannot write {run / 'frontier.json'} (File too large); "
            "the run's own files are as they were, and the strengths already done are kept. Free space there and "
            "rerun the same command") in full.stderr
    assert not (run / "frontier.json").exists() and not list(run.rglob("*.tmp"))
    assert tree_bytes(run, MANIFEST_NAME, "frontier.partial.json") == before
    kept = json.loads((run / "frontier.partial.json").read_text())["points"]
    assert [p["weight_decay"] for p in kept] == [0.1]
    assert main(args) == 0  # the rerun, in process: it resumes, and removes the partial sweep with its last write
    assert not (run / "frontier.partial.json").exists()
    assert [p["weight_decay"] for p in json.loads((run / "frontier.json").read_text())["points"]] == [0.1]
    assert "frontier.json" in manifest(run)["files"] and manifest(run)["complete"] is True


@pytest.mark.integration
@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs 0: give a number of training epochs (at least 1)"),
    (["--seed", "-1"], "--seed -1: give an integer from 0 to 4294967295"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device"),
], ids=["epochs", "seed", "device"])
def test_a_bad_demo_option_is_named_and_leaves_no_out_folder(tmp_path, capsys, extra, message):
    out = tmp_path / "a" / "demo"
    assert main(["demo", "--out", str(out), *extra]) == 2
    assert f"vision-lens demo: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.mark.integration
def test_eval_refuses_lenses_fitted_on_other_weights_or_another_model(base, baseline, tmp_path, capsys):
    from vision_lens.adapters.base import file_sha256

    lens = base / "baseline"
    fitted = json.loads((lens / "lenses" / "tuned" / "config.json").read_text())["weights_id"]
    state = create_adapter("cifar:resnet8", weights="random").model.state_dict()  # the weights of the fit
    state["conv1.weight"] = 2 * state["conv1.weight"]  # another backbone under the same head
    other = tmp_path / "other.th"
    torch.save({"state_dict": state}, other)
    for option, value, given in (("--weights", other, f"cifar:resnet8 with weights {file_sha256(other)}"),
                                 ("--model", "cifar:resnet14", "cifar:resnet14 with weights random-init:")):
        assert main(["eval", *EVAL_OPTIONS, option, str(value), "--data", str(base / "data"), "--lens", str(lens),
                     "--out", str(tmp_path / "e"), "--cache-dir", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err
        assert (f"lens folder {lens / 'lenses' / 'tuned'} was fitted on cifar:resnet8 with weights {fitted} (head "
                in err and f"not on {given}" in err and "pass the --model and --weights it was fitted on" in err), err
        assert not (tmp_path / "e").exists() and not (tmp_path / "cache").exists()


@pytest.mark.integration
def test_eval_refuses_a_complete_run_missing_a_lens_it_lists(base, baseline, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base / "baseline", run)
    shutil.rmtree(run / "lenses" / "tuned")  # before, shared and the probe were evaluated without it, exit 0
    assert main(["eval", *EVAL_OPTIONS, "--data", str(base / "data"), "--cache-dir", str(base / "cache"),
                 "--lens", str(run), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert (f"vision-lens eval: error: {run} lacks files that its run wrote there (lenses/tuned/config.json, "
            "lenses/tuned/params.pt); restore them") in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


@pytest.mark.integration
def test_an_extra_class_folder_in_the_eval_split_is_named_by_name_and_by_position(data_copy, tmp_path, capsys):
    shutil.copytree(data_copy / "test" / "cat", data_copy / "test" / "zebra")
    test = data_copy / "test"
    assert run_on(data_copy, tmp_path / "out", tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert f"{test} (split 'test'): its class folders do not match" in err
    assert "unknown to the model: zebra; missing: none" in err
    # Matched by position, the count is wrong: the message names the folder the model has no class for.
    assert run_on(data_copy, tmp_path / "out", tmp_path / "cache", "--match-classes-by-position") == 2
    err = capsys.readouterr().err
    assert (f"{test} (split 'test'): the data has 11 classes but cifar:resnet8 has 10 outputs, matched by position "
            "(unknown to the model: zebra; missing: none)") in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "features").exists() and not (tmp_path / "out").exists()


@pytest.mark.integration
def test_a_full_cache_dir_stops_in_one_line_naming_the_cache_and_the_rerun_gives_the_same_numbers(
        base, baseline, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = run_args(base / "data", out, cache)
    full = vision_lens(1000, *args, code=SMALL_DISK)  # the fit cache's first array file is 2.7 KB
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    (fit,) = [p for p in (cache / "features").iterdir() if p.is_dir()]
    assert full.stderr.rstrip().splitlines()[-1] == (
        f"vision-lens run: error: cannot write the feature cache {fit} (block_0.npy: File too large); nothing had "
        "been captured yet. Make it writable, or pass --cache-dir another folder")
    assert manifest(out)["complete"] is False
    assert main(args) == 0  # the rerun, in process
    assert (out / "aggregate_metrics.json").read_bytes() == baseline
