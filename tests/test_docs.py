"""The documents: every number comes from a committed file, every relative link resolves, the public API resolves.

Numbers, not sentences. Every number in the prose and tables of ``README.md``, ``results/README.md``,
``docs/*.md`` and the long description (outside code blocks, inline code and link targets) must be produced
by a source declared for its document in ``SOURCES``:

* ``one(value, fmt)``: one value of a committed file or of the code, formatted; it must appear in the document
  (so no source outlives the number it explains);
* ``each(values, fmt)``: several such values, each of which must appear;
* ``any_of(values, fmt)``: values of which the document may quote some (depths, rounded cells);
* ``table(text)``: one or more markdown tables that a generator prints; the document must hold each verbatim,
  and their numbers are then tied, in the table and, for numbers with decimals, in the prose around it;
* ``allow(token, reason)``: a number that is not measured (a year, an image size, a count of the setup),
  with its reason; ``hand_timed(token, what)`` marks the measurements that no committed file records.

A number that no source gives fails the test, naming the document, the line and the number. When a rerun
changes the results, rerun the command that prints a table, update the prose, and declare where any new
number comes from.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pytest

from .conftest import REPO, SHARED, findings_runs, load_script, require_shared


DOCS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))
LONG_DESCRIPTION = "LONG_DESCRIPTION.md"  # setup.cfg's long_description (tested below)
DOCUMENTS = ["README.md", "results/README.md", LONG_DESCRIPTION, *DOCS]

# ---------------------------------------------------------------------------------------------------------------
# Numbers in a document

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.S | re.M)
_INLINE = re.compile(r"`[^`]*`")
_LINK_TARGET = re.compile(r"\]\([^)\s]*\)")
_URL = re.compile(r"<?https?://[^\s)>]+>?")
_LIST_MARK = re.compile(r"^([ \t]*|#+[ \t]+)\d+\.(?=\s)", re.M)
_NAME_SERIES = re.compile(r"\b[A-Za-z][\w]*-\d+(?:/\d+)+")  # ResNet-20/32/44: names, not numbers
_TOKEN = re.compile(r"""
    \d+(?:x|×)\d+                                    # a size: 32x32
  | \d+(?:\.\d+){2,}                                 # a version: 0.2.0
  | [-−+]?\d+\^\d+                                   # a power: 2^18
  | [-−+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-−+]?\d+)?
""", re.X)


def blanked(text: str) -> str:
    """``text`` as spaces (newlines kept), so that line numbers stay as they are."""
    return re.sub(r"[^\n]", " ", text)


def _blank(match: re.Match) -> str:
    return blanked(match.group(0))


def prose(text: str) -> str:
    """``text`` without code blocks, inline code, link targets, URLs and list numbers."""
    for pattern in (_FENCE, _INLINE, _LINK_TARGET, _URL, _NAME_SERIES):
        text = pattern.sub(_blank, text)
    return _LIST_MARK.sub(lambda m: m.group(1) + "  ", text)


def normalised(token: str) -> str:
    return token.replace("−", "-").lstrip("+")


def numbers(text: str) -> list[tuple[int, str]]:
    """``(line, number)`` for every number of ``text``'s prose; digits inside names (``ResNet-20``, ``layer3``,
    ``GPT-2``, ``bf16``) are not numbers."""
    found = []
    for line_no, line in enumerate(prose(text).splitlines(), 1):
        for match in _TOKEN.finditer(line):
            start, end, token = match.start(), match.end(), match.group(0)
            digits = start + (token[0] in "-−+")
            before = line[digits - 1] if digits else " "
            after = line[end] if end < len(line) else " "
            if before.isalnum() or before in "_." or (before == "-" and digits > 1 and line[digits - 2].isalpha()):
                continue  # ResNet-20, layer_0, v1.2
            if after.isalpha() and after not in "x×" or after == "_":
                continue  # 6n, fp16's digits, 2nd
            if token[0] in "-−+" and start and line[start - 1].isalpha():
                continue  # 6n+2: a formula's constant
            if token[0] in "-−+" and start and line[start - 1].isdigit():
                token = token[1:]  # a range such as 3-6: both ends are numbers
            found.append((line_no, normalised(token)))
    return found


def tables(text: str) -> list[str]:
    """The markdown tables of ``text`` (runs of lines starting with ``|``), outside code blocks."""
    found, current = [], []
    for line in _FENCE.sub(_blank, text).splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    return found


# ---------------------------------------------------------------------------------------------------------------
# Sources


def formatted(value, fmt: str | Callable) -> str:
    """``value`` as a document writes it: a format spec, ``"sci"`` for 1e-6 (not 1e-06), or a callable."""
    if callable(fmt):
        return normalised(fmt(value))
    if fmt == "sci":  # 1e-6, 3.16e-6: the mantissa's trailing zeros and the exponent's leading ones dropped
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return normalised(format(value, fmt))


@dataclass
class Source:
    tokens: Callable[[], list[str]]  # what the source gives, as the document writes it
    required: bool  # each of them must appear in the document
    note: str = ""
    tables: Callable[[], list[str]] | None = None  # tables the document must hold verbatim


def one(value: Callable[[], object], fmt="", note: str = "") -> Source:
    return Source(lambda: [formatted(value(), fmt)], True, note)


def each(values: Callable[[], Iterable], fmt="", note: str = "") -> Source:
    return Source(lambda: [formatted(v, fmt) for v in values()], True, note)


def any_of(values: Callable[[], Iterable], fmt="", note: str = "") -> Source:
    return Source(lambda: [formatted(v, fmt) for v in values()], False, note)


def table(text: Callable[[], str | list[str]], note: str = "") -> Source:
    def all_tables() -> list[str]:
        made = text()
        return [t for block in ([made] if isinstance(made, str) else made) for t in block.split("\n\n")]

    # A generated table's numbers tie the table; its decimals may also be quoted in the prose.
    return Source(lambda: sorted({t for tab in all_tables() for _, t in numbers(tab) if "." in t}), False, note,
                  tables=all_tables)


def allow(token: str, reason: str) -> Source:
    return Source(lambda: [token], True, reason)


def code(module: str):
    """A module of the package, for its constants: the code is the committed file a constant comes from."""
    return importlib.import_module(module)


@functools.cache
def read_json(path: str):
    return json.loads((REPO / path).read_text())


def resnet50_extrapolated() -> dict:
    return next(e for e in read_json(SCALING)["extrapolated"] if e["name"] == "ResNet-50")


@functools.cache
def run(name: str):
    from vision_lens.analysis import load_results

    return load_results(REPO / "results" / name)


@functools.cache
def summarise():
    return load_script("summarise_results")


def agg(name: str) -> dict:
    return run(name).aggregate


def layer(name: str, block: str) -> str:
    """The ``layer_k`` key of ``block`` in run ``name``."""
    return next(k for k, b in run(name).layers.items() if b == block)


def baseline_acc(name: str) -> float:
    return agg(name)["baseline"]["acc"]["final"]


def neighbour_penalty(name: str, group: str = "within_stage") -> float:
    from vision_lens import analysis

    return analysis.penalty_profiles(run(name))[group].mean[1]


def own_ce(name: str) -> float:
    from vision_lens import analysis

    return analysis.mean_diagonal_ce(run(name))


def penalty_ratios() -> list[float]:
    """Within-stage neighbour penalty over the lenses' own CE at the default fits, the residual models."""
    return [neighbour_penalty(r) / own_ce(r) for r in RESIDUAL]


