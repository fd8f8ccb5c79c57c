"""--recipe tuned-lens: the translators fitted as `tuned-lens train` fits them, step for step."""

from __future__ import annotations

import json

import pytest
import torch

from vision_lens.fit import TunedLensRecipe


def _toy_problem(seed: int):
    """A linear translator on raw inputs whose gradients are large enough that the clip at 1.0 acts."""
    gen = torch.Generator().manual_seed(seed)
    x, target = torch.randn(64, 8, generator=gen) * 5, torch.randn(64, 3, generator=gen)
    translator = torch.nn.Linear(8, 3)
    torch.nn.init.zeros_(translator.weight)
    torch.nn.init.zeros_(translator.bias)
    return translator, lambda step: ((translator(x[step % 4::4]) - target[step % 4::4]) ** 2).sum()


@pytest.mark.unit
def test_parameters_agree_step_for_step_with_tuned_lens_own_optimizer_and_scheduler():
    ingredients = pytest.importorskip("tuned_lens.scripts.ingredients", reason="tuned-lens is a test extra")
    ours, ours_loss = _toy_problem(0)
    trajectory = []

    def loss_at(step):
        trajectory.append([p.detach().clone() for p in ours.parameters()])
        return ours_loss(step)

    TunedLensRecipe().run(list(ours.parameters()), loss_at)
    trajectory.append([p.detach().clone() for p in ours.parameters()])

    # tuned-lens 0.2.0: its Optimizer ingredient's defaults, and train_loop.py's step.
    theirs, theirs_loss = _toy_problem(0)
    params = list(theirs.parameters())
    config = ingredients.Optimizer()
    optimizer = config.create_optim(params)
    scheduler = config.create_scheduler(optimizer, 250)
    clipped = 0
    for step in range(250):
        for a, b in zip(trajectory[step], theirs.parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=f"step {step}")
        theirs_loss(step).backward()
        clipped += float(torch.nn.utils.clip_grad_norm_(params, 1.0)) > 1.0
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        scheduler.step()
    for a, b in zip(trajectory[-1], theirs.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert clipped > 50  # the clip was exercised, not only the plain SGD step
    assert optimizer.param_groups[0]["lr"] == 0.0  # decayed linearly to zero over the 250 steps
    assert not torch.equal(trajectory[-1][0], trajectory[0][0])


@pytest.mark.integration
def test_a_run_under_the_recipe_records_it_and_keeps_the_probe_optimal(tmp_path, tiny_data):
    from vision_lens.cli import main

    out = tmp_path / "run"
    code = main(["run", "--model", "cifar:resnet8", "--weights", "random", "--data", str(tiny_data), "--out",
                 str(out), "--workers", "0", "--max-iter", "5", "--recipe", "tuned-lens"])
    assert code == 0
    fits = json.loads((out / "train.json").read_text())["fit"]
    for lens_type in ("tuned", "shared"):
        assert fits[lens_type]["recipe"] == "tuned-lens" and fits[lens_type]["steps"] == 250
        assert fits[lens_type]["images_per_step"] == 1024 and fits[lens_type]["standardised_inputs"] is False
        config = json.loads((out / "lenses" / lens_type / "config.json").read_text())
        assert config["fit"]["recipe"] == "tuned-lens"
    assert fits["linear_probe"]["recipe"] == "optimum"
    params = torch.load(out / "lenses" / "tuned" / "params.pt", weights_only=True)
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in params.items() if k.endswith("mean"))
    assert any(v.abs().sum() > 0 for k, v in params.items() if k.endswith("linear.weight"))
