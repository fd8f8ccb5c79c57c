"""Print the numbers the README quotes, from committed run folders: the per-block table and the headlines.

    python scripts/summarise_results.py results/cifar10-resnet20 results/cifar10-resnet32 results/cifar10-resnet44

For the first run it prints the README's per-block markdown table; for every run the
baseline accuracy, the mean diagonal CE, the mean transfer penalty at block distance 1
and at its maximum (all pairs, within one stage and across stages, with 95% bootstrap
intervals), the penalty of the last block's (zero) translator, the shared lens's KL (and CE) gap to the tuned lens, and the largest gap between
the linear probe's and the tuned lens's accuracy. Everything is read from the JSON files.
"""

from __future__ import annotations

import argparse

import numpy as np

from vision_lens import analysis
from vision_lens.artifacts import layer_keys

TABLE = [("tuned", "acc"), ("shared", "acc"), ("logit", "acc"), ("linear_probe", "acc"),
         ("tuned", "ce"), ("shared", "ce"), ("logit", "ce"), ("tuned", "kl")]
SHORT = {"linear_probe": "probe"}


def table(run) -> str:
    header = ["block"] + [f"{SHORT.get(lens, lens)} {metric.upper() if metric != 'acc' else metric}"
                          for lens, metric in TABLE]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for layer, block in zip(layer_keys(run.layers), run.block_names):
        values = [run.aggregate[lens][metric][layer] for lens, metric in TABLE]
        lines.append(f"| `{block}` | " + " | ".join("—" if v is None else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def interval(profile, d: int) -> str:
    if profile.low is None or np.isnan(profile.low[d]):
        return f"{profile.mean[d]:.2f}"
    return f"{profile.mean[d]:.2f} [{profile.low[d]:.2f}, {profile.high[d]:.2f}]"


def headlines(run) -> list[str]:
    agg = run.aggregate
    diagonal = analysis.mean_diagonal_ce(run)
    lines = [f"{run.name}: baseline acc {agg['baseline']['acc']['final']:.4f}; mean diagonal CE {diagonal:.2f} bits"]
    for group, profile in analysis.penalty_profiles(run).items():
        far = int(np.nanargmax(np.where(profile.pairs > 0, profile.mean, np.nan)))
        lines.append(f"  penalty {group}: d=1 {interval(profile, 1)} ({profile.pairs[1]} pairs); "
                     f"max at d={far} {interval(profile, far)} ({profile.pairs[far]} pairs) = "
                     f"{profile.mean[far] / diagonal:.1f}x the mean diagonal CE")
    # The last block's translator is zero (its lens is the logit lens): a baseline any transfer should beat.
    penalty = analysis.transfer_matrix(run, "penalty")
    baseline, others = penalty[-1, :-1], penalty[:-1, :-1]  # row: the last translator; others vs it, per column
    off_diagonal = ~np.eye(len(others), dtype=bool)
    beaten = int((others < baseline)[off_diagonal].sum())
    lines.append(f"  last block's translator (= logit lens) on earlier blocks: {np.nanmin(baseline):.2f} to "
                 f"{np.nanmax(baseline):.2f} bits; {beaten} of {off_diagonal.sum()} other off-diagonal "
                 "translator-block pairs do better")
    # KL to the model is what both lenses are fitted on; CE against the labels can favour either.
    kl_gap = [agg["shared"]["kl"][k] - agg["tuned"]["kl"][k] for k in agg["tuned"]["kl"]]
    ce_gap = [agg["shared"]["ce"][k] - agg["tuned"]["ce"][k] for k in agg["tuned"]["ce"]]
    probe = [agg["linear_probe"]["acc"][k] - agg["tuned"]["acc"][k] for k in agg["tuned"]["acc"]]
    lines.append(f"  shared - tuned KL: {min(kl_gap):.2f} to {max(kl_gap):.2f} bits (CE: {min(ce_gap):+.2f} to "
                 f"{max(ce_gap):+.2f}); probe - tuned acc: {min(probe):+.3f} to {max(probe):+.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders written by `vision-lens run`")
    runs = analysis.as_results(parser.parse_args().runs)
    print(table(runs[0]), end="\n\n")
    for run in runs:
        print("\n".join(headlines(run)))


if __name__ == "__main__":
    main()