def probe_tuned_gap(name: str) -> float:
    acc = agg(name)
    return max(abs(acc["linear_probe"]["acc"][k] - acc["tuned"]["acc"][k]) for k in acc["tuned"]["acc"])


def last_translator_penalties(name: str) -> tuple[float, float]:
    """The last block's (zero) translator on every other block: the least and the most penalty."""
    from vision_lens import analysis

    row = analysis.transfer_matrix(run(name), "penalty")[-1, :-1]
    return float(np.nanmin(row)), float(np.nanmax(row))


def most_iterations(names: Iterable[str]) -> int:
    return max(b["steps"] for n in names for fit in run(n).run["fit"].values()
               for b in fit["blocks"].values() if b)


RESNETS = ("cifar10-resnet20", "cifar10-resnet32", "cifar10-resnet44")
PREACT = "cifar10-preact-resnet20"
VIT = "cifar10-vit"
PLAIN = "cifar10-plain20"  # ResNet-20 without its shortcuts, trained here
INCEPTION_RECIPE = "cifar10-inceptionv1-tuned-lens-recipe"
LM = "lm-reference"  # the language-model reference: tuned-lens eval output
RESIDUAL = (*RESNETS, PREACT)  # the trained models with transfer
TRAINED = (*RESNETS, "cifar10-inceptionv1")
LINEAR_HEAD_RANDOM = ("cifar10-resnet20-random-init", "cifar10-inceptionv1-random-init")  # fitted by the fast path
RANDOM = (*LINEAR_HEAD_RANDOM, "cifar10-vit-random-init", "cifar10-preact-resnet20-random-init",
          "cifar10-plain20-random-init")
R20 = "cifar10-resnet20"
INCEPTION = "cifar10-inceptionv1"
CHECKPOINT = "results/checkpoints/cifar10-inceptionv1.json"
PREACT_CHECKPOINT = "results/checkpoints/cifar10-preact-resnet20.json"
VIT_CHECKPOINT = "results/checkpoints/cifar10-vit.json"
PLAIN_CHECKPOINT = "results/checkpoints/cifar10-plain20.json"
BENCHMARK = "results/benchmark/cifar10-resnet20-cpu.json"
SCALING = "results/benchmark/scaling-cpu.json"
TUNED_LENS_BENCHMARK = "results/benchmark/tuned-lens-lm-reference-cpu.json"
FIXTURE = "tests/data/tiny-gpt2-tuned-lens/make_fixture.py"
PAPERS = {"2016": "Alain & Bengio (2016), the linear-probe paper cited", "2021": "Hassani et al. (2021), CCT",
          "2023": "Belrose et al. (2023), the tuned-lens paper"}


def cited(*years: str) -> list[Source]:
    return [allow(y, PAPERS[y]) for y in years]


def pinned_versions() -> list[str]:
    """Every version in constraints.txt and setup.cfg's requirements (0.2.0, 4.57.6, the bounds 0.10, 5, ...)."""
    text = (REPO / "constraints.txt").read_text() + (REPO / "setup.cfg").read_text()
    return re.findall(r"(?:==|>=|<=|<|>)\s*(\d+(?:\.\d+)*)", text)


def models_table() -> str:
    from vision_lens.adapters.listing import markdown

    return markdown()


def findings_tables() -> str:
    """results/README.md's tables, as that command prints them from the committed runs."""
    from vision_lens import analysis

    return summarise().findings(analysis.as_results(findings_runs()))


