"""``vision-lens``: the command line, generated from the option dataclasses of ``options.py``.

Only light modules are imported at the top: ``--help`` answers at once, and
torch and the plotting stack load when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .lens_kinds import lens_kinds
from .options import EvalOptions, RunOptions


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--flag`` per dataclass field, with the field's help text, default and type."""
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        flag = "--" + f.name.replace("_", "-")
        if meta.get("action") == "store_true":
            parser.add_argument(flag, help=help_text, **meta)
            continue
        default = None if meta.get("required") else f.default
        shown = "" if meta.get("required") or default is None else f" (default: {default})"
        parser.add_argument(flag, help=help_text + shown, default=default, **meta)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vision-lens",
        description="Tuned lenses on every block of vision models: layer-wise metrics and transfer penalties "
        "in the tuned-lens eval format.",
    )
    parser.add_argument("--version", action="version", version=f"vision-lens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls, text in (
        ("train", RunOptions, "capture the fit split and fit every lens kind of --lenses (by default a tuned lens, a "
         "shared tuned lens and a linear probe) on every block"),
        ("eval", EvalOptions, "evaluate lenses from `train` (and the logit lens) on the eval split"),
        ("run", RunOptions, "train, then eval, into one output folder"),
    ):
        add_options(sub.add_parser(name, help=text, description=text), cls)
    text = ("list every registered architecture: blocks, readout, where --weights pretrained comes from and the "
            "preprocessing")
    sub.add_parser("models", help=text, description=text)
    demo = sub.add_parser("demo", help="offline smoke test: digits, a small ResNet trained on the spot, the full pipeline")
    demo.add_argument("--out", default="vision-lens-demo", help="output folder (default: vision-lens-demo)")
    demo.add_argument("--epochs", type=int, default=5, help="training epochs of the small ResNet (default: 5)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the split, the model and the lenses (default: 0)")
    demo.add_argument("--device", default="auto", help="torch device (default: auto)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")
    text = ("plot run folders and `tuned-lens eval` aggregate_metrics.json files on one relative-depth axis, "
            "on normalised quantities (bits per image and bits per byte do not compare)")
    compare = sub.add_parser("compare", help=text, description=text)
    compare.add_argument("inputs", nargs="+", metavar="DIR_OR_JSON",
                         help="vision-lens run folders, tuned-lens eval folders, aggregate_metrics.json files, "
                         "folders of a penalty-only transfer matrix with a per-layer CE (../shared/data/llm-anchors: "
                         "Pythia-12B), or names of committed references (`vision-lens references`)")
    compare.add_argument("--out", required=True, help="figure file to write; its suffix sets the format (.png, .pdf)")
    compare.add_argument("--lens-types", nargs="+", default=["tuned", "logit"],
                         choices=[kind.name for kind in lens_kinds()],
                         help="lenses drawn in the CE and KL panels (default: tuned logit)")
    compare.add_argument("--label", action="append", dest="labels", metavar="NAME",
                         help="name of an input in the legend; repeat once per input, in the order of the inputs "
                         "(default: the model in run.json, or the folder name)")
    compare.add_argument("--thin", type=int, default=None, metavar="N",
                         help="also draw each language-model input (no block names) deeper than N layers at N of its "
                         "layers, every (layers // N)-th from layer_0, for matched relative depth (Pythia-12B's 36 "
                         "at 6: layers 0, 6, ..., 30)")
    text = ("refit a run's lenses fitted to the model's output (tuned, shared) from its feature cache at a common "
            "sweep of L2 strengths (1e-6 ... 1, half-decades; the same for every block) and write DIR/frontier.json: own CE, neighbour "
            "penalties within and across stages, penalty by distance and the shared lens's gap per strength")
    frontier = sub.add_parser("frontier", help=text, description=text)
    frontier.add_argument("run", metavar="DIR", help="a run folder written by `vision-lens run`")
    frontier.add_argument("--strengths", nargs="+", type=float, default=None, metavar="WD",
                          help="the L2 strengths (default: 1e-6 ... 1 in half-decades)")
    frontier.add_argument("--cache-dir", default=None, help="feature cache root (default: the run's, as its run.json "
                          "records it; for runs that did not record it, $VISION_LENS_CACHE or ~/.cache/vision_lens)")
    frontier.add_argument("--workers", type=int, default=None, help="data-loading workers (default: the run's)")
    text = ("place your lens results among the vision controls: the signatures of a `tuned-lens eval --layer_transfer` "
            "folder (or a run folder) beside the committed references', with intervals from its batches.jsonl; "
            "prints a table and writes control.json, control.md and control.png")
    control = sub.add_parser("control", help=text, description=text)
    control.add_argument("run", metavar="DIR", help="your `tuned-lens eval --layer_transfer --output` folder, a "
                         "vision-lens run folder, or a reference's name")
    control.add_argument("--reference", action="append", default=[], metavar="DIR_OR_NAME",
                         help="one more reference (repeatable): a folder compare reads, e.g. "
                         "../shared/data/llm-anchors for Pythia-12B, or a committed reference's name")
    control.add_argument("--no-default-references", action="store_true",
                         help="compare with the --reference runs only, not with every committed reference")
    control.add_argument("--lens", default=None, metavar="DIR", help="the folder `tuned-lens train` wrote for your "
                         "run (config.json + params.pt), for the translators' distance from the identity (default: "
                         "DIR/lens where it exists)")
    control.add_argument("--out", default="vision-lens-control",
                         help="folder for control.json, control.md and control.png (default: vision-lens-control)")
    control.add_argument("--resamples", type=int, default=1000,
                         help="bootstrap resamples of the batches of each batches.jsonl (default: 1000)")
    control.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    text = "list the committed reference runs `control` and `load_results` take by name: model, family, fit, what it is"
    sub.add_parser("references", help=text, description=text)
    text = "rebuild report.html (plots, per-block metrics, provenance) for one run, or several side by side"
    report = sub.add_parser("report", help=text, description=text)
    report.add_argument("runs", nargs="+", metavar="DIR", help="run folders written by `vision-lens run` or `eval`")
    report.add_argument("--out", default=None,
                        help="HTML file to write (default: DIR/report.html for one run, ./report.html for several)")
    return parser


