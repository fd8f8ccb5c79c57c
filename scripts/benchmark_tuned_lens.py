#!/usr/bin/env python
"""tuned-lens's own trainer against this pipeline, on one causal language model and the same tokens; writes JSON.

Three fits of the tuned lens, each in a fresh interpreter, one after another, at the same thread count:

* ``tuned_lens``: ``tuned-lens train`` (its default recipe: SGD with Nesterov momentum, 250 steps, weight decay
  1e-3) at the steps and tokens per step of the pipeline's ``--recipe tuned-lens`` (``TunedLensRecipe``: 250 steps
  of 1,024 tokens, the scaling of the committed ``results/lm-reference`` lens), one micro-batch of windows per
  step; then ``tuned-lens eval`` of its lens on the eval windows.
  ``train_wall_s`` is the whole ``train`` process seen from outside: imports, model load, reading and tokenizing
  the text, the model's forward passes and the lens's steps.
* ``pipeline_recipe``: ``vision-lens run --recipe tuned-lens --lenses tuned`` (the same recipe, reimplemented) on
  the same fit windows, every position a row. ``train_s`` is what corresponds to tuned-lens's train process:
  the run's imports, model load, preflight, the fit split's capture, the fit and saving the lens (the stages of
  ``scripts/timed_run.py``); ``wall_s`` is the whole run, evaluation, intervals, figures and report included.
* ``pipeline_default``: ``vision-lens run --lenses tuned shared`` with the default fit (each translator to its
  penalised optimum by L-BFGS, the L2 strength chosen on held-out fit rows), on a seeded subset of the same fit
  windows (``--default-fit-windows``): a full-batch L-BFGS against the 8,192-way unembedding costs hundreds of
  passes over its rows, so it gets fewer of them. The linear probe (8,192 x width weights per block, the same
  cost again) is left out: no signature reads it.

The **tokens**: the first documents of ``DATA/train.jsonl``, the last one cut short, so that they make exactly the
``steps x tokens per step / context`` windows tuned-lens's trainer reads once (it would stop early, silently, on
fewer), cut as both tools cut them (``vision_lens.text.token_windows``); the eval windows likewise from
``DATA/validation.jsonl``. Both files are written under ``--work`` and both tools read them. Every CE is held out:
bits per byte on the eval windows, every position (tuned-lens's unit; the pipeline's bits per token times its
run's ``bits_per_byte_per_bit``). ``summary`` holds the speed ratio of the recipe (tuned-lens's ``train_wall_s``
over the pipeline's ``train_s``), the largest per-layer difference between the two recipe fits, and each fit's
mean tuned-lens CE over the layers tuned-lens lenses (all but the last, which is the model's output).

The pipeline's two run folders are written to ``--recipe-run`` and ``--default-run`` (by default
``results/lm-reference-pipeline*``, not committed yet: docs/language-models.md says why), each with a fresh feature cache under ``--work``. Example (the committed
benchmark; see docs/language-models.md)::

    python scripts/benchmark_tuned_lens.py --model results/checkpoints/lm-reference --data runs/lm-reference/data \\
        --work runs/benchmark-tuned-lens --out results/benchmark/tuned-lens-lm-reference-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # timed_run and train_reference_lm, beside this file
from timed_run import stopwatch  # noqa: E402

TIMED_RUN = Path(__file__).resolve().parent / "timed_run.py"
WORK_MARK = "benchmark_tuned_lens.work"  # in --work: a folder this script made, which it may replace
# The pipeline stages that correspond to tuned-lens's train process (the rest evaluate and write the results).
TRAINING_STAGES = ("import_torch_torchvision", "import_vision_lens", "load_model", "preflight", "prepare_output",
                   "capture_fit", "fit_lens", "fit_by_recipe", "save_lenses", "main")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder written by save_pretrained (causal LM and tokenizer)")
    parser.add_argument("--data", required=True, help="a folder with train.jsonl and validation.jsonl")
    parser.add_argument("--work", required=True, type=Path, help="scratch folder: the token files, tuned-lens's lens "
                        "and eval output, the feature caches (replaced)")
    parser.add_argument("--out", required=True, type=Path, help="the JSON to write")
    parser.add_argument("--recipe-run", type=Path, default=Path("results/lm-reference-pipeline-tuned-lens-recipe"))
    parser.add_argument("--default-run", type=Path, default=Path("results/lm-reference-pipeline"))
    parser.add_argument("--eval-windows", type=int, default=32, help="held-out windows, every position scored")
    parser.add_argument("--default-fit-windows", type=int, default=4,
                        help="fit windows of the default fit, a seeded subset of the recipe's")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS of every process")
    args = parser.parse_args(argv)
    for path in (Path(args.data) / "train.jsonl", Path(args.data) / "validation.jsonl"):
        if not path.is_file():
            parser.error(f"--data {args.data}: no {path.name} there (scripts/train_reference_lm.py lm writes it)")
    return args


def windows_of(texts: list[str], tokenizer, context: int) -> int:
    """How many windows both tools cut from ``texts`` (tuned-lens's chunking, ``vision_lens.text``)."""
    from vision_lens.data import DataError
    from vision_lens.text import Documents, token_windows

    names = tuple(str(i) for i in range(len(texts)))
    try:
        return len(token_windows(Documents("benchmark", names, tuple(texts)), tokenizer, context).ids)
    except DataError:  # too little text for one window: none, not an error here
        return 0


def cut_split(source: Path, out: Path, windows: int, tokenizer, context: int) -> int:
    """Write to ``out`` the first documents of ``source`` (JSON lines), the last one cut to the shortest prefix with
    which they make ``windows`` windows; returns the windows they make.

    More text never makes fewer windows, so the number of documents is found by doubling then bisection, and the
    last document's prefix by bisection: a few dozen tokenizations, not one per document (quadratic in the split)."""
    documents = [json.loads(line)["text"] for line in source.read_text().splitlines()]

    def enough(count: int, cut: int | None = None) -> bool:
        texts = documents[:count] if cut is None else [*documents[:count - 1], documents[count - 1][:cut]]
        return windows_of(texts, tokenizer, context) >= windows

    low = high = 1  # every count below low is not enough; high is
    while not documents or not enough(high):
        if high >= len(documents):  # the whole split: tokenized again only to say how short it falls
            raise SystemExit(f"error: {source} makes {windows_of(documents, tokenizer, context)} windows of {context} "
                             f"tokens, fewer than the {windows} asked for; give the split more text (or lower "
                             "--eval-windows)")
        low, high = high + 1, min(2 * high, len(documents))
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle + 1, high)
    count = high
    low, high = 0, len(documents[count - 1])  # the shortest prefix of the last document that is enough
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(count, middle) else (middle + 1, high)
    texts = [*documents[:count - 1], documents[count - 1][:high]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return windows_of(texts, tokenizer, context)


def run_process(argv: list[str], env: dict) -> tuple[float, str]:
    """``argv`` in a fresh interpreter; its wall seconds and stdout (its stderr passes through)."""
    with stopwatch() as elapsed:
        done = subprocess.run([sys.executable, *argv], stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"error: {shlex.join(argv)} failed (exit {done.returncode}); see its output above")
    return elapsed["s"], done.stdout


def pipeline_run(options: list[str], env: dict) -> dict:
    """``vision-lens run`` with ``options`` through scripts/timed_run.py: its stages, ``train_s``, ``wall_s``."""
    wall, stdout = run_process([str(TIMED_RUN), "run", *options], env)
    timed = json.loads(stdout.splitlines()[-1])
    return {"command": "vision-lens run " + shlex.join(options), "wall_s": round(wall, 1),
            "train_s": round(sum(timed["stages"].get(s, 0.0) for s in TRAINING_STAGES), 1),
            "stages_s": {k: round(v, 2) for k, v in timed["stages"].items()}}


def pipeline_ce(run: Path) -> dict:
    """Held-out CE (bits per byte) of the logit and tuned lens per layer, from a run folder's aggregate."""
    from vision_lens.artifacts import load_results

    results = load_results(run)
    per_byte = results.run["units"]["bits_per_byte_per_bit"]
    return {kind: {layer: ce * per_byte for layer, ce in results.aggregate[kind]["ce"].items()}
            for kind in ("logit", "tuned")}


def summary_table(result: dict) -> str:
    """The benchmark JSON ``result`` as docs/language-models.md shows it: per fit, its rows, its time (the whole
    training process, and the fit alone), and its held-out tuned-lens CE (bits per byte), the mean over the layers
    tuned-lens lenses and at the embeddings (``layer_0``)."""
    tokens, stages = result["tokens"], {fit: result[fit]["stages_s"] for fit in ("pipeline_recipe", "pipeline_default")}
    rows_per_window = tokens["context"] - 1  # every position that has a next token
    ce = result["ce_bits_per_byte"]
    fits = [("`tuned-lens train`", "tuned_lens", tokens["fit_tokens"], result["tuned_lens"]["train_wall_s"], None),
            ("`--recipe tuned-lens`", "pipeline_recipe", tokens["fit_windows"] * rows_per_window,
             result["pipeline_recipe"]["train_s"], stages["pipeline_recipe"]["fit_by_recipe"]),
            ("default fit", "pipeline_default", tokens["default_fit_windows"] * rows_per_window,
             result["pipeline_default"]["train_s"], stages["pipeline_default"]["fit_lens"])]
    lines = ["| fit | fit rows | training (s) | of which the fit (s) | tuned CE, mean (bits per byte) | at `layer_0` |",
             "|---|---|---|---|---|---|"]
    for label, key, rows, seconds, fitting in fits:
        lines.append(f"| {label} | {rows:,} | {seconds:.0f} | {'—' if fitting is None else f'{fitting:.0f}'} | "
                     f"{result['summary']['mean_tuned_ce_bits_per_byte'][key]:.3f} | {ce[key]['tuned']['layer_0']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers import AutoConfig, AutoTokenizer

    import torch

    from vision_lens.fit import TunedLensRecipe

    config = AutoConfig.from_pretrained(args.model)
    context = getattr(config, "n_positions", None) or config.max_position_embeddings
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    recipe_settings = TunedLensRecipe()
    steps, tokens_per_step = recipe_settings.steps, recipe_settings.images_per_step
    if tokens_per_step % context:
        raise SystemExit(f"error: the recipe's {tokens_per_step} tokens per step are no whole number of the model's "
                         f"{context}-token windows")
    fit_windows = steps * tokens_per_step // context
    if args.work.is_dir() and any(args.work.iterdir()) and not (args.work / WORK_MARK).is_file():
        raise SystemExit(f"error: --work {args.work} holds files this script did not write; name an empty or new "
                         "folder (it is replaced on every run)")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    (args.work / WORK_MARK).write_text("scratch of scripts/benchmark_tuned_lens.py, replaced on every run\n")
    data = args.work / "data"
    made = {"train": cut_split(Path(args.data) / "train.jsonl", data / "train.jsonl", fit_windows, tokenizer, context),
            "validation": cut_split(Path(args.data) / "validation.jsonl", data / "validation.jsonl",
                                    args.eval_windows, tokenizer, context)}
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    here = [str(Path(__file__).resolve())]

    model = ["--model.name", args.model, "--max_length", str(context), "--precision", "float32",
             "--per_gpu_batch_size", str(tokens_per_step // context)]
    train_argv = ["train", *model, "--data.name", str(data / "train.jsonl"), "--output", str(args.work / "lens"),
                  "--num_steps", str(steps), "--tokens_per_step", str(tokens_per_step)]
    eval_argv = ["eval", *model, "--data.name", str(data / "validation.jsonl"), "--lens_name",
                 str(args.work / "lens"), "--lens_types", "logit", "tuned", "--output", str(args.work / "eval")]
    print("[benchmark] tuned-lens train", file=sys.stderr, flush=True)
    train_wall, _ = run_process([*here, "tuned-lens", *train_argv], env)
    print("[benchmark] tuned-lens eval", file=sys.stderr, flush=True)
    eval_wall, _ = run_process([*here, "tuned-lens", *eval_argv], env)
    theirs = json.loads((args.work / "eval" / "aggregate_metrics.json").read_text())

    common = ["--model", f"hf:{args.model}", "--data", str(data), "--fit-split", "train", "--eval-split",
              "validation", "--seed", "0", "--overwrite"]
    print("[benchmark] vision-lens run --recipe tuned-lens", file=sys.stderr, flush=True)
    recipe = pipeline_run([*common, "--recipe", "tuned-lens", "--lenses", "tuned", "--out", str(args.recipe_run),
                           "--cache-dir", str(args.work / "cache-recipe")], env)
    print("[benchmark] vision-lens run (default fit)", file=sys.stderr, flush=True)
    default = pipeline_run([*common, "--lenses", "tuned", "shared", "--fit-limit", str(args.default_fit_windows),
                            "--out", str(args.default_run),
                            "--cache-dir", str(args.work / "cache-default")], env)

    ce = {"tuned_lens": {"logit": theirs["logit"]["ce"], "tuned": theirs["tuned"]["ce"]},
          "pipeline_recipe": pipeline_ce(args.recipe_run), "pipeline_default": pipeline_ce(args.default_run)}
    layers = list(theirs["tuned"]["ce"])  # tuned-lens lenses every layer but the last, the model's output

    def mean_tuned(fit: str) -> float:
        return sum(ce[fit]["tuned"][layer] for layer in layers) / len(layers)

    result = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "tuned_lens": version("tuned-lens")},
        "model": args.model,
        "tokens": {"context": context, "fit_windows": made["train"], "fit_tokens": made["train"] * context,
                   "eval_windows": made["validation"], "default_fit_windows": args.default_fit_windows,
                   "steps": steps, "tokens_per_step": tokens_per_step},
        "tuned_lens": {"train": "tuned-lens " + shlex.join(train_argv), "eval": "tuned-lens " + shlex.join(eval_argv),
                       "train_wall_s": round(train_wall, 1), "eval_wall_s": round(eval_wall, 1)},
        "pipeline_recipe": recipe | {"run": str(args.recipe_run)},
        "pipeline_default": default | {"run": str(args.default_run)},
        "ce_bits_per_byte": ce,
        "summary": {
            "recipe_speed_ratio": round(train_wall / recipe["train_s"], 3),
            "recipe_max_relative_ce_difference": max(
                abs(ce["pipeline_recipe"]["tuned"][layer] / ce["tuned_lens"]["tuned"][layer] - 1) for layer in layers),
            "mean_tuned_ce_bits_per_byte": {fit: mean_tuned(fit) for fit in ce},
            "layers": layers,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(summary_table(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["tuned-lens"]:  # a fresh interpreter that runs tuned-lens's own command line
        from train_reference_lm import literal_lists_parse, tuned_lens_cli

        literal_lists_parse()
        tuned_lens_cli(sys.argv[2:])
    else:
        main()
