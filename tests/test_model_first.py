"""Model first: any ``torch.nn.Module`` (or a model loaded once) goes through the API, with answers known by
construction; the session's shared rules (torchrun, lambda on a model without CSC layers) hold for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from sdnet_cli import api
from sdnet_cli.attacks.config import BATCH_SIZE
from sdnet_cli.cli import app
from sdnet_cli.errors import UsageError
from sdnet_cli.models import state_dict_sha256


class Constant(nn.Module):
    """Always answers class ``k``: its accuracy on any images is the share of class ``k`` among their labels."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(10))
        with torch.no_grad():
            self.logits[k] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits + 0.0 * x.flatten(1)[:, :1]  # touches x, so attacks can take (zero) gradients


class NearestImage(nn.Module):
    """Logit of class c = minus the L2 distance to the nearest stored image of class c (-1e4 if none)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", images.flatten(1))
        self.register_buffer("labels", labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(x.flatten(1).float(), self.images)
        far = 1e4  # classes with no stored image
        return torch.stack([-distances.masked_fill(self.labels != c, far).min(1).values for c in range(10)], dim=1)


def as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.mark.slow
def test_constant_module_scores_the_share_of_its_class(cifar_test, data_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    labels = cifar_test[1][:50]
    k = int(np.bincount(labels, minlength=10).argmax())
    share = 100.0 * int((labels == k).sum()) / 50
    report = api.evaluate_corruptions(
        model=Constant(k),
        data=api.DataSpec(n_examples=50, data_dir=data_dir, cache_dir=tmp_path),
        run=api.RunSpec(device="cpu"),
        corruptions=["gaussian_noise"],
        severities=[1],
    )
    cells = [(r["corruption"], r["severity"]) for r in report.rows]
    assert cells == [("clean", 0), ("gaussian_noise", 1), ("mean", "all")]
    assert [r["accuracy"] for r in report.rows] == [pytest.approx(share)] * 3
    assert report.meta["model"]["name"] == "Constant" and report.meta["model"]["checkpoint"] is None
    assert report.meta["checkpoint_sha256"] == state_dict_sha256(Constant(k))
    sixteen = api.DataSpec(n_examples=16, data_dir=data_dir)
    attacked = api.attack(model=Constant(k), data=sixteen, attack="pgd", eps=["1/255"], steps=2)
    share16 = 100.0 * int((cifar_test[1][:16] == k).sum()) / 16
    assert [r["robust_accuracy"] for r in attacked.rows] == [pytest.approx(share16)]  # nothing moves a constant
    assert attacked.meta["batch_size"] == BATCH_SIZE


@pytest.mark.slow
def test_nearest_image_module_is_right_and_cannot_be_moved_within_eps(cifar_test, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    images, labels = cifar_test[0][:16], cifar_test[1][:16]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = as_input(images)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    module = NearestImage(normalised, torch.from_numpy(labels))
    # an Linf step of 1/255 moves a normalised image by at most this much in L2; half the closest gap between
    # stored images of different classes is more, so the nearest image (and the class) cannot change
    reach = float(torch.linalg.vector_norm(torch.full((3, 32, 32), 1 / 255) / torch.tensor(std).view(3, 1, 1)))
    gaps = torch.cdist(normalised.flatten(1), normalised.flatten(1))
    other = torch.from_numpy(labels[:, None] != labels[None, :])
    assert gaps[other].min() > 2 * reach
    report = api.attack(
        model=api.ModelSpec(module, normalize=(mean, std)),
        data=api.DataSpec(n_examples=16, data_dir=data_dir),
        attack="pgd",
        eps=["1/255"],
        steps=2,
    )
    row = report.rows[0]
    assert (row["clean_accuracy"], row["robust_accuracy"]) == (100.0, 100.0)
    assert report.meta["model"]["name"] == "NearestImage"


@pytest.mark.slow
def test_a_model_loaded_once_gives_what_its_name_gives(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    named = api.ModelSpec("sdnet18", checkpoint=tiny_checkpoint)
    loaded = api.load_model(named)
    data, run = api.DataSpec(n_examples=16, data_dir=data_dir), api.RunSpec(device="cpu")
    by_object = api.evaluate_corruptions(model=loaded, data=data, run=run, corruptions=["none"], lam=0.2)
    by_name = api.evaluate_corruptions(model=named, data=data, run=run, corruptions=["none"], lam=0.2)
    timeless = [
        [{k: v for k, v in r.items() if k != "seconds"} for r in report.rows] for report in (by_object, by_name)
    ]
    assert timeless[0] == timeless[1] and by_object.meta["model"] == by_name.meta["model"]
    with pytest.raises(UsageError) as caught:
        api.evaluate_corruptions(model=api.ModelSpec(loaded, checkpoint=tiny_checkpoint), data=data)
    assert caught.value.parameter == "checkpoint"
    with pytest.raises(UsageError) as caught:
        api.evaluate_corruptions(model=loaded, data=api.DataSpec(dataset="cifar100", data_dir=data_dir))
    assert caught.value.parameter == "dataset"


def test_lambda_options_on_a_module_without_csc_layers_are_usage_errors(data_dir: Path) -> None:
    eight = api.DataSpec(n_examples=8, data_dir=data_dir)
    with pytest.raises(UsageError) as caught:
        api.evaluate_corruptions(model=Constant(0), data=eight, lam=0.3)
    assert caught.value.parameter == "lam"
    with pytest.raises(UsageError) as caught:
        api.sweep_lambda(model=Constant(0), data=eight)
    assert caught.value.parameter == "model" and "no CSC layers" in str(caught.value)
    with pytest.raises(UsageError) as caught:
        api.evaluate_corruptions(model=api.ModelSpec("resnet18", normalize=((0, 0, 0), (1, 1, 1))), data=eight)
    assert caught.value.parameter == "normalize"
    with pytest.raises(UsageError) as caught:
        api.evaluate_corruptions(model=object(), data=eight)  # type: ignore[arg-type]
    assert caught.value.parameter == "model"


def test_state_dict_digest_follows_the_weights_not_their_order() -> None:
    a, b = nn.Module(), nn.Module()
    a.register_buffer("first", torch.arange(4.0))
    a.register_buffer("second", torch.ones(2, dtype=torch.bfloat16))
    b.register_buffer("second", torch.ones(2, dtype=torch.bfloat16))
    b.register_buffer("first", torch.arange(4.0))
    assert state_dict_sha256(a) == state_dict_sha256(b)
    assert len(state_dict_sha256(a)) == 64
    b.first[0] = 0.5
    assert state_dict_sha256(a) != state_dict_sha256(b)
    c = nn.Module()
    c.register_buffer("first", torch.arange(4.0).view(2, 2))  # same bytes, another shape
    c.register_buffer("second", torch.ones(2, dtype=torch.bfloat16))
    assert state_dict_sha256(c) != state_dict_sha256(a)


def test_api_functions_refuse_torchrun_unless_they_split_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for function in (api.sweep_lambda, api.compare_lambda_rules, api.lambda_hold_out, api.attack_vs_lambda):
        with pytest.raises(UsageError, match="runs in one process"):
            function(model=Constant(0))


def test_sweep_lambda_attack_is_an_alias_with_a_notice(tmp_path: Path) -> None:
    args = ["--attack", "pgdd", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    old = CliRunner().invoke(app, ["sweep-lambda", *args])
    new = CliRunner().invoke(app, ["attack-vs-lambda", *args])
    assert old.exit_code == new.exit_code == 2
    assert "note: `sdnet sweep-lambda --attack` is now `sdnet attack-vs-lambda`" in old.output
    assert "note:" not in new.output
    assert old.output.splitlines()[-1] == new.output.splitlines()[-1]


def test_attack_vs_lambda_help_names_its_own_defaults() -> None:
    result = CliRunner().invoke(app, ["attack-vs-lambda", "--help"])
    assert result.exit_code == 0
    for option in ("--attack", "--lams", "--eps", "--baseline-model", "--batch-size", "--pool-batches", "--resume"):
        assert option in result.output
    assert "--compile" not in result.output and "--fit" not in result.output


@pytest.mark.slow
def test_train_resume_with_changed_settings_is_a_usage_error(data_dir: Path, tmp_path: Path) -> None:
    from sdnet_cli.data.cifar import load_cifar10
    from sdnet_cli.models import create_model
    from sdnet_cli.runtime import Runtime
    from sdnet_cli.train import TrainConfig, train

    out = tmp_path / "r.safetensors"
    cfg = TrainConfig(model="resnet18", epochs=1, width=8, batch_size=32, n_train=32, n_test=16)
    train_split, test_split = load_cifar10(data_dir, "train"), load_cifar10(data_dir, "test")
    train(
        create_model("resnet18", width=8),
        cfg,
        train_split,
        test_split,
        Runtime.create("cpu"),
        tmp_path / "r.safetensors.resume.pt",
    )
    args = ["--model", "resnet18", "--out", str(out), "--epochs", "1", "--width", "8", "--batch-size", "32"]
    result = CliRunner().invoke(
        app,
        [
            "train",
            *args,
            "--n-train",
            "32",
            "--n-test",
            "16",
            "--lr",
            "0.2",
            "--resume",
            "--data-dir",
            str(data_dir),
            "--report-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "different settings (lr)" in lines[0] and "Traceback" not in result.output
