"""Result files: plain JSON and CSV a person can open, readable back by the plotting tools.

A run folder holds::

    aggregate_metrics.json   nested as tuned-lens eval writes it (see vision_lens.metrics)
    aggregate_metrics_ci.json  its 95 % bootstrap intervals, [low, high] leaves (when evaluated with intervals)
    batches.jsonl            per-batch means, one JSON list as tuned-lens writes it
    layers.json              {"layer_k": block name}
    metrics.csv              one row per (lens, layer, metric)
    run.json                 settings and provenance
    lenses/<type>/           config.json + params.pt per fitted lens
    vision-lens-manifest.json  {"complete": bool, "files": [...]}: written first, completed last

Every file is written atomically (``files.write_bytes_atomic``), with the
permissions of any file the user creates. Numbers that are undefined are
written as null; NaN or Infinity in a file read back (tuned-lens writes them)
are read as null too, and named in a warning.

The manifest makes two promises checkable. ``--overwrite`` removes only the
files the package wrote (listed in the manifest; for a run that stopped early,
the file names a run writes), and refuses a folder holding anything else, the
data or the feature cache. ``complete`` is set last, so ``compare`` and
``report`` can refuse a folder whose run was killed half-way. Folders written
before the manifest existed are read as before.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable, Mapping

from .errors import OptionError, UserError
from .files import FolderBusyError, FolderLock, write_text_atomic
from .schema import MANIFEST, RUN_INFO, SCHEMA_KEY, UNVERSIONED, schema_version, upgrade_fit_v1

INTERVALS_FILE = "aggregate_metrics_ci.json"
RESULT_FILES = ("aggregate_metrics.json", "batches.jsonl", "layers.json", "metrics.csv", "run.json")
MANIFEST_NAME = "vision-lens-manifest.json"
# Held (fcntl.flock, the holder's pid inside) by the one process writing the folder, from prepare_output to
# mark_complete; not a result file.
LOCK_NAME = ".vision-lens-lock"
LAYERWISE_FIGURE, TRANSFER_FIGURE = "layerwise.png", "transfer_penalty.png"  # plotting.save_run_figures
FRONTIER_FILE = "frontier.json"  # vision-lens frontier's output, added to a complete run's manifest
# The strengths a frontier has finished, each written as it finishes, so that a rerun resumes; removed with the
# last write. Named as a run names its files (WRITTEN_PATTERNS), so --overwrite may remove one left behind.
FRONTIER_PARTIAL = "frontier.partial.json"
# Every file name a run, train or eval writes: what --overwrite may remove from a run that stopped
# before it listed its files (the temporary files are those of files.write_text_atomic).
WRITTEN_PATTERNS = (
    *RESULT_FILES, INTERVALS_FILE, "train.json", "report.html", LAYERWISE_FIGURE, TRANSFER_FIGURE, FRONTIER_FILE,
    FRONTIER_PARTIAL,
    "lenses/*/config.json", "lenses/*/params.pt", ".*.tmp", "lenses/*/.*.tmp",
)


class OutputExistsError(UserError, FileExistsError):
    """--out holds something the run must not replace; the message lists it and says what to do."""


class RunFolderError(UserError, ValueError):
    """A run folder or result file cannot be used: unwritable, incomplete or malformed (named in the message)."""


def _files_under(folder: Path) -> set[str]:
    return ({p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
            - {MANIFEST_NAME, LOCK_NAME})


def read_manifest(folder: str | Path) -> dict | None:
    """The folder's manifest, or None where it has none (not written by vision-lens, or by an older version)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path} is damaged ({exc}); check the folder by hand and remove it") from exc
    if not (isinstance(manifest, dict) and isinstance(manifest.get("complete"), bool)
            and isinstance(manifest.get("files"), list)):
        raise RunFolderError(f"{path} is damaged (expected {{\"complete\": bool, \"files\": [...]}}); check the "
                             "folder by hand and remove it")
    schema_version(manifest, MANIFEST, path)  # versions 1 and 2 hold the same fields
    return manifest


