"""`--weights pretrained` for the models trained here: the committed checkpoints under results/checkpoints (found
through resources.results_root(), in a checkout or an installed wheel), checked against the sha256 of their training
records before they are read; a checkpoint not trained yet says how to train it."""

from __future__ import annotations

import json

import pytest
import torch

from vision_lens import resources
from vision_lens.adapters import WeightsError, architectures, create_adapter
from vision_lens.adapters.loading import file_sha256

from .conftest import findings_runs

TRAINED_HERE = [a for a in architectures() if a.weights.kind == "file"]


@pytest.mark.results
@pytest.mark.parametrize("architecture", [a for a in TRAINED_HERE if a.weights.path().is_file()],
                         ids=lambda a: a.name)
def test_a_committed_checkpoint_loads_by_name_as_its_file_does(architecture):
    entry = architecture.weights
    assert entry.record()["sha256"] == file_sha256(entry.path())  # the record describes the committed file
    pretrained = create_adapter(architecture.name)
    from_file = create_adapter(architecture.name, weights=str(entry.path()))
    assert pretrained.weights_id == from_file.weights_id == entry.record()["sha256"]  # so they share caches
    assert pretrained.input_size == (32, 32)  # weights known to take CIFAR-10's images
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(pretrained.logits(x), from_file.logits(x))


@pytest.mark.unit
def test_the_models_trained_here_are_registered():
    assert {a.name for a in TRAINED_HERE} == {"cifar:vit", "cifar:preact_resnet20", "cifar:inceptionv1",
                                               "cifar:plain20"}


@pytest.fixture
def results_root(monkeypatch, tmp_path):
    """An empty results folder in place of the checkout's."""
    monkeypatch.setattr(resources, "results_root", lambda: tmp_path)
    return tmp_path


@pytest.mark.unit
def test_a_checkpoint_not_trained_yet_says_how_to_train_it(results_root):
    with pytest.raises(WeightsError, match=r"--model cifar:plain20 --weights pretrained: its checkpoint trained here "
                                           r"\(results/checkpoints/cifar10-plain20.th\) is not available yet") as info:
        create_adapter("cifar:plain20")
    assert "python scripts/train_cifar.py --arch plain20" in str(info.value) and "--weights random" in str(info.value)


def save_with_record(results_root, architecture: str, file: str, **record) -> dict:
    """A random-init checkpoint of ``architecture`` where the registration looks, as scripts/train_cifar.py saves it,
    with its record beside it."""
    path = results_root / "checkpoints" / file
    path.parent.mkdir(parents=True)
    model = create_adapter(architecture, weights="random", seed=4).model
    torch.save({"state_dict": model.state_dict(), "test_acc": 0.5}, path)
    record = {"sha256": file_sha256(path), "test_acc": 0.5} | record
    path.with_suffix(".json").write_text(json.dumps(record))
    return record


@pytest.mark.unit
def test_a_checkpoint_that_lands_later_loads_by_name(results_root):
    record = save_with_record(results_root, "cifar:plain20", "cifar10-plain20.th")
    adapter = create_adapter("cifar:plain20")
    assert adapter.weights_id == record["sha256"] and adapter.input_size == (32, 32)
    expected = create_adapter("cifar:plain20", weights="random", seed=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(adapter.logits(x), expected.logits(x))


@pytest.mark.unit
def test_a_checkpoint_that_differs_from_its_record_is_refused_before_it_is_read(results_root, monkeypatch):
    save_with_record(results_root, "cifar:plain20", "cifar10-plain20.th", sha256="0" * 64)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("read a file whose sha256 differs"))
    with pytest.raises(WeightsError, match="says 0{64}: the file is damaged or was replaced without its record"):
        create_adapter("cifar:plain20")


@pytest.mark.unit
def test_a_checkpoint_without_its_record_is_refused(results_root):
    save_with_record(results_root, "cifar:plain20", "cifar10-plain20.th")
    (results_root / "checkpoints" / "cifar10-plain20.json").unlink()
    with pytest.raises(WeightsError, match="has no training record with its sha256"):
        create_adapter("cifar:plain20")


@pytest.mark.results
def test_published_accuracies_are_what_the_committed_runs_measure():
    """The akamaster checkpoints' stated accuracies (their README's errors) against our own runs of them on all
    10,000 test images."""
    published = {a.name: a.weights for a in architectures() if a.weights.kind == "url"}
    checked = set()
    for run in (r for r in findings_runs() if (r / "run.json").is_file()):  # every fit of a model, random twins too
        info = json.loads((run / "run.json").read_text())
        weights = published.get(info["model"])
        if weights is not None and info.get("weights_sha256", "").startswith(weights.sha256()):
            aggregate = json.loads((run / "aggregate_metrics.json").read_text())
            assert aggregate["baseline"]["acc"]["final"] == pytest.approx(weights.accuracy, abs=1e-9), run.name
            checked.add(info["model"])
    assert len(checked) >= 3  # ResNet-20, -32 and -44
