"""Text data: documents read, tokenized and cut into windows exactly as tuned-lens does; rows sampled per window."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vision_lens.data import DataError
from vision_lens.text import Documents, read_documents, sample_positions, token_windows

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer of 300 tokens trained on this repository's README (real English, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([(REPO / "README.md").read_text()], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", model_max_length=64)


def docs_pages() -> list[str]:
    return [page.read_text(encoding="utf-8") for page in sorted((REPO / "docs").glob("*.md"))]


def test_documents_come_from_a_folder_of_txt_files_or_a_jsonl_file(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "b.txt").write_text("second")
    (tmp_path / "train" / "a.txt").write_text("first")
    (tmp_path / "train" / "._a.txt").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, not a document
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    train, test = read_documents(tmp_path, "train"), read_documents(tmp_path, "test")
    assert (train.names, train.texts) == (("a.txt", "b.txt"), ("first", "second"))
    assert (test.names, test.texts) == (("test.jsonl:1", "test.jsonl:3"), ("one", "two"))


@pytest.mark.parametrize("content, message", [
    (None, "has no split 'test'"),
    ("not json\n", "line 1: expected a JSON object"),
    (json.dumps({"text": 3}) + "\n", 'line 1: "text" is a int'),
    ("\n", "holds no documents"),
])
def test_unreadable_text_data_is_refused_naming_the_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / "test.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        read_documents(tmp_path, "test")


def test_windows_are_tuned_lens_chunks(tokenizer):
    """The windows, the token count and the byte count are what tuned_lens.data.chunk_and_tokenize gives."""
    datasets = pytest.importorskip("datasets")
    from tuned_lens.data import chunk_and_tokenize

    texts = docs_pages()
    windows = token_windows(Documents("docs", tuple(map(str, range(len(texts)))), tuple(texts)), tokenizer, 64)
    chunked, nats_to_bpb = chunk_and_tokenize(datasets.Dataset.from_dict({"text": texts}), tokenizer, max_length=64,
                                              num_proc=1, load_from_cache_file=False)
    np.testing.assert_array_equal(windows.ids, np.asarray(chunked["input_ids"]))
    assert windows.bits_per_byte_per_nat == pytest.approx(nats_to_bpb, rel=1e-12)
    assert (windows.ids[:, 0] == tokenizer.eos_token_id).sum() >= 1  # the texts start with the separator


def test_text_too_short_for_a_window_beside_the_last_is_refused(tokenizer):
    with pytest.raises(DataError, match="no window of 64 tokens"):
        token_windows(Documents("tiny", ("a",), ("a few words",)), tokenizer, 64)


def test_rows_are_next_token_positions_sampled_per_window_by_the_seed(tokenizer):
    texts = docs_pages()
    windows = token_windows(Documents("docs", tuple(map(str, range(len(texts)))), tuple(texts)), tokenizer, 64)
    every = sample_positions(windows, [0, 3], None, seed=0)
    assert len(every) == 2 * 63 and every.position.max() == 62
    np.testing.assert_array_equal(every.target, windows.ids[every.window, every.position + 1])
    some = sample_positions(windows, [0, 3, 5], 8, seed=1)
    assert len(some) == 24 and all(np.all(np.diff(some.position[k * 8:(k + 1) * 8]) > 0) for k in range(3))
    # A window's rows depend on the seed and the window only, not on what else is selected.
    alone = sample_positions(windows, [3], 8, seed=1)
    np.testing.assert_array_equal(alone.position, some.position[8:16])
    assert not np.array_equal(sample_positions(windows, [3], 8, seed=2).position, alone.position)
    with pytest.raises(DataError, match="--positions 64: give 1 to 63"):
        sample_positions(windows, [0], 64, seed=0)
    assert math.isfinite(windows.bits_per_byte_per_nat)
