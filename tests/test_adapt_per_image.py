"""Per-image test-time remedies: ``bn-prior`` against hand-worked statistics and torch's own BatchNorm,
batch-free (a batch of B = B batches of one), restoration, refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_adapt import BASE, FakeSource, small_net
from torch import nn

from sdnet_cli.adapt import AdaptSpec, BatchNormPrior, Memo, make_adaptation
from sdnet_cli.data.cells import Cell
from sdnet_cli.errors import UsageError
from sdnet_cli.evaluate import evaluate_cells
from sdnet_cli.models import Classifier
from sdnet_cli.runtime import Runtime

CPU = Runtime.create("cpu")


def one_bn_layer() -> nn.BatchNorm2d:
    """One channel; stored mean 0.5, variance 2; affine weight 1.5, bias 0.1; eps 0."""
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    with torch.no_grad():
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(2.0)
        bn.weight.fill_(1.5)
        bn.bias.fill_(0.1)
    return bn


def test_bn_prior_mixes_the_statistics_in_closed_form() -> None:
    # One image of two pixels, 0.2 and 0.6: its mean 0.4, biased variance 0.04. N = 3 -> weights 3/4, 1/4:
    # mean 0.75 * 0.5 + 0.25 * 0.4 = 0.475, variance 0.75 * 2 + 0.25 * 0.04 = 1.51.
    # Output 1.5 * (x - 0.475) / sqrt(1.51) + 0.1: x = 0.2 -> -0.2356877, x = 0.6 -> 0.2525853
    bn = one_bn_layer()
    x = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2)
    expected = torch.tensor([1.5 * (-0.275) / 1.51**0.5 + 0.1, 1.5 * 0.125 / 1.51**0.5 + 0.1]).view(1, 1, 1, 2)
    assert abs(expected[0, 0, 0, 0] + 0.2356877) < 1e-6 and abs(expected[0, 0, 0, 1] - 0.2525853) < 1e-6
    with torch.no_grad(), BatchNormPrior(prior_strength=3).cell(bn) as forward:
        torch.testing.assert_close(forward(x), expected, rtol=0, atol=1e-6)
    with torch.no_grad():  # restored: the stored statistics again, (x - 0.5) / sqrt(2) * 1.5 + 0.1
        stored = torch.tensor([1.5 * -0.3 / 2**0.5 + 0.1, 1.5 * 0.1 / 2**0.5 + 0.1]).view(1, 1, 1, 2)
        torch.testing.assert_close(bn(x), stored, rtol=0, atol=1e-6)
    assert "forward" not in vars(bn)


def test_bn_prior_extremes_match_torch_batchnorm() -> None:
    """N = 0: each image normalised by its own statistics (torch's train-mode BatchNorm on a batch of one);
    a huge N: the stored statistics (eval mode)."""
    model = small_net()
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    own = copy.deepcopy(model)
    for m in own.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    with torch.no_grad():
        reference = torch.cat([own(x[i : i + 1]) for i in range(5)])
        with BatchNormPrior(prior_strength=0).cell(model) as forward:
            torch.testing.assert_close(forward(x), reference, rtol=1e-4, atol=1e-5)
        with BatchNormPrior(prior_strength=1e6).cell(model) as forward:
            torch.testing.assert_close(forward(x), model(x), rtol=1e-4, atol=1e-4)


def test_bn_prior_is_batch_free_and_keeps_no_state() -> None:
    model = small_net()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), BatchNormPrior().cell(model) as forward:
        together = forward(x)
        alone = torch.cat([forward(x[i : i + 1]) for i in range(6)])
        again = forward(x[:2])  # after other images: the same answer
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, together[:2], rtol=0, atol=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # evaluate_cells: batch size 6 or 1 count the same and the rows say what the method relied on
    images = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    source = FakeSource({Cell("clean", 0): (images, np.arange(6) % 10)})
    rows = [
        evaluate_cells(model, [Cell("clean", 0)], source, CPU, BASE, adapt=make_adaptation("bn-prior", b))[0]
        for b in (6, 1)
    ]
    assert rows[0]["correct"] == rows[1]["correct"]
    assert rows[0]["adapt"] == "bn-prior" and rows[0]["uses_test_batches"] is False
    assert (rows[0]["images_per_decision"], rows[0]["gradient_steps"], rows[0]["prior_strength"]) == (1, 0, 16.0)


def test_bn_prior_refusals() -> None:
    with pytest.raises(UsageError, match="prior_strength"):
        AdaptSpec("bn-prior", prior_strength=-1)
    with pytest.raises(UsageError, match="prior_strength"):
        AdaptSpec("bn-prior", prior_strength=float("nan"))
    with pytest.raises(UsageError, match="applies to adapt='bn-prior'"):
        AdaptSpec("bn", prior_strength=4)
    no_stats = Classifier(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)), [0.0] * 3, [1.0] * 3)
    with pytest.raises(UsageError, match="stored statistics"), BatchNormPrior().cell(no_stats):
        pass


def test_cli_eval_bn_prior(tiny_checkpoint, data_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    args = ["eval", "--model", "sdnet18", "--checkpoint", str(tiny_checkpoint), "-c", "gaussian_noise", "-s", "5"]
    args += ["-n", "12", "--batch-size", "5", "--lam", "0.2", "--data-dir", str(data_dir)]
    args += ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--adapt", "bn-prior", "--prior-strength", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval-sdnet18.json").read_text())
    assert all(r["adapt"] == "bn-prior" and r["prior_strength"] == 8.0 for r in report["rows"])
    assert report["meta"]["adaptation"]["prior_strength"] == 8.0
    refused = CliRunner().invoke(app, [*args, "--adapt", "bn", "--prior-strength", "8"])
    assert refused.exit_code == 2 and "prior" in refused.output
    result = CliRunner().invoke(app, [*args[:10], "2", *args[11:], "--adapt", "memo", "--name", "memo"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "memo.json").read_text())
    assert report["rows"][0]["n"] == 2 and report["rows"][0]["gradient_steps"] == 1
    assert report["meta"]["adaptation"]["copies"] == 32 and report["meta"]["adaptation"]["lr"] == 0.005
    memo = ["--adapt", "memo", "--memo-copies", "3", "--memo-lr", "0.01", "--name", "memo3"]
    result = CliRunner().invoke(app, [*args[:10], "1", *args[11:], *memo])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "memo3.json").read_text())
    assert report["meta"]["adaptation"]["copies"] == 3 and report["meta"]["adaptation"]["lr"] == 0.01
    for bad, flag in ((["--memo-copies", "257"], "--memo-copies"), (["--memo-lr", "0"], "--memo-lr")):
        refused = CliRunner().invoke(app, [*args, "--adapt", "memo", *bad])
        assert refused.exit_code == 2 and flag in refused.output and len(refused.output.strip().splitlines()) == 1
    refused = CliRunner().invoke(app, [*args, "--adapt", "tent", "--memo-copies", "4"])
    assert refused.exit_code == 2 and "--memo-copies" in refused.output


def linear_model(seed: int = 0) -> Classifier:
    """logits = W x + b on the flattened [0, 1] image (normalisation is the identity)."""
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 5)), mean=[0.0] * 3, std=[1.0] * 3).eval()


def quantised(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 6, 6), generator=g).float() / 255


def test_memo_takes_one_sgd_step_on_the_marginal_entropy_worked_in_float64() -> None:

    from sdnet_cli.adapt.augment import augmented_copies
    from sdnet_cli.adapt.memo import image_seed

    model = linear_model()
    x = quantised(1, 5)
    memo = Memo(copies=4, lr=0.5, seed=7)
    copies = augmented_copies(x[0], 4, np.random.default_rng(image_seed(7, x[0])))
    W = model.network[1].weight.detach().double().numpy()
    b = model.network[1].bias.detach().double().numpy()
    c = copies.double().reshape(4, -1).numpy()
    z = c @ W.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    log_mean = np.log(p.mean(axis=0))
    # H = -sum_j pbar_j log pbar_j; dH/dz_kj = (1/B) p_kj (-log pbar_j + sum_i p_ki log pbar_i)
    g = p * (-log_mean[None, :] + (p * log_mean[None, :]).sum(axis=1, keepdims=True)) / 4
    W1, b1 = W - 0.5 * g.T @ c, b - 0.5 * g.sum(axis=0)
    expected = x.double().reshape(1, -1).numpy() @ W1.T + b1
    with torch.no_grad(), memo.cell(model) as forward:
        got = forward(x)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=1e-5)
    assert np.abs(expected - (x.double().reshape(1, -1).numpy() @ W.T + b)).max() > 1e-3  # the step mattered


def test_memo_resets_between_images_and_after_the_cell() -> None:

    model = linear_model(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = quantised(3, 6)
    memo = Memo(copies=3, lr=0.5, seed=1)
    with torch.no_grad(), memo.cell(model) as forward:
        together = forward(x)
        last_alone = forward(x[2:])
        first_again = forward(x[:1])
    torch.testing.assert_close(last_alone, together[2:], rtol=0, atol=0)  # nothing carried from images 0 and 1
    torch.testing.assert_close(first_again, together[:1], rtol=0, atol=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with torch.no_grad(), Memo(copies=3, lr=0.5, seed=2).cell(model) as forward:
        assert not torch.equal(forward(x), together)  # the seed draws other copies


def test_memo_notes_the_lambda_of_the_original_image_only() -> None:

    class PerInput:
        name = "per-input"

        def __call__(self, model: Classifier, xn: torch.Tensor) -> torch.Tensor:
            return 0.05 + 0.1 * xn.mean(dim=(1, 2, 3)).abs()

    model = small_net()
    x = quantised(3, 8)
    images = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    source = FakeSource({Cell("clean", 0): (images, np.zeros(3, dtype=np.int64))})
    with model.using(PerInput()):
        row = evaluate_cells(model, [Cell("clean", 0)], source, CPU, BASE, adapt=Memo(batch_size=2, copies=2))[0]
    expected = PerInput()(model, model.normalize(CPU.to_input(images))).numpy()
    assert row["lam_mean"] == round(float(expected.mean()), 4)
    assert (row["adapt"], row["images_per_decision"], row["gradient_steps"]) == ("memo", 1, 1)
    assert "B=2" in row["adapt_settings"] and "lr 0.005" in row["adapt_settings"]


def test_memo_augmentations_leave_out_the_benchmark_corruptions() -> None:
    from sdnet_cli.adapt.augment import OPERATIONS, augmented_copies
    from sdnet_cli.data.corruptions import ALL_CORRUPTIONS

    resembling = {"contrast", "color", "brightness", "sharpness"}  # AugMix's own list of overlapping operations
    assert not set(OPERATIONS) & (set(ALL_CORRUPTIONS) | resembling)
    x = quantised(1, 9)[0]
    a = augmented_copies(x, 5, np.random.default_rng(3))
    assert a.shape == (5, 3, 6, 6) and float(a.min()) >= 0 and float(a.max()) <= 1
    torch.testing.assert_close(a, augmented_copies(x, 5, np.random.default_rng(3)), rtol=0, atol=0)
    assert len({tuple(v.flatten().tolist()) for v in a}) == 5
    with pytest.raises(UsageError, match="memo_copies"):
        from sdnet_cli.adapt import Memo

        Memo(copies=0)


def test_adapt_spec_settings_reach_their_method() -> None:
    memo = make_adaptation(AdaptSpec("memo", memo_copies=5, memo_lr=0.1), 3, seed=4)
    assert isinstance(memo, Memo) and (memo.copies, memo.lr, memo.seed, memo.batch_size) == (5, 0.1, 4, 3)
    default = make_adaptation("memo")
    assert isinstance(default, Memo) and (default.copies, default.lr) == (32, 0.005)  # MEMO's CIFAR-10 code
    prior = make_adaptation(AdaptSpec("bn-prior", prior_strength=2))
    assert isinstance(prior, BatchNormPrior) and prior.prior_strength == 2.0
    for bad in ({"memo_copies": 0}, {"memo_copies": 257}, {"memo_copies": True}, {"memo_lr": float("inf")}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            AdaptSpec("memo", **bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="applies to adapt='memo'"):
        AdaptSpec("bn-prior", memo_lr=0.1)
    with pytest.raises(UsageError, match="unknown adapt"):
        AdaptSpec("memo2")  # type: ignore[arg-type]
