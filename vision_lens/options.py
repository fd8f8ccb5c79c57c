"""The options of ``train``, ``eval`` and ``run``, each defined once with its help text.

The command line is generated from these dataclasses, so this module imports no
torch (nor anything heavy): ``vision-lens --help`` must answer at once. What
needs torch (the ``auto`` device, the fit settings) is resolved when a command runs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OptionError
from .lens_kinds import kind_names, lens_kind, lens_kinds


def default_cache_dir() -> str:
    return os.environ.get("VISION_LENS_CACHE", str(Path.home() / ".cache" / "vision_lens"))


IN_MEMORY = "in-memory"  # the weights of a model passed to run_pipeline as a torch.nn.Module, as run.json records
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes no more


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` if available, else ``cpu``; any other device as given, once :func:`check_device` passes."""
    import torch

    if device != "auto":
        check_device(device)
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """OptionError naming ``--device`` unless it is ``auto`` or a cpu, cuda or mps device that this machine has."""
    if device == "auto":
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"--device {device!r} is not a torch device; use auto, cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {device}: torch sees no CUDA GPU on this machine; pass --device cpu (or auto)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise OptionError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered "
                          "from 0; pass one of them, or --device auto")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"--device {device}: torch has no MPS (Apple GPU) backend here; pass --device cpu (or auto)")


def check_count(option: str, value: int | None, what: str) -> None:
    """OptionError naming ``option`` unless ``value`` is None (left out) or at least 1."""
    if value is not None and value < 1:
        raise OptionError(f"{option} {value}: give {what} (at least 1)")


def check_seed(seed: int) -> None:
    """OptionError naming ``--seed`` unless numpy's seeding takes it."""
    if not 0 <= seed <= MAX_SEED:
        raise OptionError(f"--seed {seed}: give an integer from 0 to {MAX_SEED}")


def check_penalty(option: str, value: float, otherwise: str = "") -> None:
    """OptionError naming ``option`` unless ``value`` is a finite L2 penalty above 0 (``otherwise``: what else the
    option takes)."""
    if not (math.isfinite(value) and value > 0):
        raise OptionError(f"{option} {value}: give a finite penalty above 0 (e.g. 1e-3){otherwise}")


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class CommonOptions:
    """Options shared by ``train``, ``eval`` and ``run``."""

    model: str = _opt(None, "model as family:arch, e.g. cifar:resnet20; `vision-lens models` lists them",
                      required=True)
    data: str = _opt(
        None,
        "dataset root holding one ImageFolder per split (<data>/<split>/<class>/<image>), "
        "or torchvision:cifar10 to download CIFAR-10; for a language model (hf:), text: <data>/<split>.jsonl (one "
        "{\"text\": ...} line per document) or <data>/<split>/*.txt",
        required=True,
    )
    out: str = _opt(None, "output folder for lenses, metrics and plots", required=True)
    weights: str = _opt(
        "pretrained",
        "checkpoint path or URL; 'pretrained' loads the weights `vision-lens models` lists for --model (published, or "
        "trained here), "
        "'random' a random initialisation (the control)",
    )
    fit_split: str = _opt("train", "split folder whose images fit the lenses")
    eval_split: str = _opt("test", "split folder whose images evaluate them (must differ from --fit-split)")
    eval_limit: int = _opt(None, "evaluate on this many images (text: windows), a subset chosen by --seed (default: "
                           "all)", type=int)
    seed: int = _opt(0, "seed for subsets, random init and fitting; the same seed gives the same JSON", type=int)
    device: str = _opt("auto", "torch device: cpu, cuda, cuda:1, ... (auto: cuda if available)")
    precision: str = _opt(
        "fp32", "backbone precision during capture: fp32, or bf16 autocast (for GPUs; pooled features and lenses "
        "stay float32)", choices=("fp32", "bf16"))
    batch_size: int = _opt(None, "images per forward pass during capture (default: 64 on the CPU, 256 on a GPU; "
                           "text: windows, 8 on the CPU, 32 on a GPU)", type=int)
    workers: int = _opt(None, "data-loading worker processes (default: one per core; on the CPU they decode a "
                        "chunk of images while the model waits, then wait while it runs on them, since both need "
                        "every core; with a GPU they decode while it runs; 0: the main process decodes)", type=int)
    cache_dir: str = _opt(None, "feature cache root (default: $VISION_LENS_CACHE or ~/.cache/vision_lens)")
    download_root: str = _opt(None, "where torchvision:cifar10 is downloaded (default: <cache-dir>/datasets)")
    overwrite: bool = _opt(False, "replace an existing, non-empty --out", action="store_true")
    eval_on_fit_images: bool = _opt(
        False, "eval and run: evaluate even where the eval images are images the lenses were fitted on (a measure "
        "of the fit, not of held-out performance; a warning, recorded in run.json). Without it that is an error",
        action="store_true")
    tokenizer: str = _opt(None, "language models: the tokenizer's folder or hub id (default: the model's own)")
    context: int = _opt(None, "language models: tokens per window, as tuned-lens's --max_length (default: the "
                        "model's context)", type=int)
    positions: int = _opt(None, "language models: token positions sampled per window, seeded (default: every "
                          "position that has a next token)", type=int)
    match_classes_by_position: bool = _opt(
        False, "match the class folders to the model's outputs by their sorted position instead of by name (for "
        "data whose folders are not named after the model's classes; recorded in run.json)", action="store_true")

    def __post_init__(self):
        check_count("--batch-size", self.batch_size, "a number of images per forward pass")
        check_count("--eval-limit", self.eval_limit, "a number of images to evaluate on, or leave it out for all")
        check_count("--context", self.context, "a number of tokens per window, or leave it out for the model's")
        check_count("--positions", self.positions, "a number of positions per window, or leave it out for all")
        if self.workers is not None and self.workers < 0:
            raise OptionError(f"--workers {self.workers}: give 0 (load in the main process) or more loader processes")
        check_seed(self.seed)
        check_device(self.device)
        self.cache_dir = self.cache_dir or default_cache_dir()
        self.download_root = self.download_root or str(Path(self.cache_dir) / "datasets")

    def inputs(self) -> dict[str, str]:
        """What the command reads from disk, by option: ``--overwrite`` of ``--out`` must never reach them."""
        inputs = {"--data": self.data, "--cache-dir": self.cache_dir}
        if self.weights not in ("pretrained", "random", IN_MEMORY) and not self.weights.startswith(("http://", "https://")):
            inputs["--weights"] = self.weights
        return inputs


