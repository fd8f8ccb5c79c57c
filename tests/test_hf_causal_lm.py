"""Causal language models (``hf:``) through the pipeline: tiny random GPT-2, GPT-NeoX and Llama configs built here,
saved with ``save_pretrained`` and read back by name, with text written here (this repository's docs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_lens import analysis, resources
from vision_lens.adapters import create_adapter
from vision_lens.adapters.zoo import TransformersTask
from vision_lens.capture import TokenRecorder
from vision_lens.errors import OptionError
from vision_lens.lenses import build_lenses
from vision_lens.metrics import resampled_means
from vision_lens.readout import FeatureLayout

from .conftest import load_script

REPO = Path(__file__).resolve().parents[1]
VOCAB, CONTEXT = 300, 64


def tokenizer():
    """A byte-level BPE tokenizer of 300 tokens trained on this repository's README (real English, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([(REPO / "README.md").read_text()], trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", model_max_length=CONTEXT)


def tiny_config(layout: str):
    """A random config of ``layout`` (2 layers, width 32, 300 tokens, context 64)."""
    import transformers

    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    if layout == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=CONTEXT, **common)
    if layout == "gpt_neox":
        return transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=CONTEXT, **common)
    return transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                    intermediate_size=64, max_position_embeddings=CONTEXT, **common)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Each layout's tiny model with the tokenizer, saved as ``save_pretrained`` saves it."""
    import transformers

    root, tok = tmp_path_factory.mktemp("hf-models"), tokenizer()
    folders = {}
    for layout in ("gpt2", "gpt_neox", "llama"):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(tiny_config(layout))
        folders[layout] = root / layout
        model.save_pretrained(folders[layout])
        tok.save_pretrained(folders[layout])
    return folders


def write_text(root: Path, copies: int = 1) -> Path:
    """Two splits of whole documents (the docs' paragraphs, alternately; ``copies`` times each)."""
    paragraphs = [p for page in sorted((REPO / "docs").glob("*.md")) for p in page.read_text().split("\n\n")
                  if len(p) > 200]
    root.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", paragraphs[::2] * copies), ("test", paragraphs[1::2])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    return root


@pytest.mark.unit
@pytest.mark.parametrize("layout", ["gpt2", "gpt_neox", "llama"])
def test_the_last_blocks_logit_lens_is_the_models_logits_exactly(models, layout):
    adapter = create_adapter(f"hf:{models[layout]}")
    assert [b.name for b in adapter.blocks][0] == "embed" and len(adapter.blocks) == 3
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), TokenRecorder(adapter) as recorder:
        recorder.select(torch.arange(2).repeat_interleave(16), torch.arange(16).repeat(2))
        logits = adapter.logits(ids).flatten(0, 1)
        hidden = adapter.model(input_ids=ids, output_hidden_states=True).hidden_states
    lens = build_lenses(adapter, FeatureLayout.of(adapter.blocks, 1), ["logit"])["logit"]
    with torch.no_grad():
        assert torch.equal(lens(recorder.rows[-1], 2), logits)
    assert torch.equal(recorder.rows[0], hidden[0].flatten(0, 1))  # layer_0 is tuned-lens's: the embedding output
    assert torch.equal(recorder.rows[1], hidden[1].flatten(0, 1))


@pytest.mark.unit
def test_a_checkpoint_saved_in_float16_is_read_in_float32_with_its_weights(models, tmp_path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(models["gpt2"])
    model.half().save_pretrained(tmp_path / "half")  # as scripts/train_reference_lm.py export commits the LM
    adapter = create_adapter(f"hf:{tmp_path / 'half'}")
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(2))
    assert {p.dtype for p in adapter.model.parameters()} == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(ids), model.float()(input_ids=ids).logits)  # the half weights


