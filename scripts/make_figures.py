#!/usr/bin/env python
"""Example figures under results/figures/, one per plotting function, from committed run folders.

Usage: scripts/make_figures.py [RUN_DIR ...] [--llm AGGREGATE_JSON_OR_DIR ...] [--anchors DIR | --no-anchors]
                               [--image PNG] [--out results/figures]

The first run folder gives the single-run figures (layer-wise metrics,
transfer heatmap, prediction trajectory); all of them enter the cross-model
ones (relative depth, penalty vs distance, the frontier of the runs with a
frontier.json, LLM comparison). The LLM comparison also draws Pythia-12B's
published penalty matrix (../shared/data/llm-anchors, read where it is) at all its
layers and thinned to the language model's six. The prediction
trajectory reloads the first run's model from the weights path in its run.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt

from vision_lens import plotting
from vision_lens.artifacts import FRONTIER_FILE, load_results
from vision_lens.adapters import create_adapter
from vision_lens.compare import compare
from vision_lens.lenses import TunedLens

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [REPO / "results" / f"cifar10-{arch}"
                for arch in ("resnet20", "resnet32", "resnet44", "preact-resnet20", "plain20", "vit", "inceptionv1")]
TOY_LLM = REPO / "tests" / "data" / "tiny-gpt2-tuned-lens" / "aggregate_metrics.json"
# scripts/train_reference_lm.py's output: a GPT-2 of the CIFAR ViT's size lensed by tuned-lens itself.
LM_REFERENCE = REPO / "results" / "lm-reference" / "aggregate_metrics.json"
LLM_LABELS = {TOY_LLM: "toy GPT-2 (format check)", LM_REFERENCE: "GPT-2 reference (tuned-lens)"}
# The tuned-lens authors' Pythia-12B transfer penalties and per-layer CE (data from elsewhere: read where it is).
ANCHORS = Path(os.environ.get("VISION_LENS_SHARED", REPO.parent / "shared")) / "data" / "llm-anchors"
ANCHORS_LABEL = "Pythia-12B (tuned-lens authors)"
MATCHED_LAYERS = 6  # the language model trained here lenses six layers: Pythia-12B's 36 are also drawn at six


def llm_inputs(llm: list[Path] | None, anchors: Path | None) -> tuple[list[Path], list[str]]:
    """The LLM inputs of the comparison and their labels: ``llm`` (default: results/lm-reference where it exists,
    else the toy GPT-2 fixture), then the penalty-only folder ``anchors`` (Pythia-12B) where given."""
    paths = list(llm) if llm is not None else [LM_REFERENCE if LM_REFERENCE.is_file() else TOY_LLM]
    labels = [LLM_LABELS.get(path, path.parent.name if path.is_file() else path.name) for path in paths]
    if anchors is not None:
        paths.append(anchors)
        labels.append(ANCHORS_LABEL)
    return paths, labels


def compare_llm(runs: list[Path], llm: list[Path] | None, anchors: Path | None, out: Path) -> Path:
    """compare_llm.png: the vision runs beside the LLM inputs, a deep LLM also thinned to MATCHED_LAYERS layers."""
    paths, labels = llm_inputs(llm, anchors)
    fig = compare([*runs, *paths], labels=[load_results(r).name for r in runs] + labels, thin=MATCHED_LAYERS)
    fig.savefig(out / "compare_llm.png", dpi=150)
    plt.close(fig)
    return out / "compare_llm.png"


def first_eval_image(run_dir: Path) -> Path:
    """The first image (sorted by class, then file) of the run's eval split."""
    run = json.loads((run_dir / "run.json").read_text())
    split = Path(run["data"]) / run["options"]["eval_split"]
    return min(split.glob("*/*.png"))


