"""Print the numbers the READMEs quote, from committed run folders.

    python scripts/summarise_results.py results/cifar10-resnet20 results/cifar10-resnet32 results/cifar10-resnet44
    python scripts/summarise_results.py --findings results/cifar10-resnet20 ...  # results/README.md's tables
    python scripts/summarise_results.py --signatures results/cifar10-vit ... ../shared/data/llm-anchors

For the first run it prints the README's per-block markdown table; for every run the
baseline accuracy, the mean diagonal CE, the mean transfer penalty at block distance 1
and at its maximum (all pairs, within one stage and across stages, with 95% bootstrap
intervals), the penalty of the last block's (zero) translator, the shared lens's KL (and
CE) gap to the tuned lens, the largest gap between the linear probe's and the tuned lens's
accuracy, and the most L-BFGS iterations any final solve of each lens took. With
``--findings`` it prints the tables of ``results/README.md`` instead (see :func:`findings`),
with ``--signatures`` the signature table of every run (see :func:`signature_tables`).
Runs are run folders, ``tuned-lens eval`` folders, or a penalty-only transfer matrix with
a per-layer CE (``../shared/data/llm-anchors``: Pythia-12B, shown at all its layers and
thinned to six). Everything is read from the JSON files.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np

from vision_lens import analysis, signatures
from vision_lens.artifacts import FRONTIER_FILE, layer_keys
from vision_lens.compare import with_thinned

TABLE = [("tuned", "acc"), ("shared", "acc"), ("logit", "acc"), ("linear_probe", "acc"),
         ("tuned", "ce"), ("shared", "ce"), ("logit", "ce"), ("tuned", "kl")]
SHORT = {"linear_probe": "probe"}


def table(run) -> str:
    header = ["block"] + [f"{SHORT.get(lens, lens)} {metric.upper() if metric != 'acc' else metric}"
                          for lens, metric in TABLE]
    rows = []
    for layer, block in zip(layer_keys(run.layers), run.block_names):
        values = [run.aggregate[lens][metric][layer] for lens, metric in TABLE]
        rows.append([f"`{block}`"] + ["—" if v is None else f"{v:.3f}" for v in values])
    return markdown(header, rows)


def interval(profile, d: int) -> str:
    if profile.low is None or np.isnan(profile.low[d]):
        return f"{profile.mean[d]:.2f}"
    return f"{profile.mean[d]:.2f} [{profile.low[d]:.2f}, {profile.high[d]:.2f}]"


def headlines(run) -> list[str]:
    agg = run.aggregate
    lines = [f"{run.name}: baseline acc {agg['baseline']['acc']['final']:.4f}"]
    if not analysis.defined_transfer(run):
        lines.append("  no transfer: no block shares a space with another (no identity paths)")
    else:
        diagonal = analysis.mean_diagonal_ce(run)
        lines[0] += f"; mean diagonal CE {diagonal:.2f} bits"
        for group, profile in analysis.penalty_profiles(run).items():
            if not (profile.pairs > 0).any():  # one stage (a ViT): nothing crosses a stage change
                continue
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
    both = [k for k in agg["tuned"]["kl"] if agg["shared"]["kl"][k] is not None]
    kl_gap = [agg["shared"]["kl"][k] - agg["tuned"]["kl"][k] for k in both]
    ce_gap = [agg["shared"]["ce"][k] - agg["tuned"]["ce"][k] for k in both]
    probe = [agg["linear_probe"]["acc"][k] - agg["tuned"]["acc"][k] for k in agg["tuned"]["acc"]]
    lines.append(f"  shared - tuned KL: {min(kl_gap):.2f} to {max(kl_gap):.2f} bits (CE: {min(ce_gap):+.2f} to "
                 f"{max(ce_gap):+.2f}); probe - tuned acc: {min(probe):+.3f} to {max(probe):+.3f}")
    # vision-lens runs record their fits in run.json (tuned-lens output does not); the L-BFGS ones have max_iter.
    fits = {lens: fit for lens, fit in run.run.get("fit", {}).items() if "max_iter" in fit}
    if fits:
        most = {lens: max(b["steps"] for b in fit["blocks"].values() if b) for lens, fit in fits.items()}
        limit = next(iter(fits.values()))["max_iter"]
        lines.append("  L-BFGS iterations of the final solves, at most: "
                     + ", ".join(f"{SHORT.get(lens, lens)} {n}" for lens, n in most.items()) + f" (limit {limit})")
    return lines


DEPTHS = (0.25, 0.5, 0.75, 1.0)


def depth_block(blocks: int, depth: float) -> int:
    """The block nearest to ``depth`` on the relative-depth axis (ties go deeper)."""
    return int(np.floor(depth * (blocks - 1) + 0.5))


def with_interval(run, lens: str, metric: str, layer: str, digits: int) -> str:
    value = run.aggregate.get(lens, {}).get(metric, {}).get(layer)
    if value is None:
        return "—"
    bounds = (run.intervals or {}).get(lens, {}).get(metric, {}).get(layer)
    return f"{value:.{digits}f}" + (f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]" if bounds else "")


def markdown(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def depth_table(runs) -> str:
    """Accuracy and CE (bits per image) of the tuned lens and the probe at 25/50/75/100 % relative depth."""
    rows = []
    for run in runs:
        layers = layer_keys(run.layers)
        for depth in DEPTHS:
            k = depth_block(len(layers), depth)
            rows.append([run.path.name, f"{depth:.0%}", f"`{run.block_names[k]}`"] + [
                with_interval(run, lens, metric, layers[k], 3 if metric == "acc" else 2)
                for metric in ("acc", "ce") for lens in ("tuned", "linear_probe")])
    return markdown(["run", "depth", "block", "tuned acc", "probe acc", "tuned CE", "probe CE"], rows)


def transfer_table(runs) -> str:
    """Per run with transfer: the lenses' own CE, and the mean penalty of neighbouring and of the most distant
    block pairs, within a stage and across stages (bits per image, 95 % bootstrap intervals)."""
    rows = []
    for run in runs:
        if not analysis.defined_transfer(run):
            continue
        cells = [run.path.name, f"{analysis.mean_diagonal_ce(run):.2f}"]
        profiles = analysis.penalty_profiles(run)
        for group in ("within_stage", "across_stage"):
            profile = profiles[group]
            defined = np.flatnonzero(profile.pairs > 0)
            if not len(defined):  # one stage (a ViT): no pair crosses a stage change
                cells += ["—", "—"]
                continue
            near, far = defined.min(), defined.max()
            cells += [f"{interval(profile, near)} (d={near}, {profile.pairs[near]} pairs)",
                      f"{interval(profile, far)} (d={far}, {profile.pairs[far]} pairs)"]
        cells.append(f"{neighbour_ratio(run):.2f}")
        rows.append(cells)
    return markdown(["run", "lens's own CE", "within stage: nearest", "within stage: most distant",
                     "across stages: nearest", "across stages: most distant", "within-stage nearest / own CE"], rows)


def neighbour_ratio(run) -> float:
    """The mean penalty between neighbouring blocks of one stage over the lenses' own CE (above 1: a neighbour's
    translator costs more than a block's own lens does)."""
    return analysis.penalty_profiles(run)["within_stage"].mean[1] / analysis.mean_diagonal_ce(run)