@pytest.mark.unit
def test_a_results_folder_that_is_not_here_is_read_from_the_committed_results(models, tmp_path, monkeypatch):
    """A committed run records the reference LM as hf:results/checkpoints/lm-reference; from an installed wheel (its
    committed results are the package's references) or another working folder it must load all the same, and a
    folder of that name in the working folder comes first."""
    import shutil

    root = tmp_path / "installed-results"
    shutil.copytree(models["gpt2"], root / "checkpoints" / "tiny")
    monkeypatch.setattr(resources, "results_root", lambda: root)
    monkeypatch.chdir(tmp_path)
    adapter, direct = create_adapter("hf:results/checkpoints/tiny"), create_adapter(f"hf:{models['gpt2']}")
    assert adapter.name == "hf:results/checkpoints/tiny" and adapter.weights_id == direct.weights_id
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(ids), direct.logits(ids))
    assert len(adapter.load_tokenizer()("a lens")["input_ids"]) > 0
    shutil.copytree(models["llama"], tmp_path / "results" / "checkpoints" / "tiny")
    assert create_adapter("hf:results/checkpoints/tiny").weights_id == create_adapter(f"hf:{models['llama']}").weights_id


@pytest.mark.unit
def test_transformers_task_takes_causal_lm_folders_and_refuses_anything_else_without_raising(models, tmp_path):
    causal = TransformersTask("causal-lm")
    assert all(causal(str(folder)) for folder in models.values())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "config.json").write_text(json.dumps({"architectures": ["ViTForImageClassification"]}))
    for other in (tmp_path / "missing", tmp_path / "broken", tmp_path / "classifier", tmp_path):
        assert not causal(str(other))
    assert TransformersTask("image-classification")(str(tmp_path / "classifier"))


@pytest.mark.unit
def test_the_bootstrap_resamples_whole_windows():
    """Rows of one window are drawn together: a window whose rows all agree gives the spread of windows, not of
    tokens (a per-token bootstrap would shrink it by the square root of the rows per window)."""
    windows = np.repeat(np.arange(40), 50)
    values = np.repeat(np.random.default_rng(0).normal(size=40), 50)[:, None]
    by_window = resampled_means(values, 500, 0, groups=windows)[:, 0].std()
    by_token = resampled_means(values, 500, 0)[:, 0].std()
    assert by_window == pytest.approx(values[::50, 0].std() / np.sqrt(40), rel=0.2)
    assert by_window > 4 * by_token


@pytest.fixture(scope="module")
def gpt2_run(models, tmp_path_factory) -> Path:
    """A whole run of the tiny GPT-2: every lens kind, default fit."""
    from vision_lens.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("hf-run")
    return run_pipeline(model=f"hf:{models['gpt2']}", data=str(write_text(root / "text")), out=str(root / "run"),
                        cache_dir=str(root / "cache"), positions=8, fit_limit=40, eval_limit=30, max_iter=15).path


@pytest.mark.integration
def test_a_language_model_run_has_every_lens_fit_and_interval_an_image_run_has(gpt2_run):
    aggregate = json.loads((gpt2_run / "aggregate_metrics.json").read_text())
    intervals = json.loads((gpt2_run / "aggregate_metrics_ci.json").read_text())
    run = json.loads((gpt2_run / "run.json").read_text())
    assert set(aggregate) == {"logit", "tuned", "shared", "linear_probe", "baseline"}
    layers = [f"layer_{k}" for k in range(3)]
    for kind in ("logit", "tuned", "shared", "linear_probe"):
        assert list(aggregate[kind]["ce"]) == layers and all(v is not None for v in aggregate[kind]["ce"].values())
        assert all(intervals[kind]["ce"][layer] is not None for layer in layers)
    assert intervals["tuned"]["layer_transfer"]["penalty"]["layer_0"]["layer_2"] is not None
    assert all((gpt2_run / "lenses" / kind / "params.pt").is_file() for kind in ("tuned", "shared", "linear_probe"))
    # The tuned lens at the last block is at least as good as the logit lens there (exact model output).
    assert aggregate["tuned"]["kl"]["layer_2"] <= aggregate["logit"]["kl"]["layer_1"]
    assert aggregate["logit"]["kl"]["layer_2"] == pytest.approx(0, abs=1e-6)
    units = run["units"]
    assert units["ce"] == "bits per token" and units["positions"] == run["eval_images"] == 30 * 8
    assert 0 < units["bits_per_byte_per_bit"] < 1
    (results,) = analysis.as_results([gpt2_run])  # the findings' tables say the unit, and leave out the embedding
    assert analysis.reported_unit(results) == "bits per token" and analysis.past_embedding(results).tolist() == [1, 2]
    fit = json.loads((gpt2_run / "lenses" / "tuned" / "config.json").read_text())["fit"]
    assert fit["recipe"] == "optimum" and fit["images"] == 40 * 8
    assert all(record["weight_decay"] for record in fit["blocks"].values())


