"""Regenerate aggregate_metrics.json here with tuned-lens 0.2.0's own evaluation loop, offline.

A 6-layer GPT-2 (48 wide) is trained for 150 steps on a toy language, a local
byte-level BPE tokenizer is built with ``tokenizers``, a tuned lens is fitted
with tuned-lens's ``TunedLens`` class (150 Adam steps, KL to the model), and
then ``tuned_lens.scripts.eval_loop.Eval.execute`` (what ``tuned-lens eval``
runs) writes ``aggregate_metrics.json`` with ``--lens_types logit tuned
--layer_transfer``. Values are bits per byte, as tuned-lens reports them.

Two shims for today's stack, neither touching the eval loop itself:

* tuned-lens 0.2.0 imports ``torchdata.dataloader2``, removed in torchdata
  0.10; install torchdata 0.9.0 beside the venv, not into it::

      pip install --no-deps --target /tmp/tl_overlay torchdata==0.9.0
      PYTHONPATH=/tmp/tl_overlay python make_fixture.py WORKDIR

* its CLI cannot parse ``--lens_types`` under simple-parsing 0.1.9, so ``Eval``
  is built here in Python; and transformers 5 dropped ``load_in_8bit``, so
  the model is loaded by a ``Model`` subclass without it.
"""

import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from tuned_lens.nn.lenses import TunedLens
from tuned_lens.scripts.eval_loop import Eval
from tuned_lens.scripts.ingredients import Data, Distributed, Model

HERE = Path(__file__).resolve().parent


@dataclass
class LocalModel(Model):
    """Loads a saved model folder without the ``load_in_8bit`` argument transformers 5 rejects."""

    def load(self, device, must_use_cache=False):
        model = AutoModelForCausalLM.from_pretrained(self.name, local_files_only=True)
        return model.eval().requires_grad_(False), self.load_tokenizer(must_use_cache=True)


def toy_corpus(rng: random.Random, documents: int) -> list[str]:
    """Sentences of a four-slot grammar, so a tiny model learns something within seconds."""
    slots = [["the cat", "a dog", "my bird", "one fox"], ["sat", "ran", "sang", "hid"],
             ["on", "under", "near", "over"], ["the mat", "a hill", "the tree", "a box"]]
    return [" ".join(" ".join(rng.choice(s) for s in slots) + "." for _ in range(12)) for _ in range(documents)]


def main(work: Path) -> None:
    rng = random.Random(0)
    torch.manual_seed(0)
    work.mkdir(parents=True, exist_ok=True)
    texts = toy_corpus(rng, 120)
    with open(work / "data.jsonl", "w") as f:  # held-out documents for the eval
        for text in texts[100:]:
            f.write(json.dumps({"text": text}) + "\n")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    special = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=special, bos_token=special, unk_token=special)
    tokenizer.save_pretrained(work / "model")

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=48, n_layer=6, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    ids = [torch.tensor(tokenizer(t)["input_ids"][:48]) for t in texts[:100]]
    batch = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    model.save_pretrained(work / "model")

    lens = TunedLens.from_model(model)
    optimizer = torch.optim.Adam(lens.parameters(), lr=1e-2)
    out = model(batch, output_hidden_states=True)
    target = out.logits.log_softmax(-1)
    for _ in range(150):
        loss = sum(
            torch.nn.functional.kl_div(lens(h, idx=i).log_softmax(-1), target, log_target=True, reduction="batchmean")
            for i, h in enumerate(out.hidden_states[:-1])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lens.save(work / "lens")

    Eval(
        data=Data(name=[str(work / "data.jsonl")], max_length=48),
        model=LocalModel(name=str(work / "model")),
        dist=Distributed(),
        output=work / "eval",
        lens_name=str(work / "lens"),
        lens_types=["logit", "tuned"],
        layer_transfer=True,
    ).execute()
    shutil.copy(work / "eval" / "aggregate_metrics.json", HERE / "aggregate_metrics.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