def frontier_points(run) -> list[dict]:
    """The points of the run's ``frontier.json``, weakest strength first."""
    return json.loads((run.path / FRONTIER_FILE).read_text())["points"]


def point_ratio(point: dict) -> float:
    """:func:`neighbour_ratio` of one frontier point."""
    return point["neighbour_penalty_within_stage"] / point["own_ce"]


def shared_table(runs) -> str:
    """The shared lens against the tuned lens, over the blocks where both are defined: KL to the model (bits) and
    accuracy, mean [smallest, largest]; runs that fitted no shared lens are left out."""
    rows = []
    for run in runs:
        agg = run.aggregate
        if "shared" not in agg:
            continue
        both = [k for k in agg["tuned"]["kl"] if agg["shared"]["kl"].get(k) is not None
                and agg["tuned"]["kl"][k] is not None]
        if len(both) < 2:  # only the last block: no shared space to test
            rows.append([run.path.name, "—", "—", f"{len(both)}"])
            continue
        kl = np.array([agg["shared"]["kl"][k] - agg["tuned"]["kl"][k] for k in both])
        acc = np.array([agg["shared"]["acc"][k] - agg["tuned"]["acc"][k] for k in both])
        rows.append([run.path.name, f"{kl.mean():.2f} [{kl.min():.2f}, {kl.max():.2f}]",
                     f"{acc.mean():+.3f} [{acc.min():+.3f}, {acc.max():+.3f}]", f"{len(both)}"])
    return markdown(["run", "shared − tuned KL (bits)", "shared − tuned acc", "blocks"], rows)