def within_stage_neighbours(name: str, but_row: str) -> list[float]:
    """The penalties of neighbouring blocks within one stage (not the stem), leaving out translator ``but_row``."""
    from vision_lens import analysis

    matrix, stages = analysis.transfer_matrix(run(name), "penalty"), run(name).block_stages
    skip = run(name).block_names.index(but_row)
    return [matrix[i, j] for i in range(len(stages)) for j in range(len(stages))
            if abs(i - j) == 1 and stages[i] == stages[j] != "stem" and i != skip]


def stage_widths() -> list[int]:
    """The channels of the CIFAR ResNet's stages, as the adapter reads them."""
    from vision_lens.adapters import create_adapter

    return sorted({b.channels for b in create_adapter("cifar:resnet20", weights="random").blocks})


def sizes(*tokens: str) -> list[Source]:
    return [allow(t, "an image, feature-map or kernel size of the architecture described") for t in tokens]


def option_default(name: str):
    """The default of a ``vision-lens run`` option (``vision_lens/options.py``)."""
    from dataclasses import fields

    from vision_lens.options import RunOptions

    return next(f.default for f in fields(RunOptions) if f.name == name)


def script_default(script: str, flag: str) -> str:
    """The default of ``flag`` in ``scripts/<script>.py``'s argparse parser, as its source writes it."""
    source = (REPO / "scripts" / f"{script}.py").read_text()
    return re.search(rf'add_argument\("{flag}"[^\n]*?default=([^,)\s]+)', source).group(1)


def in_file(path: str, pattern: str) -> str | tuple[str, ...]:
    """What ``pattern``'s groups find in the committed file ``path``: numbers its code or its comments state."""
    found = re.search(pattern, (REPO / path).read_text())
    assert found, f"{path} no longer matches {pattern!r}"
    return found.group(1) if len(found.groups()) == 1 else found.groups()


def recipe():
    return code("vision_lens.fit").TunedLensRecipe()


def tuned_lens_benchmark() -> dict:
    return read_json(TUNED_LENS_BENCHMARK)


def tuned_lens_benchmark_table() -> str:
    return load_script("benchmark_tuned_lens").summary_table(tuned_lens_benchmark())


@functools.cache
def train_cifar():
    return load_script("train_cifar")


def torchvision_sizes() -> list[int]:
    """The resize and crop sides of the torchvision weights the models table names."""
    from torchvision import models

    weights = (models.GoogLeNet_Weights.IMAGENET1K_V1, models.ResNet18_Weights.IMAGENET1K_V1,
               models.ResNet50_Weights.IMAGENET1K_V2)
    return sorted({side for w in weights for side in (*w.transforms().resize_size, *w.transforms().crop_size)})


def vit_config() -> dict:
    return code("vision_lens.adapters.cifar_vit").CONFIG


@functools.cache
def reference_lm_parameters() -> int:
    """Parameters of scripts/train_reference_lm.py's GPT-2 at its defaults (the tokenizer fills the vocabulary)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    arg = {flag: int(lm_default(f"--{flag}")) for flag in ("vocab-size", "context", "width", "depth", "heads")}
    config = GPT2Config(vocab_size=arg["vocab-size"], n_positions=arg["context"], n_embd=arg["width"],
                        n_layer=arg["depth"], n_head=arg["heads"])
    return GPT2LMHeadModel(config).num_parameters()


LM_SCRIPT = "scripts/train_reference_lm.py"


def lm_default(flag: str) -> str:
    return script_default("train_reference_lm", flag)


def block_accuracy(name: str, lens: str) -> np.ndarray:
    """A committed run's accuracy of ``lens`` at every block, in block order."""
    return code("vision_lens.analysis").layer_values(run(name).aggregate[lens]["acc"])


def lm_record(*keys: str):
    """A value of the committed language-model reference's record (results/lm-reference/record.json)."""
    value = read_json("results/lm-reference/record.json")
    for key in keys:
        value = value[key]
    return value


def lm_records(*entries: tuple[tuple[str, ...], float, str]) -> list[Source]:
    """One required source per ``(keys, scale, fmt)``: that value of the record, divided by ``scale``."""
    return [one(lambda keys=keys, scale=scale: lm_record(*keys) / scale, fmt,
                "results/lm-reference/record.json: " + ".".join(keys)) for keys, scale, fmt in entries]


def pythia():
    """Pythia-12B's penalty-only matrix with its per-layer CE, read where it is (../shared/data/llm-anchors)."""
    from vision_lens import analysis

    require_shared(SHARED / "data" / "llm-anchors")
    return analysis.as_results([SHARED / "data" / "llm-anchors"])[0]


def pythia_layers() -> list[int]:
    """Its number of layers, the thinned layers' first, second and last indices, and its largest distance past the
    embeddings."""
    from vision_lens import analysis

    layers = len(analysis.block_names(pythia(), 10**6))
    step = layers // load_script("summarise_results").THINNED_LAYERS
    return [layers, 0, step, step * (load_script("summarise_results").THINNED_LAYERS - 1), layers - 2]


def lm_layers() -> list[str]:
    return list(read_json("results/lm-reference/aggregate_metrics.json")["tuned"]["ce"])


def lm_ce(lens: str, layer: str = "final") -> float:
    """The committed language-model reference's CE of ``lens`` at ``layer``, bits per byte (``baseline``: the model)."""
    return read_json("results/lm-reference/aggregate_metrics.json")[lens]["ce"][layer]


def power_of_two(value: int) -> str:
    return f"2^{int(math.log2(value))}"


def hand_timed(token: str, what: str) -> Source:
    """A wall-clock time measured by hand: no committed file records it (listed in the report of issue 23)."""
    return allow(token, f"measured by hand, not in a committed file: {what}")