# What a Ctrl-C keeps, by command: capture commits rows as it goes, and --out stays marked incomplete.
_RESUMES = ("the feature cache keeps every row captured so far and --out stays marked incomplete; rerun the same "
            "command to resume")
INTERRUPTED_KEEPS = {"train": _RESUMES, "eval": _RESUMES, "run": _RESUMES, "demo": "rerun it with --overwrite"}


_forks_ignore_ctrl_c = False


def leave_ctrl_c_to_this_process() -> None:
    """Processes forked from here on (DataLoader workers) ignore SIGINT: a Ctrl-C reaches every process of the
    terminal at once, and a worker that died of it could take the batch in flight with it (a FileNotFoundError in
    this process, instead of the interrupt). This process stops its workers when the interrupt unwinds capture."""
    global _forks_ignore_ctrl_c
    if not _forks_ignore_ctrl_c and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        _forks_ignore_ctrl_c = True


def main(argv: list[str] | None = None, on_stage=None) -> int:
    """``vision-lens`` with ``argv``; ``on_stage`` (see ``pipeline``) is told as each stage of ``train``, ``eval``
    and ``run`` starts and ends. Returns the exit status."""
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "models":  # no torch: answers at once
        from .adapters.listing import table

        print(table())
        print("\nA name with <...> stands for every name of that form. `vision-lens run --model NAME --weights random` "
              "builds any of them untrained; --weights PATH loads a checkpoint of it.")
        return 0
    if command == "references":  # no torch: answers at once
        from .reference_runs import listing

        print(listing())
        return 0
    from . import pipeline
    from .errors import UserError
    from .threads import limit_torch_threads

    limit_torch_threads()
    leave_ctrl_c_to_this_process()
    try:
        if command == "demo":
            from .demo import demo

            out = demo(**args)
        elif command == "compare":
            from .compare import compare_to_file

            out = compare_to_file(args["inputs"], args["out"], args["lens_types"], args["labels"], args["thin"])
        elif command == "control":
            from .controls import control
            from .options import check_seed

            check_seed(args["seed"])
            result = control(args["run"], args["reference"], not args["no_default_references"], args["out"],
                             args["lens"], args["resamples"], args["seed"])
            print(result.table())
            out = Path(args["out"])
        elif command == "frontier":
            from .options import check_penalty

            for strength in args["strengths"] or ():
                check_penalty("--strengths", strength)
            from .frontier import FRONTIER_STRENGTHS, frontier

            overrides = {k: args[k] for k in ("cache_dir", "workers") if args[k] is not None}
            out = frontier(args["run"], tuple(args["strengths"] or FRONTIER_STRENGTHS), **overrides)
        elif command == "report":
            from .report import report_runs

            out = report_runs(args["runs"], args["out"])
        elif command == "eval":
            out = pipeline.evaluate(EvalOptions(**args), on_stage=on_stage)
        else:
            out = getattr(pipeline, command)(RunOptions(**args), on_stage=on_stage)
    except (UserError, FileNotFoundError) as exc:  # a bare ValueError is a bug: its traceback goes through
        print(f"vision-lens {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vision-lens {command}: interrupted; {INTERRUPTED_KEEPS.get(command, 'nothing was completed')}",
              file=sys.stderr)
        return 130  # as a shell reports SIGINT
    finally:
        pipeline.stop_processes()
    if out is not None:  # None: a torchrun rank other than 0, which only captured its shards
        print(f"[vision-lens] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