def aux_table(runs) -> str:
    """The model's own auxiliary classifiers against the lenses at their blocks."""
    rows = []
    for run in runs:
        aux = run.aggregate.get("aux_head", {}).get("acc", {})
        for layer, value in aux.items():
            if value is not None:
                k = layer_keys(run.layers).index(layer)
                rows.append([run.path.name, f"`{run.block_names[k]}`", with_interval(run, "aux_head", "acc", layer, 3)]
                            + [with_interval(run, lens, "acc", layer, 3) for lens in ("tuned", "linear_probe")])
    return markdown(["run", "block", "aux head acc", "tuned acc", "probe acc"], rows)


def frontier_table(runs) -> str:
    """Per run with a ``frontier.json`` (``vision-lens frontier``): along the L2 sweep (one strength for every
    block, weakest to strongest), the mean own CE and the mean neighbour penalty within a stage at both ends, the
    smallest ratio of that penalty to the own CE (and where), and the range over the sweep of the penalty at
    distance 2 over the penalty at distance 1 (above 1: the penalty grows with distance)."""
    rows = []
    for run in runs:
        if not (run.path / FRONTIER_FILE).is_file():
            continue
        points = frontier_points(run)
        within = [p["neighbour_penalty_within_stage"] for p in points]
        if any(v is None for v in within):
            continue
        ratio = [point_ratio(p) for p in points]
        low = int(np.argmin(ratio))
        growth = [distance_growth(p["penalty_by_distance"]) for p in points]
        rows.append([run.path.name, f"{points[0]['weight_decay']:g} … {points[-1]['weight_decay']:g}",
                     f"{points[0]['own_ce']:.2f} → {points[-1]['own_ce']:.2f}",
                     f"{within[0]:.2f} → {within[-1]:.2f}",
                     f"{ratio[low]:.2f} (at {points[low]['weight_decay']:g})", f"{min(growth):.2f} … {max(growth):.2f}"])
    return markdown(["run", "L2 strengths", "own CE", "within-stage neighbour penalty", "smallest penalty / own CE",
                     "penalty at d=2 / d=1"], rows)


def distance_growth(by_distance: dict) -> float:
    """The mean penalty at block distance 2 over that at distance 1 (all pairs)."""
    return by_distance["2"] / by_distance["1"]


FIT_LABELS = {"optimum": "default", "tuned-lens": "tuned-lens recipe", None: "`tuned-lens train` itself"}


@dataclass
class StreamProfile:
    """:func:`stream_profile` of one run."""

    blocks: np.ndarray  # the block indices kept (analysis.past_embedding)
    ratio: np.ndarray  # mean penalty / own CE at each block distance (NaN where no pair)
    pairs: np.ndarray  # the block pairs at each distance
    own_ce: float  # the kept blocks' mean own CE (bits)