# ---------------------------------------------------------------------------------------------------------------
# The registry: where each document's numbers come from

SOURCES: dict[str, list[Source]] = {
    "README.md": [
        *cited("2023"),
        table(models_table, "vision_lens.adapters.listing.markdown(), the registry `vision-lens models` lists"),
        one(lambda: run(R20).run["fit"]["tuned"]["images"], ",", "fit images, run.json"),
        one(lambda: run(R20).run["eval_images"], ",", "eval images, run.json"),
        one(lambda: baseline_acc(R20), ".4f"),
        each(lambda: [agg(R20)["tuned"]["acc"][k] for k in ("layer_0", "layer_9")], ".3f", "tuned acc, stem and last"),
        one(lambda: probe_tuned_gap(R20), lambda v: f"{math.ceil(v * 1000) / 1000:.3f}", "the largest gap, rounded up"),
        one(lambda: neighbour_penalty(R20), ".2f"),
        one(lambda: neighbour_penalty(R20) / own_ce(R20), ".1f"),
        one(lambda: own_ce(R20), ".2f"),
        each(lambda: last_translator_penalties(R20), ".2f"),
        each(lambda: (min(penalty_ratios()), max(penalty_ratios())), ".1f"),
        each(lambda: (read_json(BENCHMARK)["fit_images"], read_json(BENCHMARK)["eval_images"]), ",",
             "the benchmark's images"),
        one(lambda: read_json(BENCHMARK)["capture"]["fraction_of_floor"], ".2f", "capture over the floor"),
        one(lambda: len(read_json(BENCHMARK)["floor_search"]["configs"]), "", "the floor search's configurations"),
        one(lambda: read_json(BENCHMARK)["whole_run"]["ratio"], ".2f", "the whole run over the floor"),
        one(lambda: resnet50_extrapolated()["cpu_run_s"]["default"] / 3600, ".1f", "extrapolated hours, CPU"),
        one(lambda: resnet50_extrapolated()["gpu_run_s"]["default"], ".0f", "extrapolated seconds, one GPU"),
        one(lambda: read_json(BENCHMARK)["usable_cores"], "", "the benchmark machine's cores"),
        one(lambda: read_json(VIT_CHECKPOINT)["test_acc"], ".3f", "the ViT's training record"),
        each(lambda: [load_script("summarise_results").stream_profile(run(name)).ratio[1]
                      for name in (VIT, VIT + "-tuned-lens-recipe")], ".2f", "the ViT's neighbours / own CE, 2d"),
        each(lambda: [load_script("summarise_results").stream_profile(run(name)).ratio[1]
                      for name in (LM, "cifar10-resnet44-tuned-lens-recipe")], ".2f",
             "the language model's and ResNet-44's (recipe) neighbours / own CE, 2d"),
        one(lambda: load_script("summarise_results").stream_profile(pythia()).ratio[1], ".2f",
            "Pythia-12B's neighbours / own CE, 2d"),
        one(lambda: lm_ce("tuned", "layer_0") - lm_ce("baseline"), ".2f", "the language model's layer_0 gap"),
        one(lambda: 100 * tuned_lens_benchmark()["summary"]["recipe_max_relative_ce_difference"], ".2f",
            "the recipes' largest per-layer CE difference, %"),
        one(lambda: tuned_lens_benchmark()["summary"]["recipe_speed_ratio"], ".2f", "the recipe's speed ratio"),
    ],
    "results/README.md": [
        *cited("2016", "2023"),
        each(lambda: pythia_layers(), "", "Pythia-12B's layers, all and thinned (layers 0, 6, ..., 30), and its largest "
             "distance past the embeddings"),
        one(lambda: len(lm_layers()) - 2, "", "the language model's largest distance past the embeddings"),
        each(lambda: [lm_ce("tuned", "layer_0") - lm_ce("baseline")], ".2f", "the language model's layer_0 gap"),
        table(findings_tables, "scripts/summarise_results.py --findings"),
        one(lambda: run(R20).run["fit"]["tuned"]["images"], ",", "fit images, run.json"),
        one(lambda: run(R20).run["eval_images"], ",", "eval images, run.json"),
        one(lambda: 100 * code("vision_lens.metrics").BOOTSTRAP_LEVEL, ".0f", "interval level"),
        one(lambda: code("vision_lens.metrics").BOOTSTRAP_RESAMPLES, ",", "resamples"),
        one(lambda: re.search(r"(\d+) CPU cores", read_json(CHECKPOINT)["machine"]).group(1), "", "the machine"),
        hand_timed("9", "the six runs' minutes with the features cached (also in scripts/cifar10_runs.sh)"),
        hand_timed("25", "the six runs' minutes capturing afresh (also in scripts/cifar10_runs.sh)"),
        each(lambda: [baseline_acc(r) for r in (*TRAINED, PREACT, PLAIN, VIT, *RANDOM)], ".4f", "baseline accuracies"),
        one(lambda: read_json(PLAIN_CHECKPOINT)["epochs"], "", "plain-20's epochs, its training record"),
        one(lambda: train_cifar().RECIPES["preact_resnet"].epochs, "", "the pre-activation ResNet's epochs"),
        one(lambda: train_cifar().RECIPES["vit"].epochs, "", "the ViT's epochs"),
        one(lambda: recipe().steps, "", "TunedLensRecipe's steps"),
        one(lambda: recipe().weight_decay, "sci", "TunedLensRecipe's weight decay"),
        one(lambda: code("vision_lens.adapters.cifar_inception").RANDOM_INIT_WIDTH,
            "", "InceptionV1 width, scripts/train_cifar.py's default"),
        one(lambda: 1 / run(R20).run["eval_classes"], ".1f", "chance"),
        any_of(lambda: [100 * d for d in summarise().DEPTHS], ".0f", "relative depths"),
        one(lambda: run(R20).run["fit"]["tuned"]["blocks"]["layer1.0"]["weight_decay"], "sci"),
        any_of(lambda: within_stage_neighbours(R20, "layer1.0"), ".0f", "other within-stage neighbours, rounded"),
        each(stage_widths, "", "the CIFAR ResNet's stage widths"),
        allow("0.99", "quoted from Alain & Bengio (2016): their probe error at the first layer"),
        allow("0.31", "quoted from Alain & Bengio (2016): their probe error at the last layer"),
        one(lambda: run(R20).run["eval_classes"], "", "classes"),
        one(lambda: re.search(r"n_layer=(\d+)", (REPO / FIXTURE).read_text()).group(1), "", "the toy GPT-2's layers"),
        one(lambda: re.search(r"(\d+) steps", (REPO / FIXTURE).read_text()).group(1), "", "its training steps"),
        one(lambda: run(R20).run["options"]["max_iter"], "", "the iteration limit"),
        allow("5", "section 5; block distance 5, the largest of the ViT and the language model (section 2d's table)"),
        each(lambda: [lm_record("settings", key) for key in ("steps", "width", "depth", "heads")], "",
             "the language-model reference's settings"),
        *lm_records((("validation", "perplexity"), 1, ".1f"), (("validation", "unigram_perplexity"), 1, ".1f"),
                    (("validation", "tokens"), 1e3, ".0f"), (("parameters",), 1e6, ".2f"), (("train_tokens",), 1e6, ".2f")),
        each(lambda: block_accuracy(INCEPTION_RECIPE, "tuned")[[0, -1]], ".3f",
             "InceptionV1's tuned lens under the recipe, first and last block"),
        one(lambda: np.nanmax(block_accuracy(INCEPTION_RECIPE, "linear_probe") - block_accuracy(INCEPTION_RECIPE, "tuned")),
            ".3f", "its largest probe - tuned accuracy gap"),
    ],
    LONG_DESCRIPTION: cited("2023"),
    "docs/method.md": [
        *cited("2016"), *sizes("1x1"),
        one(lambda: option_default("max_iter"), "", "--max-iter's default"),
        each(lambda: code("vision_lens.fit").PENALTY_GRID, "sci", "fit.PENALTY_GRID"),
        one(lambda: 100 * code("vision_lens.fit").FitSettings().validation_fraction, ".0f", "the validation slice"),
        one(lambda: most_iterations((*TRAINED, *LINEAR_HEAD_RANDOM)), "", "the most L-BFGS iterations of a final solve"),
        any_of(pinned_versions, "", "constraints.txt and setup.cfg"),
        one(lambda: recipe().momentum, "", "TunedLensRecipe"),
        one(lambda: recipe().lr_scale * (1 - recipe().momentum), ".1f", "TunedLensRecipe's learning rate"),
        one(lambda: recipe().weight_decay, "sci"), one(lambda: recipe().steps), one(lambda: recipe().clip),
        one(lambda: recipe().images_per_step, ","),
        one(lambda: load_script("train_reference_lm").TUNED_LENS_DEFAULT_TOKENS_PER_STEP, power_of_two,
            "tuned-lens train's default tokens per step"),
        each(lambda: code("vision_lens.frontier").FRONTIER_STRENGTHS[:2], "sci", "the frontier's first strengths"),
        one(lambda: code("vision_lens.frontier").FRONTIER_STRENGTHS[-1], "g", "the frontier's last strength"),
        one(lambda: code("vision_lens.metrics").BOOTSTRAP_RESAMPLES, ","),
        one(lambda: 100 * code("vision_lens.metrics").BOOTSTRAP_LEVEL, ".0f"),
        one(lambda: code("vision_lens.lenses.low_rank").RANK, "", "the low-rank lens's rank"),
        one(lambda: code("vision_lens.fit.targets").DENSE_ELEMENTS, power_of_two, "targets kept whole up to"),
        one(lambda: code("vision_lens.fit.targets").CHUNK_ELEMENTS, power_of_two, "logits held at once"),
        allow("50,257", "GPT-2's vocabulary, an example of a head too wide to keep its targets whole"),
    ],
    "docs/models.md": [
        *sizes("1x1", "2x2", "3x3", "4x4", "8x8", "16x16", "32x32", "224x224"),
        each(lambda: [baseline_acc(r) for r in RESNETS], ".4f"),
        each(lambda: [100 * (1 - baseline_acc(r)) for r in RESNETS], ".2f", "the published errors: 1 - baseline acc"),
        one(lambda: train_cifar().AUX_WEIGHT, "", "scripts/train_cifar.py"),
        one(lambda: code("vision_lens.adapters.cifar_inception").RANDOM_INIT_WIDTH),
        one(lambda: train_cifar().RECIPES["inceptionv1"].epochs),
        one(lambda: script_default("train_cifar", "--batch-size"), "", "its batch size"),
        one(lambda: read_json(CHECKPOINT)["seconds"] / 60, ".0f", "training minutes, the training record"),
        one(lambda: re.search(r"(\d+) CPU cores", read_json(CHECKPOINT)["machine"]).group(1), "", "the machine"),
        one(lambda: read_json(CHECKPOINT)["test_acc"], ".4f"),
        one(lambda: read_json(CHECKPOINT)["bytes"] / 1e6, ".1f", "the checkpoint's MB"),
        one(lambda: baseline_acc(INCEPTION), ".4f"),
        each(lambda: [vit_config()[k] for k in ("embed_dim", "depth", "num_heads")], "", "cifar_vit.CONFIG"),
        one(lambda: vit_config()["mlp_ratio"], ".0f"),
        one(lambda: (vit_config()["img_size"] // vit_config()["patch_size"]) ** 2, "", "the ViT's tokens"),
        one(lambda: train_cifar().RECIPES["vit"].weight_decay), one(lambda: train_cifar().RECIPES["vit"].lr, "sci"),
        one(lambda: train_cifar().RECIPES["vit"].label_smoothing),
        one(lambda: train_cifar().RECIPES["preact_resnet"].epochs),
        each(lambda: [baseline_acc(PREACT), baseline_acc(VIT)], ".4f", "the run folders' baseline accuracies"),
        each(torchvision_sizes, "", "torchvision's weights.transforms()"),
        allow("32", "a ResNet's total stride: timm's avg_down shortcuts are exact on sides divisible by it"),
        allow("0", "an index: lucent's dummy output 0, rank 0"),
        one(lambda: option_default("seed"), "", "--seed's default"),
        allow("1", "the global average's slot in the count 1 + k² of pooled vectors (readout.pooling_slots)"),
    ],
    "docs/development.md": [
        each(lambda: [in_file("scripts/same_results_across_code.sh", rf"--{split}-limit (\d+)") for split in ("fit", "eval")],
             "", "scripts/same_results_across_code.sh's images"),
        *sizes("1x1"),
        hand_timed("11", "minutes to add timm's ConvNeXt, first edit to passing contract tests (issue 36's report)"),
        hand_timed("5", "of them, minutes the contract tests ran on the busy machine (issue 36's report)"),
        one(lambda: code("vision_lens.schema").UNVERSIONED, "", "the version of files written before versions"),
        one(lambda: re.search(r"(\d+) CPU cores", read_json(CHECKPOINT)["machine"]).group(1), "", "the machine"),
    ],
    "docs/packaging.md": [
        one(lambda: in_file("vision_lens/cli.py", r"error: \{exc\}.*\n\s*return (\d+)"), "", "the CLI's exit status"),
        allow("39", "the wheel's size in MB; tests/test_packaging.py holds the page to the built wheel"),
        allow("64", "the wheel's size unpacked, in MB; tests/test_packaging.py holds the page to the built wheel"),
        one(lambda: code("tests.test_packaging").WHEEL_MB_BUDGET, "", "the wheel's budget"),
        allow("100", "PyPI's limit on an uploaded file without a request, in MB"),
    ],
    "docs/performance.md": [Source(lambda: [t for _, t in numbers(load_script("render_performance").render())], False,
                                   "scripts/render_performance.py renders the page from the benchmark JSON; "
                                   "tests/test_benchmark.py checks that it is current")],
    "docs/plotting-and-compare.md": [any_of(pinned_versions, "", "constraints.txt")],
    "docs/output-format.md": [
        one(lambda: code("vision_lens.schema").UNVERSIONED, "", "the version of files written before versions"),
    ],
    "docs/language-models.md": [
        one(lambda: recipe().steps, "", "TunedLensRecipe's steps"),
        one(lambda: recipe().images_per_step, ",", "TunedLensRecipe's rows per step"),
        table(tuned_lens_benchmark_table, "scripts/benchmark_tuned_lens.py's summary_table of its JSON"),
        each(lambda: [tuned_lens_benchmark()["tokens"][k] for k in ("fit_windows", "fit_tokens")], ",",
             "the benchmark's fit windows and tokens"),
        one(lambda: tuned_lens_benchmark()["tokens"]["eval_windows"], "", "the benchmark's eval windows"),
        each(lambda: [tuned_lens_benchmark()["tokens"]["eval_windows"] * (tuned_lens_benchmark()["tokens"]["context"] - 1),
                      tuned_lens_benchmark()["tokens"]["fit_windows"] * (tuned_lens_benchmark()["tokens"]["context"] - 1)],
             ",", "the benchmark's eval and fit rows (every position with a next token)"),
        one(lambda: tuned_lens_benchmark()["machine"]["cpus"], "", "the benchmark machine's cores"),
        one(lambda: tuned_lens_benchmark()["tokens"]["default_fit_windows"], "", "the default fit's windows"),
        each(lambda: [tuned_lens_benchmark()["tokens"]["default_fit_windows"]
                      * (tuned_lens_benchmark()["tokens"]["context"] - 1)], ",", "the default fit's rows"),
        each(lambda: [tuned_lens_benchmark()["pipeline_recipe"]["train_s"], tuned_lens_benchmark()["tuned_lens"][
            "train_wall_s"]], ".0f", "the two recipes' training times"),
        one(lambda: read_json("results/checkpoints/lm-reference/config.json")["vocab_size"], ",",
            "the reference LM's vocabulary"),
        one(lambda: 100 * tuned_lens_benchmark()["summary"]["recipe_max_relative_ce_difference"], ".2f",
            "the recipes' largest per-layer CE difference, %"),
        one(lambda: 100 * code("tests.test_hf_causal_lm").RECIPE_TOLERANCE, ".1f", "the parity test's tolerance, %"),
        one(lambda: tuned_lens_benchmark()["summary"]["recipe_speed_ratio"], ".2f", "the recipe's speed ratio"),
        each(lambda: [tuned_lens_benchmark()["pipeline_recipe"]["stages_s"][k] for k in ("capture_fit", "fit_by_recipe")],
             ".0f", "the recipe run's capture and fit stages"),
    ],
    "docs/control.md": [
        one(lambda: 100 * code("vision_lens.metrics").BOOTSTRAP_LEVEL, ".0f", "the interval level"),
        allow("0", "a zero translator's distance from the identity, by definition (tests/test_signatures.py)"),
    ],
    "docs/reliability.md": [
        one(lambda: in_file("vision_lens/cli.py", r"error: \{exc\}.*\n\s*return (\d+)"), "", "the CLI's exit status"),
        one(lambda: option_default("pool_grid"), "", "--pool-grid's default"),
        allow("2", "ln 2, bits per nat"),
    ],
    "docs/lm-reference.md": [
        any_of(pinned_versions, "", "constraints.txt and setup.cfg"),
        allow("0.1.0", "simple-parsing's first release on PyPI"), allow("0.1.9", "simple-parsing's latest release"),
        allow("1", "the command sequence's step 1; gradient clipping at 1 (scripts/train_reference_lm.py)"),
        allow("2", "the command sequence's step 2"),
        *[one(lambda flag=flag: lm_default(flag), "", f"train_reference_lm.py {flag}")
          for flag in ("--width", "--depth", "--heads", "--context", "--vocab-size", "--batch-size", "--steps",
                       "--warmup", "--seed", "--lens-tokens-per-step", "--lens-batch-size", "--lr", "--eval-every",
                       "--patience")],
        each(lambda: in_file(LM_SCRIPT, r"betas=\((\S+), (\S+)\), weight_decay=([\d.]+)"), "",
             "AdamW's betas and weight decay"),
        one(lambda: int(lm_default("--batch-size")) * int(lm_default("--context")), "", "tokens per step"),
        one(lambda: int(lm_default("--steps")) * int(lm_default("--batch-size")) * int(lm_default("--context")) / 1e6,
            ".1f", "training tokens, millions"),
        one(lambda: reference_lm_parameters() / 1e6, ".2f", "GPT-2 parameters, millions"),
        one(lambda: reference_lm_parameters() * 4 / 1e6, ".0f", "its MB in fp32"),
        one(lambda: reference_lm_parameters() * 2 / 1e6, ".1f", "its MB in fp16"),
        allow("20", "issue 19's limit on the model's size"),
        one(lambda: load_script("train_reference_lm").VALIDATION_EVERY, "", "every 10th work held out"),
        each(lambda: [in_file(LM_SCRIPT, r"The (\d+) works"), in_file(LM_SCRIPT, r"\((\S+) MB\)"),
                      in_file(LM_SCRIPT, r"held out: (\d+) of"), in_file(LM_SCRIPT, r"\((\d+) of the 42\)")], "",
             "the corpus, as the script's comments say"),
        one(lambda: recipe().lr_scale), one(lambda: recipe().momentum), one(lambda: recipe().weight_decay, "sci"),
        one(lambda: load_script("train_reference_lm").TUNED_LENS_DEFAULT_STEPS),
        one(lambda: load_script("train_reference_lm").TUNED_LENS_DEFAULT_TOKENS_PER_STEP, power_of_two),
        each(lambda: [in_file("tests/test_lm_reference.py", rf'"{flag}", "(\d+)"')
                      for flag in ("--vocab-size", "--width", "--lens-steps", "--lens-tokens-per-step",
                                   "--eval-tokens")] + [in_file("tests/test_lm_reference.py", rf"{name} = (\d+)")
                                                        for name in ("DEPTH", "STEPS")]
             + [in_file("tests/test_lm_reference.py", r"// (\d+)")],
             "", "the test's tiny sizes"),
        allow("0.1", "GPT-2's default dropout (transformers' GPT2Config), and AdamW's weight decay"),
        allow("5", "the corpus criterion (at least 5 MB) and the Debian packages' sizes (under 5 MB)"),
        allow("4", "the Jane Austen package's size (about 4 MB, Debian); also the held-out works and batch sequences"),
        *lm_records((("corpus", "validation_bytes"), 1e3, ".0f"), (("corpus", "train_bytes"), 1e6, ".2f"),
                    (("corpus", "stopping_bytes"), 1e3, ".0f"),
                    (("corpus", "train_bytes"), 1e6, ".1f"), (("train_tokens",), 1e6, ".2f"),
                    (("seconds",), 60, ".0f"), (("seconds_per_step",), 1, ".1f"),
                    (("lens", "train_seconds"), 60, ".0f"), (("lens", "eval_seconds"), 60, ".0f"),
                    (("validation", "perplexity"), 1, ".1f"), (("validation", "unigram_perplexity"), 1, ".1f"),
                    (("validation", "tokens"), 1e3, ".0f")),
        one(lambda: lm_record("tokens_seen") / lm_record("train_tokens"), ".1f", "passes over the training tokens"),
        one(lambda: lm_record("lens", "train_seconds") / lm_record("lens", "steps"), ".1f", "s per lens step"),
        allow("20", "s per lens step of the first reference on a CPU without BF16 (its record, in git history)"),
        hand_timed("15", "GB, tuned-lens eval's resident size without the malloc setting, when it was killed"),
        allow("24", "GB of memory of this machine"),
        allow("172.5", "the first reference's validation perplexity (results/lm-reference/record.json in git history)"),
        allow("0.12", "the first reference's layer_0 gap (issue 33)"), allow("0.30", "issue 33's depth target"),
        allow("500", "the first reference's steps (issue 33)"),
        each(lambda: [lm_ce("tuned", "layer_0"), lm_ce("baseline"), lm_ce("tuned", "layer_0") - lm_ce("baseline")]
             + [lm_ce("tuned", layer) for layer in lm_layers()] + [lm_ce("logit", "layer_0"),
                                                                   lm_ce("logit", lm_layers()[-1])], ".2f",
             "results/lm-reference/aggregate_metrics.json: per-layer CE in bits per byte"),
    ],
}


# ---------------------------------------------------------------------------------------------------------------
# The tests


@pytest.mark.results
@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_number_comes_from_a_declared_source(document):
    text = (REPO / document).read_text(encoding="utf-8")
    sources = SOURCES.get(document, [])
    holds = tables(text)
    tied_text = text
    for source in sources:
        for generated in (source.tables() if source.tables else []):
            assert generated in holds, f"{document} lacks this table of {source.note} (rerun it):\n{generated}"
            tied_text = tied_text.replace(generated, blanked(generated))
    given: dict[str, Source] = {}
    for source in sources:
        for token in source.tokens():
            given.setdefault(token, source)
    found = numbers(tied_text)
    present = {t for _, t in numbers(text)}
    unexplained = [f"line {line}: {token}" for line, token in found if token not in given]
    assert not unexplained, (f"{document}: numbers that no declared source gives (declare them in "
                             f"tests/test_docs.py SOURCES): {'; '.join(unexplained)}")
    stale = [f"{t} ({s.note})" for s in sources if s.required for t in s.tokens() if t not in present]
    assert not stale, f"{document}: declared numbers the document does not hold (wrong, or gone): {'; '.join(stale)}"


@pytest.mark.unit
def test_the_number_extraction_reads_prose_not_names_or_code():
    text = ("ResNet-20/32/44 at 0.9173 (`layer3.2`, `--fit-limit 500`), 1,000 resamples, 1e-6, 3-6 s, 6n+2, "
            "GPT-2 and bf16, a 32x32 image, torch 2.14.1, 2^18 tokens, [link](results/run2.json)\n"
            "```bash\nvision-lens run --seed 7\n```\n1. a list item\n")
    assert [t for _, t in numbers(text)] == ["0.9173", "1,000", "1e-6", "3", "6", "32x32", "2.14.1", "2^18"]


@pytest.mark.results
def test_the_readme_is_short_and_starts_with_install_demo_and_the_tests_that_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= 15_000, f"README.md has {len(readme)} characters; move detail to docs/"
    first_screen = "\n".join(readme.splitlines()[:40])
    first_block = _FENCE.search(first_screen)
    assert first_block, "the README's first screen holds no command block"
    ci = (REPO / ".ci" / "run").read_text().split("# The README's test command:")[1].strip()
    for command in ("pip install -c constraints.txt", "vision-lens demo", ci):
        assert command in first_block.group(0), f"the README's first commands lack {command!r}"

# ---------------------------------------------------------------------------------------------------------------
# Links and references

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lstrip("#").strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub(_blank, path.read_text(encoding="utf-8"))
    return {slug(line) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


@pytest.mark.results
@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_resolves(document):
    path = REPO / document
    broken = []
    for target in _LINK.findall(_FENCE.sub(_blank, path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{document}: links that resolve to nothing: {', '.join(broken)}"


@pytest.mark.results
@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_test_named_exists(document):
    defined = {m for f in (REPO / "tests").glob("test_*.py") for m in re.findall(r"def (test_\w+)", f.read_text())}
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", (REPO / document).read_text(encoding="utf-8")))
    assert named <= defined, f"{document} names tests that do not exist: {', '.join(sorted(named - defined))}"


@pytest.mark.results
def test_the_long_description_works_outside_the_repository():
    """PyPI shows setup.cfg's long description without the repository: no relative link or image may be in it."""
    from setuptools.config.setupcfg import read_configuration

    cfg = (REPO / "setup.cfg").read_text()
    assert re.search(rf"^long_description = file: {LONG_DESCRIPTION}$", cfg, re.M)
    text = (REPO / LONG_DESCRIPTION).read_text(encoding="utf-8")
    assert read_configuration(REPO / "setup.cfg")["metadata"]["long_description"] == text
    targets = _LINK.findall(text) + re.findall(r"<img[^>]*src=\"([^\"]+)\"", text)
    assert targets and all(t.startswith("https://") for t in targets), targets
    assert "![" not in text  # an image would need a file beside it
    assert LONG_DESCRIPTION in (REPO / "MANIFEST.in").read_text()  # in the sdist, which builds the wheel


# ---------------------------------------------------------------------------------------------------------------
# The public API


@pytest.mark.unit
def test_the_public_api_resolves_with_docstrings():
    import vision_lens

    assert vision_lens.__all__ == ["__version__", *vision_lens._EXPORTS]
    assert dir(vision_lens) == sorted(vision_lens.__all__)
    for name in vision_lens.__all__[1:]:
        value = getattr(vision_lens, name)
        assert value is not None and (value.__doc__ or "").strip(), f"vision_lens.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'fit_lens'"):
        vision_lens.fit_lens  # noqa: B018  (not public)


@pytest.mark.unit
def test_importing_vision_lens_loads_nothing_heavy():
    code = ("import sys, vision_lens; heavy = sorted({'torch', 'numpy', 'matplotlib', 'PIL', 'timm', 'torchvision', "
            "'sklearn', 'seaborn'} & set(sys.modules)); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