def save(ax_or_fig, path: Path) -> None:
    fig = getattr(ax_or_fig, "figure", ax_or_fig)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path,
                        help="run folders (default: the committed results/cifar10-{resnet20,resnet32,resnet44,preact-resnet20,"
                             "plain20,vit,inceptionv1} "
                             "that are complete); a sibling <run>-random-init folder enters the random-init figure")
    parser.add_argument("--llm", nargs="*", type=Path,
                        help="aggregate_metrics.json files or folders from `tuned-lens eval` for the comparison "
                             "(default: results/lm-reference where it exists, else the toy GPT-2 test fixture, a "
                             "format check rather than a real LLM)")
    parser.add_argument("--anchors", type=Path, default=ANCHORS if ANCHORS.is_dir() else None,
                        help="a folder of a penalty-only transfer matrix with a per-layer CE, drawn in the comparison "
                             f"at all its layers and at {MATCHED_LAYERS} (default: {ANCHORS}, Pythia-12B, where it "
                             "exists)")
    parser.add_argument("--no-anchors", action="store_true", help="leave Pythia-12B out of the comparison")
    parser.add_argument("--image", type=Path, help="image for the prediction trajectory (default: first eval image)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "figures", help="output folder")
    args = parser.parse_args()
    runs = args.runs or [d for d in DEFAULT_RUNS if (d / "aggregate_metrics.json").is_file()]
    if not runs:
        parser.error("no run folders given and none of the committed ones exist")
    args.out.mkdir(parents=True, exist_ok=True)
    first = load_results(runs[0])

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    plotting.layerwise(first, "acc", ax=axes[0])
    plotting.layerwise(first, "ce", ax=axes[1])
    fig.suptitle(f"{first.name}: lenses at every block (eval split)")
    save(fig, args.out / "layerwise.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    plotting.layerwise(runs, "acc", x="relative_depth", lens_types=("tuned", "logit"), ax=axes[0])
    plotting.layerwise(runs, "kl", x="relative_depth", lens_types=("tuned", "logit"), ax=axes[1])
    fig.suptitle("models of different depth on one relative-depth axis")
    save(fig, args.out / "layerwise_relative_depth.png")

    heatmap_ax = plt.subplots(figsize=(7, 6))[1]
    save(plotting.transfer_heatmap(first, "penalty", ax=heatmap_ax), args.out / "transfer_penalty.png")
    save(plotting.penalty_vs_distance(runs, relative=True), args.out / "penalty_vs_distance.png")
    stages_ax = plt.subplots(figsize=(7, 4.5))[1]
    save(plotting.penalty_vs_distance(runs, stages=True, ax=stages_ax), args.out / "penalty_within_across_stages.png")

    adapter = create_adapter(first.run["model"], weights=first.run["weights"])
    lens = TunedLens.load(first.path / "lenses" / "tuned", adapter)
    save(plotting.prediction_trajectory(adapter, lens, args.image or first_eval_image(first.path)),
         args.out / "prediction_trajectory.png")

    # The random-init control: each trained run beside its random-init twin, where one is committed.
    pairs = [(run, run.with_name(run.name + "-random-init")) for run in runs]
    pairs = [(t, r) for t, r in pairs if (r / "aggregate_metrics.json").is_file()]
    if pairs:  # side by side, each model in the same colour in both panels (the runs in the same order)
        fig, (trained_ax, random_ax) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for ax, side, title in ((trained_ax, 0, "trained weights"), (random_ax, 1, "random-init weights")):
            plotting.layerwise([pair[side] for pair in pairs], "acc", x="relative_depth",
                               lens_types=("linear_probe",), ax=ax)
            ax.set_title(title)
        random_ax.get_legend().remove()
        fig.suptitle("linear probe at every block: the rise is learned")
        save(fig, args.out / "random_init_control.png")

    # The frontier: every run with a frontier.json, its tuned-lens-recipe twin starred where one is committed.
    swept = [run for run in runs if (run / FRONTIER_FILE).is_file()]
    if swept:
        recipes = [run.with_name(run.name + "-tuned-lens-recipe") for run in swept]
        frontier_ax = plt.subplots(figsize=(7, 5))[1]
        plotting.penalty_frontier(swept, [r if (r / "aggregate_metrics.json").is_file() else None for r in recipes],
                                  ax=frontier_ax)
        save(frontier_ax, args.out / "penalty_frontier.png")

    print(f"wrote {compare_llm(runs, args.llm, None if args.no_anchors else args.anchors, args.out)}")


if __name__ == "__main__":
    main()