@dataclass
class RunOptions(CommonOptions):
    """``vision-lens train`` and ``run``: the common options plus how the lenses are fitted."""

    fit_limit: int = _opt(None, "fit on this many images (text: windows), a subset chosen by --seed (default: all)",
                          type=int)
    loss: str = _opt("kl", "tuned-lens objective: kl (to the model's output, as tuned-lens) or ce (labels)",
                     choices=("kl", "ce"))
    max_iter: int = _opt(100, "L-BFGS iterations per solve of the default fit, by the convex solver and by autograd "
                         "alike (each solve is full-batch and stops earlier at its tolerance; --recipe tuned-lens "
                         "takes its own 250 steps)", type=int)
    weight_decay: float = _opt(
        None,
        "a fixed L2 penalty on lens parameters (pulls tuned lenses towards the logit lens); default: chosen per "
        "block and lens from 1e-1 ... 1e-6 on a held-out 20%% of the fit split, then refitted on all of it",
        type=float,
    )
    pool_grid: int = _opt(
        1, "pooling of the whole block: 1 = global average; k > 1 adds the k x k adaptive-average cells", type=int)
    recipe: str = _opt(
        "optimum", "how the tuned and shared translators are fitted: optimum (each to its penalised optimum, the "
        "penalty chosen on held-out fit images) or tuned-lens (tuned-lens train's default recipe: SGD, 250 steps, "
        "weight decay 1e-3, raw inputs); the linear probe always takes the optimum", choices=("optimum", "tuned-lens"))
    lenses: list = _opt(
        None, "lens kinds to fit, of " + ", ".join(k.name for k in lens_kinds() if k.fitted) + " (default: "
        + " ".join(kind_names()) + "; the logit lens is always evaluated)", nargs="+",
        choices=[k.name for k in lens_kinds() if k.fitted], metavar="KIND")

    def __post_init__(self):
        super().__post_init__()
        check_count("--fit-limit", self.fit_limit, "a number of images to fit on, or leave it out for all")
        check_count("--max-iter", self.max_iter, "a number of L-BFGS iterations")
        check_count("--pool-grid", self.pool_grid, "1 (the global average) or a grid side k > 1")
        if self.weight_decay is not None:
            check_penalty("--weight-decay", self.weight_decay,
                          ", or leave it out to choose one per block on held-out images")
        if self.lenses is not None:
            unfitted = [name for name in self.lenses if not lens_kind(name).fitted]
            if unfitted or not self.lenses:
                raise OptionError(f"--lenses {' '.join(self.lenses)}: name lens kinds to fit, of "
                                  f"{', '.join(k.name for k in lens_kinds() if k.fitted)} (the logit lens has nothing "
                                  "to fit and is always evaluated)")
            self.lenses = kind_names(self.lenses)

    @property
    def fit_settings(self):
        """The optimiser settings as ``fit.FitSettings`` (imported here: fit needs torch)."""
        from .fit import FitSettings

        return FitSettings(self.max_iter, self.weight_decay, seed=self.seed)


@dataclass
class EvalOptions(CommonOptions):
    """``vision-lens eval``: evaluate lenses saved by ``vision-lens train``; what they read comes from their config."""

    lens: str = _opt(None, "folder written by `vision-lens train` (holding lenses/)", required=True)

    def inputs(self) -> dict[str, str]:
        return super().inputs() | {"--lens": self.lens}