def stream_profile(run) -> StreamProfile:
    """Over :func:`~vision_lens.analysis.past_embedding`: the mean penalty over the lenses' own CE at each block
    distance within one stage (the whole model for a ViT or an LLM, whose blocks all read and write one residual
    stream; tuned-lens output has no stages, so all its pairs count), the pairs at each distance, and the own CE."""
    keep = analysis.past_embedding(run)
    profiles = analysis.penalty_profiles(run, blocks=keep)
    profile = profiles.get("within_stage", profiles["all"])
    own = analysis.mean_diagonal_ce(run, blocks=keep)
    return StreamProfile(keep, profile.mean / own, profile.pairs, own)


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two tie-free sequences (1: ``y`` rises with ``x`` at every step)."""
    rx, ry = (np.argsort(np.argsort(v)).astype(float) for v in (x, y))
    return float(np.corrcoef(rx, ry)[0, 1])


# A language model deeper than this is also shown at this many of its layers (Pythia-12B's 36 at 0, 6, ..., 30),
# the depth of the language model trained here: matched relative depth.
THINNED_LAYERS = 6


def row_label(run) -> str:
    """A run's name in a table: its folder for this package's runs; for tuned-lens output the run's name (its
    folder's, or a penalty-only matrix's model, with the layers kept where :func:`~vision_lens.analysis.thinned`);
    a dagger where the run carries a caveat (:func:`caveat_rows`)."""
    return (run.path.name if run.run else run.name) + (" †" if run.caveats else "")


def caveat_rows(runs, columns: int) -> list[list[str]]:
    """A last row per caveat of the runs, inside the table (so that it travels with it): "† names: caveat"."""
    from vision_lens.compare import caveat_lines

    return [[f"† {line}"] + [""] * (columns - 1) for line in caveat_lines(runs)]


def stream_table(runs) -> str:
    """Every run with transfer on one scale-free footing, tuned-lens output (a language model) included
    (:func:`stream_profile`): the penalty over the own CE at distance 1 and at the largest distance within a stage,
    their growth from d=1 to d=2, and how the penalty ranks with distance (Spearman's rho over d >= 1, where a stage
    spans three distances or more; 1 = it rises at every step)."""
    rows = []
    for run in runs:
        if not analysis.defined_transfer(run):
            continue
        stream = stream_profile(run)
        means = stream.ratio
        defined = np.flatnonzero((stream.pairs > 0) & (np.arange(len(stream.pairs)) > 0))
        far = defined.max()
        names = analysis.block_names(run, len(analysis.transfer_matrix(run)))
        first = names[stream.blocks[0]]
        blocks = f"{len(stream.blocks)}" + ("" if len(stream.blocks) == len(names) else f" (`{first}` on)")
        fit = FIT_LABELS[analysis.fit_recipe(run)]
        rho = rank_correlation(defined, means[defined]) if len(defined) > 2 else np.nan  # two always rank perfectly
        rows.append([row_label(run), fit, blocks, analysis.reported_unit(run), f"{stream.own_ce:.2f}",
                     f"{means[1]:.2f}", f"{means[far]:.2f} (d={far})", f"{means[2] / means[1]:.2f}" if far >= 2 else "—",
                     "—" if np.isnan(rho) else f"{rho:+.2f}"])
    header = ["run", "fit", "blocks", "unit", "lens's own CE", "penalty / own CE at d=1", "at the largest d",
              "d=2 / d=1", "rank correlation with d"]
    return markdown(header, rows + caveat_rows(runs, len(header)))


SIGNATURE_COLUMNS = (  # (key in vision_lens.signatures, column header)
    ("shared_gap_kl", "shared − tuned KL"), ("shared_gap/own_ce", "shared − tuned CE / own CE"),
    ("best_translator/own_ce", "best single translator / own CE"),
    ("neighbour_forward/own_ce", "neighbours forward / own CE"), ("neighbour_backward/own_ce", "neighbours backward / own CE"),
    ("neighbour_both/own_ce", "neighbours / own CE"), ("neighbour_both/excess", "neighbours / (own − model CE)"),
    ("neighbour_both/kept_gain", "neighbours: share of the tuned lens's gain kept"),
    ("farthest_forward/own_ce", "largest distance forward / own CE"),
    ("farthest_backward/own_ce", "largest distance backward / own CE"),
    ("identity_distance_mean", "‖A‖/‖I‖ mean"), ("identity_distance_max", "‖A‖/‖I‖ largest"),
)


def fit_label(run) -> str:
    """How the run's translators were fitted, and whether its weights are a random initialisation."""
    return FIT_LABELS[analysis.fit_recipe(run)] + (", random init" if run.run.get("weights") == "random" else "")