@pytest.mark.integration
def test_eval_frontier_and_compare_read_a_language_model_run(gpt2_run, models, tmp_path):
    from vision_lens.cli import main

    data = gpt2_run.parent / "text"
    common = ["--model", f"hf:{models['gpt2']}", "--data", str(data), "--cache-dir", str(gpt2_run.parent / "cache"),
              "--positions", "8", "--eval-limit", "30"]
    main(["eval", *common, "--lens", str(gpt2_run), "--out", str(tmp_path / "eval")])
    again = json.loads((tmp_path / "eval" / "aggregate_metrics.json").read_text())
    first = json.loads((gpt2_run / "aggregate_metrics.json").read_text())
    assert again["tuned"]["ce"] == pytest.approx(first["tuned"]["ce"], rel=1e-6)
    main(["frontier", str(gpt2_run), "--strengths", "1e-2", "1e-4"])
    assert (gpt2_run / "frontier.json").is_file()
    main(["compare", str(gpt2_run), str(tmp_path / "eval"), "--out", str(tmp_path / "compare.png")])
    assert (tmp_path / "compare.png").is_file()


@pytest.mark.integration
def test_image_options_and_text_options_are_refused_where_they_do_not_apply(models, tmp_path, tiny_data):
    from vision_lens.pipeline import run_pipeline

    with pytest.raises(OptionError, match="--pool-grid 2"):
        run_pipeline(model=f"hf:{models['gpt2']}", data=str(write_text(tmp_path / "text")), out=str(tmp_path / "a"),
                     pool_grid=2)
    with pytest.raises(OptionError, match="--positions: for language models"):
        run_pipeline(model="cifar:resnet8", weights="random", data=str(tiny_data), out=str(tmp_path / "b"),
                     positions=4)


# Per-layer CE of --recipe tuned-lens here and of `tuned-lens train` + `eval` on the same tokens agree within this
# fraction (both are 250 SGD steps from zero on different draws of the same tokens; they agreed within 1e-5, against a
# tuned lens 3 % below the logit lens at layer_0); the logit lens, which nothing fits, within LOGIT_TOLERANCE.
RECIPE_TOLERANCE = 0.002
LOGIT_TOLERANCE = 1e-4


@pytest.mark.unit
def test_the_benchmarks_token_files_make_exactly_the_windows_asked_for_from_a_prefix_of_the_split(tmp_path):
    bench = load_script("benchmark_tuned_lens")
    source = write_text(tmp_path / "text") / "train.jsonl"
    texts = [json.loads(line)["text"] for line in source.read_text().splitlines()]
    for windows in (3, 7):
        out = tmp_path / f"cut{windows}.jsonl"
        assert bench.cut_split(source, out, windows, tokenizer(), CONTEXT) == windows
        cut = [json.loads(line)["text"] for line in out.read_text().splitlines()]
        assert cut[:-1] == texts[:len(cut) - 1] and texts[len(cut) - 1].startswith(cut[-1])
        assert bench.windows_of([*cut[:-1], cut[-1][:-1]], tokenizer(), CONTEXT) < windows  # the shortest prefix
    with pytest.raises(SystemExit, match="fewer than the 100000 asked for"):
        bench.cut_split(source, tmp_path / "too-many.jsonl", 100_000, tokenizer(), CONTEXT)