def _write_manifest(folder: Path, complete: bool, files: Iterable[str]) -> None:
    write_text_atomic(folder / MANIFEST_NAME, json.dumps({SCHEMA_KEY: MANIFEST, "complete": complete,
                                                          "files": sorted(files)}, indent=1))


def add_to_manifest(folder: str | Path, name: str) -> None:
    """List ``name`` (written into the complete run ``folder`` afterwards) in its manifest, so that ``--overwrite``
    knows the package wrote it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is not None:
        _write_manifest(folder, manifest["complete"], {*manifest["files"], name})


def written_by_package(folder: Path, manifest: dict) -> set[str]:
    """The files in ``folder`` that the package wrote: listed in the manifest, or named as a run names them."""
    present = _files_under(folder)
    ours = present & set(manifest["files"])
    if not manifest["complete"]:
        ours |= {f for f in present if any(fnmatch(f, pattern) for pattern in WRITTEN_PATTERNS)}
    return ours


def _inside(path: str | Path, folder: Path) -> bool:
    path = Path(path)
    return path.exists() and path.resolve().is_relative_to(folder.resolve())


_out_locks: dict[Path, FolderLock] = {}  # --out folders this process holds, until mark_complete


def check_output(out: str | Path, overwrite: bool, keep: Mapping[str, str | Path] | None = None) -> None:
    """Every check of :func:`prepare_output` that changes nothing on disk, each refusal naming ``--out``: run it
    while the command line is read, so that a bad argument found later (an unknown model, missing data) leaves no
    folder behind."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise OutputExistsError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist; create "
                                "that folder, or pass another --out")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; pass a folder path")
    for option, path in (keep or {}).items():
        if out.exists() and Path(path).exists() and Path(path).resolve() == out.resolve():
            raise OutputExistsError(f"--out {out} is the {option} folder that this command reads; writing there "
                                    "would replace it, so choose another --out")
    split = _split_folder_holding(out, (keep or {}).get("--data"))
    if split is not None:
        raise OptionError(f"--out {out} lies inside {split}, a split folder of --data {keep['--data']}, whose "
                          "folders are read as classes of images: the next run on that --data would stop at the "
                          "results folder; choose an --out outside --data's split folders")
    if not out.exists():
        parent = next(p for p in out.absolute().parents if p.exists())
        if not parent.is_dir():
            raise _not_writable(out, NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise _not_writable(out, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
        return
    holder = FolderLock(out, LOCK_NAME).holder()
    if holder is not None:
        raise _busy(out, holder)
    if not os.access(out, os.R_OK | os.W_OK | os.X_OK):
        raise _not_writable(out, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    _removable(out, overwrite, keep or {})


def _split_folder_holding(out: Path, data: str | Path | None) -> Path | None:
    """The folder of ``data`` (a split, whose folders a run reads as classes) that ``out`` lies inside, at any
    depth; None where ``out`` is outside ``data``, ``data`` itself or a folder directly in it."""
    if data is None or not Path(data).is_dir():  # also torchvision:cifar10, a name
        return None
    try:
        inside = out.resolve().relative_to(Path(data).resolve()).parts
    except ValueError:
        return None
    return Path(data) / inside[0] if len(inside) > 1 else None


def _busy(out: Path, pid: str, name: str = "--out") -> OutputExistsError:
    return OutputExistsError(f"{name} {out} is being written by another vision-lens process (pid {pid}); wait for it "
                             f"to finish{', or choose another --out' if name == '--out' else ''}")


def prepare_output(out: str | Path, overwrite: bool, keep: Mapping[str, str | Path] | None = None) -> Path:
    """Create ``out`` and its manifest (incomplete), holding its lock until :func:`mark_complete`; call it after the
    command's other inputs are checked and before any compute (:func:`check_output` runs its checks earlier).

    A folder that is not empty is refused unless ``overwrite`` (or it is a run
    that stopped early, whose own files a rerun replaces). Then only the files
    the package wrote are removed, and the folder is refused, untouched, if it
    holds anything else or any of ``keep``, the command's inputs by option (``--data``, the feature cache,
    the ``--lens`` folder, the weights).
    """
    out = Path(out)
    check_output(out, overwrite, keep)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _not_writable(out, exc) from exc
    lock = _lock(out)  # before anything is removed: a second run must not delete the first one's files
    try:
        _clear_output(out, overwrite, keep or {})
        _write_manifest(out, complete=False, files=[])
    except BaseException as exc:
        lock.release()
        if isinstance(exc, OSError) and not isinstance(exc, OutputExistsError):
            raise _not_writable(out, exc) from exc
        raise
    _out_locks[out.resolve()] = lock
    return out


def _lock(out: Path, name: str = "--out") -> FolderLock:
    """``out``'s writer lock, taken at once; an error naming the folder (as ``name`` calls it) and any holder."""
    lock = FolderLock(out, LOCK_NAME)
    try:
        lock.acquire(wait=False)
    except FolderBusyError as exc:
        raise _busy(out, exc.pid, name) from None
    except OSError as exc:
        raise _not_writable(out, exc, name) from exc
    return lock


def _not_writable(out: Path, exc: OSError, name: str = "--out") -> RunFolderError:
    return RunFolderError(f"{name} {out} is not writable ({exc.strerror or exc}); choose a folder you can write to")


def _removable(out: Path, overwrite: bool, keep: Mapping[str, str | Path]) -> set[str]:
    """The files a run may remove from the existing folder ``out``, as :func:`prepare_output` says; an
    OutputExistsError where it must not be touched."""
    if not any(p.name != LOCK_NAME for p in out.iterdir()):
        return set()
    manifest = read_manifest(out)
    stopped_early = manifest is not None and not manifest["complete"]
    if not (overwrite or stopped_early):
        raise OutputExistsError(
            f"--out {out} already exists and is not empty; pass --overwrite to replace it, or choose another --out"
        )
    ours = written_by_package(out, manifest) if manifest else set()
    foreign = sorted(_files_under(out) - ours)
    protected = [f"{path} ({option})" for option, path in keep.items() if _inside(path, out)]
    if foreign or protected:
        listed = protected + foreign[:20]
        more = f" and {len(foreign) - 20} more" if len(foreign) > 20 else ""
        raise OutputExistsError(
            f"--out {out}: --overwrite removes only files vision-lens wrote there, and refuses to touch: "
            f"{', '.join(listed)}{more}. Move them out of {out}, or choose another --out."
        )
    return ours


def _clear_output(out: Path, overwrite: bool, keep: Mapping[str, str | Path]) -> None:
    """Remove what the package wrote in ``out``, as :func:`prepare_output` says, or refuse touching nothing."""
    ours = _removable(out, overwrite, keep)
    if ours:
        for name in sorted(ours):
            (out / name).unlink()
        emptied = {parent for name in ours for parent in (out / name).parents if parent != out and out in parent.parents}
        for folder in sorted(emptied, key=lambda p: -len(p.parts)):  # deepest first; a user's empty folder stays
            if not any(folder.iterdir()):
                folder.rmdir()


class OutputWriteError(RunFolderError):
    """A file of --out (or of the run folder that `frontier` adds to) could not be written (a full disk, say); the
    message names it, what was kept and the rerun."""


RUN_KEPT = ("nothing already written was lost: the feature cache keeps every captured row and --out stays marked "
            "incomplete. Free space there (or pass another --out) and rerun the same command, which resumes from the "
            "cache")


@contextmanager
def writing_into(out: Path, name: str = "--out", kept: str = RUN_KEPT):
    """Turn an OSError of the writes in the block (a full disk, a file size limit, a folder gone read-only) into an
    OutputWriteError naming the file and the folder (as ``name`` calls it), then what was ``kept``: the command stops
    in one line (a run's folder stays marked incomplete for the rerun that resumes it)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, UserError):
            raise
        raise OutputWriteError(f"{name} {out}: cannot write {exc.filename or out} ({exc.strerror or exc}); {kept}") \
            from exc


@contextmanager
def holding_lock(folder: Path, name: str):
    """``folder``'s writer lock (the one a run holds on its --out) for the block, for a command that adds to a
    complete run: while another process writes the folder it is refused at once, naming the holder, and while the
    block runs a run on that folder is refused in turn, so ``--overwrite`` cannot remove it meanwhile."""
    lock = _lock(folder, name)
    try:
        yield
    finally:
        lock.release()


def mark_complete(out: str | Path) -> None:
    """Record every file in ``out`` as the package's and the run as complete, and let other runs write it; call it
    after the last write."""
    out = Path(out)
    _write_manifest(out, complete=True, files=_files_under(out))
    lock = _out_locks.pop(out.resolve(), None)
    if lock is not None:
        lock.release()


def require_complete(path: str | Path, needs: str | None = None) -> None:
    """Refuse a run folder (or a file in one) whose manifest says its run did not finish; with ``needs`` (a folder
    of it, ``lenses/``), also one that lacks any file its manifest lists there, so that what remains is not used
    as if it were all."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    manifest = read_manifest(folder)
    if manifest is not None and not manifest["complete"]:
        raise RunFolderError(f"{folder} is an incomplete run (it stopped before finishing); rerun the command that "
                             "writes it, or pass a finished run")
    if manifest is None or needs is None:
        return
    missing = sorted(f for f in manifest["files"] if f.startswith(needs) and not (folder / f).is_file())
    if missing:
        raise RunFolderError(f"{folder} lacks files that its run wrote there ({', '.join(missing[:6])}"
                             f"{', ...' if len(missing) > 6 else ''}); restore them, or fit the lenses again with "
                             "`vision-lens train` or `run`")


def layer_keys(keys) -> list[str]:
    """``layer_k`` keys in block order (``layer_10`` after ``layer_9``)."""
    return sorted(keys, key=lambda k: int(k.split("_")[1]))


def undefined_as_null(obj):
    """``obj`` with every NaN or infinite float replaced by None: an undefined value is null, never a number."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: undefined_as_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [undefined_as_null(v) for v in obj]
    return obj


def non_finite_keys(obj, where: str = "") -> list[str]:
    """The dotted keys of every NaN or infinite float in ``obj`` (parsed JSON: ``NaN`` and ``Infinity`` are what
    Python's json writes for them, and tuned-lens's eval writes them so)."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [where or "the top level"]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in non_finite_keys(v, f"{where}.{key}" if where else str(key))]
    if isinstance(obj, list):
        return [k for i, v in enumerate(obj) for k in non_finite_keys(v, f"{where}[{i}]")]
    return []


def _read_values(path: Path, expected: str, notes: list[str]):
    """:func:`read_json`, with every NaN or infinite number made null (undefined, never drawn or tabulated as a value);
    each file that held one gets a line in ``notes``, also printed as a warning."""
    data = read_json(path, expected)
    bad = non_finite_keys(data)
    if bad:
        note = (f"{path} holds {len(bad)} NaN or infinite number(s) ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); they are shown as undefined, not as values")
        print(f"[vision-lens] warning: {note}", file=sys.stderr)
        notes.append(note)
    return undefined_as_null(data)


def _dump(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(undefined_as_null(obj), indent=1, allow_nan=False))


def tidy_rows(aggregate: dict, layers: dict[str, str]) -> list[dict]:
    """One row per (lens, layer, metric); baseline rows have layer 'final'."""
    rows = []
    for lens_type, metrics in aggregate.items():
        for metric, by_layer in metrics.items():
            if metric == "layer_transfer":
                continue
            for layer, value in by_layer.items():
                rows.append({
                    "lens": lens_type,
                    "layer": layer,
                    "block": layers.get(layer, layer),
                    "metric": metric,
                    "value": "" if value is None else value,
                })
    return rows


def write_results(
    out: Path, aggregate: dict, batches: list[dict], layers: dict[str, str], run: dict, intervals: dict | None = None
) -> "RunResults":
    """Write the result files, and return them as :func:`load_results` would read them back (undefined values
    null), for the figures and the report; the folder counts as incomplete until ``mark_complete``."""
    manifest = read_manifest(out)
    _write_manifest(out, complete=False, files=manifest["files"] if manifest else [])
    aggregate, run = undefined_as_null(aggregate), undefined_as_null(run)
    intervals = None if intervals is None else undefined_as_null(intervals)
    _dump(out / "aggregate_metrics.json", aggregate)
    if intervals is not None:
        _dump(out / INTERVALS_FILE, intervals)
    write_text_atomic(out / "batches.jsonl", json.dumps(undefined_as_null(batches), allow_nan=False) + "\n")
    _dump(out / "layers.json", layers)
    _dump(out / "run.json", run)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=["lens", "layer", "block", "metric", "value"])
    writer.writeheader()
    writer.writerows(tidy_rows(aggregate, layers))
    write_text_atomic(out / "metrics.csv", table.getvalue())
    return RunResults(out, run.get("model", out.name), aggregate, dict(layers), run, intervals)


@dataclass
class RunResults:
    """A run folder read back: what the plotting and report helpers take."""

    path: Path
    name: str
    aggregate: dict
    layers: dict[str, str]
    run: dict
    intervals: dict | None = None  # aggregate_metrics_ci.json; None where absent (e.g. tuned-lens output)
    non_finite: tuple[str, ...] = ()  # a line per input file whose NaN or infinite numbers were read as undefined
    # What every table or figure of this run must say beside its numbers (a penalty-only matrix: that its CE trace
    # may come from another lens run of the same model)
    caveats: tuple[str, ...] = ()

    @property
    def block_names(self) -> list[str]:
        return [self.layers[k] for k in layer_keys(self.layers)]

    @property
    def schema(self) -> int:
        """The version of its run.json (``schema``); 1 for folders without one and for tuned-lens output."""
        return self.run.get(SCHEMA_KEY, UNVERSIONED)

    @property
    def block_stages(self) -> list[str]:
        """Each block's stage, as its adapter gave it (run.json's ``block_stages``); empty without block names.

        Version-1 runs that did not record stages were all CIFAR ResNets or Inceptions, whose stage is the block
        name up to its first ``.`` (``layer2.1`` -> ``layer2``; ``inception4a``: its own).
        """
        if "block_stages" in self.run:
            return list(self.run["block_stages"])
        if self.schema == UNVERSIONED:
            return [name.split(".", 1)[0] for name in self.block_names]
        raise RunFolderError(f"{self.path}/run.json lacks block_stages; it is damaged, rerun the run")


AGGREGATE_SCHEMA = (
    '{lens: {metric: {"layer_k": number or null}, "layer_transfer": {kind: {"layer_i": {"layer_j": number or '
    'null}}}}, "baseline": {metric: {"final": number or null}}}, as `vision-lens run` and `tuned-lens eval` write it'
)


def read_json(path: Path, expected: str):
    """Parse ``path``; an unreadable or malformed file raises RunFolderError naming it and what was expected."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunFolderError(f"{path} is not readable JSON ({exc}); expected {expected}") from exc


def _is_value(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _is_layer_table(table, depth: int) -> bool:
    """``{"layer_k": value}`` (depth 1) or ``{"layer_i": {"layer_j": value}}`` (depth 2), with integer k."""
    if not isinstance(table, dict) or not table:
        return False
    keys_ok = all(isinstance(k, str) and k.startswith("layer_") and k[6:].isdigit() for k in table)
    return keys_ok and all(_is_value(v) if depth == 1 else _is_layer_table(v, 1) for v in table.values())


def check_aggregate(path: Path, aggregate) -> None:
    """Raise RunFolderError naming ``path`` unless ``aggregate`` has the tuned-lens eval nesting and some data."""
    def fail(problem: str):
        raise RunFolderError(f"{path}: {problem}; expected {AGGREGATE_SCHEMA}")

    if not isinstance(aggregate, dict):
        fail(f"the top level is a {type(aggregate).__name__}, not an object")
    has_values = False
    for lens_type, metrics in aggregate.items():
        if not isinstance(metrics, dict):
            fail(f"{lens_type!r} is not an object of metrics")
        for metric, table in metrics.items():
            if lens_type == "baseline":
                if not (isinstance(table, dict) and set(table) == {"final"} and _is_value(table["final"])):
                    fail(f'baseline {metric!r} is not {{"final": number or null}}')
            elif metric == "layer_transfer":
                if not (isinstance(table, dict) and all(_is_layer_table(t, 2) for t in table.values())):
                    fail(f"{lens_type}.layer_transfer is not a table of layer_i -> layer_j -> value")
                for kind, rows in table.items():  # square: every translator row over every block, no more
                    for row, cells in rows.items():
                        missing, extra = sorted(set(rows) - set(cells)), sorted(set(cells) - set(rows))
                        if missing or extra:
                            fail(f"{lens_type}.layer_transfer.{kind}.{row} has other layers than the table's rows "
                                 f"(missing: {', '.join(missing) or 'none'}; extra: {', '.join(extra) or 'none'})")
            elif not _is_layer_table(table, 1):
                fail(f"{lens_type}.{metric} is not a table of layer_k -> number or null")
            else:
                has_values |= any(v is not None for v in table.values())
    if not has_values:
        fail("it holds no lens with a layer-wise value")


def load_results(path: str | Path) -> RunResults:
    """A run folder, a bare ``aggregate_metrics.json`` (e.g. from ``tuned-lens eval``) named after its folder, a
    folder holding a penalty-only transfer matrix and a per-layer CE (:func:`load_penalty_only`), or the name of a
    committed reference run (``"cifar10-vit"``: a folder of :func:`~vision_lens.resources.results_root`).

    A malformed file raises RunFolderError naming it and what was expected.
    """
    path, notes = reference_or_path(path), []
    if path.is_dir() and not (path / "aggregate_metrics.json").is_file() and list(path.glob(PENALTY_ONLY_GLOB)):
        return load_penalty_only(path)
    if path.is_file():
        aggregate = _read_values(path, AGGREGATE_SCHEMA, notes)
        check_aggregate(path, aggregate)
        return RunResults(path.parent, path.parent.name, aggregate, {}, {}, non_finite=tuple(notes))
    agg = path / "aggregate_metrics.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or file")
    if not agg.is_file():
        raise FileNotFoundError(f"{path} holds no aggregate_metrics.json; pass a folder written by `vision-lens run` "
                                "or `tuned-lens eval`")
    layers_path, run_path = path / "layers.json", path / "run.json"
    aggregate = _read_values(agg, AGGREGATE_SCHEMA, notes)
    check_aggregate(agg, aggregate)
    layers = read_json(layers_path, '{"layer_k": block name}') if layers_path.is_file() else {}
    if not (isinstance(layers, dict) and all(isinstance(v, str) for v in layers.values())):
        raise RunFolderError(f'{layers_path}: expected {{"layer_k": block name}}')
    run = read_json(run_path, "an object of run settings") if run_path.is_file() else {}
    if not isinstance(run, dict):
        raise RunFolderError(f"{run_path}: expected an object of run settings, not a {type(run).__name__}")
    if schema_version(run, RUN_INFO, run_path) == UNVERSIONED and isinstance(run.get("fit"), dict):
        run = run | {"fit": {name: upgrade_fit_v1(fit) for name, fit in run["fit"].items()}}
    intervals_path = path / INTERVALS_FILE
    intervals = _read_values(intervals_path, "the nesting of aggregate_metrics.json with [low, high] leaves", notes) \
        if intervals_path.is_file() else None
    return RunResults(path, run.get("model", path.name), aggregate, layers, run, intervals, tuple(notes))


def reference_or_path(path: str | Path) -> Path:
    """``path`` as given where it exists or is not a bare name; else the committed reference run of that name
    (``cifar10-vit``: a folder of :func:`~vision_lens.resources.results_root`, ``results/`` in a checkout,
    ``vision_lens/references`` in an installed wheel). An unknown bare name is a FileNotFoundError listing the
    references."""
    from .resources import results_root

    given = Path(path)
    if given.exists() or len(given.parts) != 1 or given.suffix:
        return given
    root = results_root()
    if (root / given / "aggregate_metrics.json").is_file():
        return root / given
    names = sorted(p.parent.name for p in root.glob("*/aggregate_metrics.json"))
    raise FileNotFoundError(f"{path} is neither a folder nor a file here, nor the name of a committed reference run "
                            f"(in {root}: {', '.join(names) or 'none'}); `vision-lens references` lists them")


# A penalty-only matrix (no own CE inside it) beside a per-layer CE, as the tuned-lens authors' published numbers
# come (../shared/data/llm-anchors/): the two files of such a folder.
PENALTY_ONLY_GLOB = "*transfer-penalty.json"
LAYER_CE_GLOB = "*-ce.json"
PENALTY_ONLY_CAVEAT = ("its transfer penalties and its per-layer CE come from two files ({} and {}): the CE trace may "
                       "come from a different lens run of the same model, so every number that divides one by the "
                       "other mixes the two")


def load_penalty_only(folder: str | Path, model_key: str | None = None) -> RunResults:
    """A penalty-only transfer matrix with a per-layer CE from a separate file, read as a tuned-lens run.

    ``folder`` holds one ``*transfer-penalty.json`` (``{"model", "unit", "penalty": {"layer_i": {"layer_j": v}}}``,
    rows the translator's layer) and one ``*-ce.json`` (``{"models": {key: description}, "ce": {key: {"layer_k":
    v}}}``), as ``../shared/data/llm-anchors/`` does for Pythia-12B; the CE trace is the one whose description
    starts with the matrix's model (or ``model_key``). The result has the tuned lens's layer-wise ``ce`` and its
    ``layer_transfer.penalty``, no run.json (tuned-lens's convention: ``layer_0`` is the embedding output), and a
    caveat that every table must carry: the CE trace may come from a different lens run of the same model.
    """
    folder, notes = Path(folder), []
    expected_penalty = ('{"model": name, "unit": unit, "penalty": {"layer_i": {"layer_j": number}}} (rows: the '
                        'translator\'s layer)')
    expected_ce = '{"models": {key: description}, "ce": {key: {"layer_k": number}}}'
    found = {glob: sorted(folder.glob(glob)) for glob in (PENALTY_ONLY_GLOB, LAYER_CE_GLOB)}
    for glob, paths in found.items():
        if len(paths) != 1:
            raise RunFolderError(f"{folder}: expected one {glob} file beside the penalty matrix, found "
                                 f"{len(paths)} ({', '.join(p.name for p in paths) or 'none'})")
    penalty_path, ce_path = found[PENALTY_ONLY_GLOB][0], found[LAYER_CE_GLOB][0]
    matrix = _read_values(penalty_path, expected_penalty, notes)
    traces = _read_values(ce_path, expected_ce, notes)
    if not (isinstance(matrix, dict) and isinstance(matrix.get("model"), str)
            and _is_layer_table(matrix.get("penalty"), 2)):
        raise RunFolderError(f"{penalty_path}: expected {expected_penalty}")
    if not (isinstance(traces, dict) and isinstance(traces.get("models"), dict) and isinstance(traces.get("ce"), dict)):
        raise RunFolderError(f"{ce_path}: expected {expected_ce}")
    model = matrix["model"]
    keys = [model_key] if model_key is not None else [
        key for key, about in traces["models"].items() if str(about).split(" ")[0] == model]
    if len(keys) != 1 or not _is_layer_table(traces["ce"].get(keys[0]), 1):
        raise RunFolderError(f"{ce_path} holds no single per-layer CE trace of {model} (its models: "
                             f"{', '.join(f'{k}: {v}' for k, v in traces['models'].items())}); pass model_key")
    ce, penalty = traces["ce"][keys[0]], matrix["penalty"]
    if set(ce) != set(penalty):
        raise RunFolderError(f"{ce_path} ({keys[0]}) and {penalty_path} cover other layers "
                             f"({len(ce)} against {len(penalty)}); they must describe the same lens layers")
    aggregate = {"tuned": {"ce": ce, "layer_transfer": {"penalty": penalty}}}
    check_aggregate(penalty_path, aggregate)
    caveat = PENALTY_ONLY_CAVEAT.format(penalty_path.name, ce_path.name)
    return RunResults(folder, model.split("/")[-1], aggregate, {}, {}, non_finite=tuple(notes), caveats=(caveat,))
