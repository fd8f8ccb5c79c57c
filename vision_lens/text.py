"""Text as a language model reads it: documents, tokenized and cut into windows as tuned-lens cuts them.

A split of text data is a folder of documents, one ``.txt`` file each
(``<data>/<split>/*.txt``), or tuned-lens's local form, one ``{"text": ...}``
line per document (``<data>/<split>.jsonl``). Fit and eval splits are then
disjoint whole documents.

The documents are joined by the tokenizer's end-of-text token, with one before
the first, tokenized as one text and cut into windows of ``context`` tokens,
the last partial window dropped: exactly what ``tuned_lens.data.chunk_and_tokenize``
does (in batches of 2,048 documents, as its ``datasets.map`` call does), so that a
lens fitted here and one trained by ``tuned-lens train`` see the same windows. Its
ratio of tokens to bytes turns nats per token into bits per byte, as tuned-lens
reports them.

The rows that lenses are fitted and evaluated on are token positions: in every
window, the positions that predict a next token (all but the last), or a seeded
sample of ``per_window`` of them. Neighbouring tokens are not independent, so
intervals resample whole windows (:attr:`TokenRows.window`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import DataError

TUNED_LENS_MAP_BATCH = 2048  # documents joined at once by tuned-lens's chunk_and_tokenize (datasets.map batch_size)


@dataclass(frozen=True)
class Documents:
    """The documents of one split, in a fixed order (file names sorted, or the lines of the .jsonl file)."""

    source: str  # the .jsonl file or the folder they were read from
    names: tuple[str, ...]
    texts: tuple[str, ...]


def split_path(data: str | Path, split: str) -> Path:
    """Where split ``split`` of text data ``data`` lies: ``<data>/<split>.jsonl`` or the folder ``<data>/<split>``."""
    data = Path(data)
    jsonl, folder = data / f"{split}.jsonl", data / split
    if jsonl.is_file() and folder.is_dir():
        raise DataError(f"--data {data} holds both {jsonl} and {folder} for split {split!r}; keep one of them")
    return jsonl if jsonl.is_file() else folder


def read_documents(data: str | Path, split: str) -> Documents:
    """The documents of split ``split`` (see the module docstring); a DataError naming the path where there are
    none, or one cannot be read."""
    path = split_path(data, split)
    if path.suffix == ".jsonl":
        names, texts = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}, line {number}: expected a JSON object with a \"text\" string, one document "
                                f"a line, as tuned-lens reads it ({exc.__class__.__name__}: {exc})") from exc
            if not isinstance(text, str):
                raise DataError(f"{path}, line {number}: \"text\" is a {type(text).__name__}, not a string")
            names.append(f"{path.name}:{number}")
            texts.append(text)
    elif path.is_dir():
        # Hidden files (macOS's ._* AppleDouble files among them) are no documents.
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and not p.name.startswith("."))
        names, texts = [], []
        for file in files:
            try:
                texts.append(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read document {file} as UTF-8 text ({exc}); fix or remove it") from exc
            names.append(file.name)
    else:
        raise DataError(f"--data {data} has no split {split!r}: expected {path.with_suffix('.jsonl')} (one "
                        f"{{\"text\": ...}} line per document) or a folder {path} of .txt documents")
    if not texts:
        raise DataError(f"{path} holds no documents (.txt files, or {{\"text\": ...}} lines)")
    return Documents(str(path), tuple(names), tuple(texts))


@dataclass(frozen=True)
class TokenWindows:
    """Documents as tuned-lens chunks them: ``ids`` ``(windows, context)``, and the counts behind bits per byte."""

    ids: np.ndarray  # int64 (windows, context)
    tokens: int  # every token of the joined texts, the dropped partial windows' included (as tuned-lens counts)
    bytes: int  # UTF-8 bytes of the joined texts

    @property
    def bits_per_byte_per_nat(self) -> float:
        """Multiply a loss in nats per token by this for bits per byte (tuned-lens's ``nats_to_bpb``)."""
        return self.tokens / self.bytes / math.log(2)

    @property
    def fingerprint(self) -> str:
        """A hash of the windows' tokens: the rows' content, which the feature cache keys on."""
        return hashlib.sha256(np.ascontiguousarray(self.ids, dtype=np.int64).tobytes()).hexdigest()


def token_windows(documents: Documents, tokenizer, context: int) -> TokenWindows:
    """``documents`` joined, tokenized and cut into ``context``-token windows as tuned-lens does (module docstring):
    the same tokenizer call, so special tokens a tokenizer adds to each chunk are where tuned-lens has them.

    ``tokenizer`` is a ``transformers`` tokenizer; the window length is ``context`` or the tokenizer's
    ``model_max_length``, whichever is smaller, as in tuned-lens.
    """
    separator = tokenizer.eos_token or "<|endoftext|>"
    length = min(tokenizer.model_max_length, context)
    windows, tokens, size = [], 0, 0
    for start in range(0, len(documents.texts), TUNED_LENS_MAP_BATCH):
        joined = separator.join(["", *documents.texts[start:start + TUNED_LENS_MAP_BATCH]])
        output = tokenizer(joined, max_length=length, return_attention_mask=False, return_overflowing_tokens=True,
                           truncation=True)
        chunks = output["input_ids"]
        if chunks and isinstance(chunks[0], int):  # a slow tokenizer: one chunk, then the rest unchunked
            overflow = output.get("overflowing_tokens") or []
            chunks = [chunks] + [overflow[i:i + length] for i in range(0, len(overflow), length)]
        tokens += sum(len(chunk) for chunk in chunks)
        size += len(joined.encode("utf-8"))
        windows += chunks[:-1]  # tuned-lens drops the last chunk, whole or not
    if not windows:
        raise DataError(f"{documents.source}: its {tokens} tokens make no window of {length} tokens besides the "
                        "last, which tuned-lens drops; give this split more text")
    return TokenWindows(np.asarray(windows, dtype=np.int64), tokens, size)


@dataclass(frozen=True)
class TokenRows:
    """The rows of a split: ``window[r]``, ``position[r]`` and the next token ``target[r]``, window by window."""

    window: np.ndarray  # int64 (rows,)
    position: np.ndarray  # int64 (rows,), 0 .. context - 2
    target: np.ndarray  # int64 (rows,): ids[window, position + 1]

    def __len__(self) -> int:
        return len(self.window)


def sample_positions(windows: TokenWindows, selected: Sequence[int], per_window: int | None, seed: int) -> TokenRows:
    """The rows of the ``selected`` windows: every position that predicts a next token (``per_window`` None), or a
    seeded sample of ``per_window`` of them per window, in increasing order. A window's sample depends only on the
    seed and the window's index, so a window keeps its rows whatever else is selected."""
    context = windows.ids.shape[1]
    predicting = context - 1
    if per_window is not None and not 1 <= per_window <= predicting:
        raise DataError(f"--positions {per_window}: give 1 to {predicting} positions per {context}-token window, or "
                        "leave it out for all")
    selected = np.asarray(selected, dtype=np.int64)
    if per_window is None or per_window == predicting:
        positions = np.tile(np.arange(predicting), (len(selected), 1))
    else:
        positions = np.stack([np.sort(np.random.default_rng([seed, int(w)]).permutation(predicting)[:per_window])
                              for w in selected])
    window = np.repeat(selected, positions.shape[1])
    position = positions.reshape(-1)
    return TokenRows(window, position, windows.ids[window, position + 1])


@dataclass(frozen=True)
class TextSource:
    """One split of text data as capture reads it: its documents cut into windows, each window one item (what an
    image is to an image source: fit and eval items are told apart by their content ids, the hashes of their
    tokens)."""

    documents: Documents
    windows: TokenWindows

    def __len__(self) -> int:
        return len(self.windows.ids)

    @property
    def fingerprint(self) -> str:
        return self.windows.fingerprint

    def content_ids(self, indices: Sequence[int], index_dir=None) -> list[str]:
        return [hashlib.sha256(np.ascontiguousarray(self.windows.ids[i], dtype=np.int64).tobytes()).hexdigest()
                for i in indices]

    def describe(self, index: int) -> str:
        return f"window {index} of {self.documents.source}"