@pytest.mark.integration
def test_the_tuned_lens_benchmark_times_both_tools_on_the_same_tokens_and_their_recipes_agree(tmp_path):
    """scripts/benchmark_tuned_lens.py end to end: `tuned-lens train` + `eval` against the pipeline's recipe and
    default fit on the same tokens, its JSON, and the parity of the two recipes' per-layer CE."""
    import transformers

    bench = load_script("benchmark_tuned_lens")
    torch.manual_seed(0)
    # A random GPT-2 whose layers change the prediction (a wide init), so that the lenses have something to learn.
    config = tiny_config("gpt2")
    config.initializer_range = 0.2
    folder = tmp_path / "model"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    text = write_text(tmp_path / "text", copies=6)  # enough windows for every step of the recipe
    (text / "test.jsonl").rename(text / "validation.jsonl")
    out = tmp_path / "bench.json"
    bench.main(["--model", str(folder), "--data", str(text), "--work", str(tmp_path / "work"), "--out", str(out),
                "--recipe-run", str(tmp_path / "recipe"), "--default-run", str(tmp_path / "default"),
                "--eval-windows", "16", "--default-fit-windows", "4", "--threads", "1"])
    result = json.loads(out.read_text())
    assert result["tokens"] | {"fit_windows": 250 * 1024 // CONTEXT, "eval_windows": 16} == result["tokens"]
    layers = result["summary"]["layers"]
    assert layers == ["layer_0", "layer_1"]  # tuned-lens lenses every layer but the last, the model's output
    ce = result["ce_bits_per_byte"]
    for layer in layers:
        assert ce["pipeline_recipe"]["logit"][layer] == pytest.approx(ce["tuned_lens"]["logit"][layer],
                                                                      rel=LOGIT_TOLERANCE)
        assert ce["pipeline_recipe"]["tuned"][layer] == pytest.approx(ce["tuned_lens"]["tuned"][layer],
                                                                      rel=RECIPE_TOLERANCE)
        assert ce["pipeline_default"]["logit"][layer] == ce["pipeline_recipe"]["logit"][layer]  # one eval split
    assert abs(ce["tuned_lens"]["tuned"]["layer_0"] / ce["tuned_lens"]["logit"]["layer_0"] - 1) > 0.01  # it moved
    assert result["summary"]["recipe_max_relative_ce_difference"] <= RECIPE_TOLERANCE
    for fit in ("pipeline_recipe", "pipeline_default"):
        assert 0 < result[fit]["train_s"] < result[fit]["wall_s"] and result[fit]["stages_s"]["capture_fit"] > 0
    assert result["tuned_lens"]["train_wall_s"] > 0 and result["summary"]["recipe_speed_ratio"] > 0
    table = bench.summary_table(result).splitlines()  # as docs/language-models.md shows it
    assert len(table) == 5 and table[2].startswith("| `tuned-lens train` | 256,000 |")


@pytest.mark.unit
def test_the_benchmark_refuses_a_work_folder_it_did_not_write_and_leaves_it_as_it_was(models, tmp_path):
    bench = load_script("benchmark_tuned_lens")
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    text = write_text(tmp_path / "text")
    (text / "test.jsonl").rename(text / "validation.jsonl")
    with pytest.raises(SystemExit, match=f"--work {work} holds files this script did not write"):
        bench.main(["--model", str(models["gpt2"]), "--data", str(text), "--work", str(work),
                    "--out", str(tmp_path / "bench.json")])
    assert (work / "notes.txt").read_text() == "mine" and not (tmp_path / "bench.json").exists()