def signature_table(runs, embedding: str) -> str:
    """One row per run with transfer (:mod:`vision_lens.signatures` under the embedding rule ``embedding``): the
    shared lens's gap (KL in the run's unit), the best single translator, the neighbour penalty forward, backward
    and both ways under each normalisation, the penalty at the largest distance each way, and the translators'
    distance from the identity; 95 % intervals from a bootstrap over the batches of batches.jsonl."""
    rows = []
    for run in runs:
        if not analysis.defined_transfer(run):
            continue
        found = signatures.signatures(run, embedding)
        best = found.values["best_translator/own_ce"].format()
        rows.append([row_label(run), fit_label(run), signatures.EMBEDDING_LABELS[embedding], found.unit]
                    + [found.values[key].format() + (f" (`{found.best_translator_layer}`)"
                                                     if key == "best_translator/own_ce" and best != "—" else "")
                       for key, _ in SIGNATURE_COLUMNS])
    header = ["run", "fit", "embedding", "unit", *(label for _, label in SIGNATURE_COLUMNS)]
    return markdown(header, rows + caveat_rows(runs, len(header)))


def signature_tables(runs) -> str:
    """:func:`signature_table` with the embedding layer left out, then kept; a deep language model also thinned."""
    runs = with_thinned(runs, THINNED_LAYERS)
    return "\n\n".join(signature_table(runs, embedding) for embedding in signatures.EMBEDDING_RULES)


def language_depth_table(runs) -> str:
    """Per layer of each language model given as ``tuned-lens eval`` output (a CE for both lenses and the model's
    own): the tuned and the logit lens's CE and the tuned lens's excess over the model's CE, in its unit."""
    rows = []
    for run in runs:
        aggregate = run.aggregate
        if "logit" not in aggregate or "baseline" not in aggregate:
            continue  # a penalty-only matrix: no logit lens, no model CE
        model = aggregate["baseline"]["ce"]["final"]
        tuned, logit = aggregate["tuned"]["ce"], aggregate["logit"]["ce"]
        rows += [[row_label(run), f"`{layer}`", f"{tuned[layer]:.2f}", f"{logit[layer]:.2f}",
                  f"{tuned[layer] - model:+.2f}", f"{model:.2f}"] for layer in analysis.layer_keys(tuned)]
    return markdown(["run", "layer", "tuned CE", "logit CE", "tuned − model", "model CE"], rows)


def findings(runs) -> str:
    """``results/README.md``'s tables, in its order: depth (every default-fit run), then transfer (default fits,
    then the tuned-lens recipe's), the frontier, shared lens and aux heads (trained runs only: a random model's
    tuned lens follows noise), and last every trained run with transfer beside the language-model reference
    (``tuned-lens eval`` output or a penalty-only matrix, which have no run.json and enter only that table; one
    deeper than :data:`THINNED_LAYERS` also at that many layers), then the random twins on the same footing (the
    shape of a network that refines nothing); then the language models' CE per layer, and the signature tables of
    every run, random twins included (:func:`signature_tables`)."""
    tool = with_thinned([run for run in runs if not run.run], THINNED_LAYERS)
    ours = [run for run in runs if run.run]
    recipe = [run for run in ours if analysis.fit_recipe(run) == "tuned-lens"]
    default = [run for run in ours if run not in recipe]
    trained = [run for run in default if run.run.get("weights") != "random"]
    trained_recipe = [run for run in recipe if run.run.get("weights") != "random"]
    twins = [run for run in ours if run.run.get("weights") == "random"]
    return "\n\n".join([depth_table(default), transfer_table(trained), transfer_table(trained_recipe),
                         frontier_table(trained), shared_table(trained), shared_table(trained_recipe),
                         aux_table(trained), stream_table(trained + trained_recipe + tool + twins),
                         language_depth_table(tool), signature_tables(ours + [run for run in runs if not run.run])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders written by `vision-lens run`, tuned-lens eval folders, "
                        "or a penalty-only matrix's folder (../shared/data/llm-anchors)")
    parser.add_argument("--findings", action="store_true", help="print the tables of results/README.md")
    parser.add_argument("--signatures", action="store_true",
                        help="print the signature table of every run, embedding layer left out and kept")
    args = parser.parse_args()
    runs = analysis.as_results(args.runs)
    if args.findings:
        print(findings(runs))
        return
    if args.signatures:
        print(signature_tables(runs))
        return
    print(table(runs[0]), end="\n\n")
    for run in runs:
        print("\n".join(headlines(run)))


if __name__ == "__main__":
    main()
