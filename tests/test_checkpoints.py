"""Loading our safetensors, the authors' key layout, and refusing anything unsafe or ill-fitting."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from sdnet_cli.errors import UsageError
from sdnet_cli.models import CheckpointError, ModelError, create_model, load_model, save_checkpoint
from sdnet_cli.models.checkpoints import sha256_of
from sdnet_cli.models.weights import read_manifest, update_manifest

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def official_keys(kind: str) -> set[str]:
    """Key names of the authors' released CIFAR checkpoints (SDNet, Dai et al., NeurIPS 2022), written out by hand:
    a BN-after-conv ResNet-18 whose stem conv is ``layer0.0`` (``layer0.0.dn`` with a ``step_size`` for SDNet)."""
    keys: set[str] = set()
    if kind == "resnet18":
        keys.add("layer0.0.weight")
    else:
        keys |= {"layer0.0.dn.weight", "layer0.0.dn.step_size"}
    keys |= {f"layer0.1.{b}" for b in BN}
    for stage in range(1, 5):
        for block in range(2):
            prefix = f"layer{stage}.layers.{block}" if kind == "sdnet18_all" else f"layer{stage}.{block}"
            for conv in ("conv1", "conv2"):
                if kind == "sdnet18_all":
                    keys |= {f"{prefix}.{conv}.dn.weight", f"{prefix}.{conv}.dn.step_size"}
                else:
                    keys.add(f"{prefix}.{conv}.weight")
            keys |= {f"{prefix}.bn1.{b}" for b in BN} | {f"{prefix}.bn2.{b}" for b in BN}
            if stage > 1 and block == 0:
                keys.add(f"{prefix}.shortcut.0.weight")
                keys |= {f"{prefix}.shortcut.1.{b}" for b in BN}
    return keys | {"linear.weight", "linear.bias"}


def to_official(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    if kind != "sdnet18_all":
        return dict(state)
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("layer1", "layer2", "layer3", "layer4"):
            key = ".".join([parts[0], "layers", *parts[1:]])
        renamed[key] = value
    return renamed


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Random non-trivial BN statistics so that a wrong load cannot go unnoticed."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize(("kind", "count"), [("sdnet18", 123), ("resnet18", 122), ("sdnet18_all", 139)])
@pytest.mark.slow
def test_official_key_layout_loads(tmp_path: Path, kind: str, count: int) -> None:
    source = randomized(create_model(kind, width=8)).eval()
    official = to_official(source.network.state_dict(), kind)
    assert set(official) == official_keys(kind) and len(official) == count
    x = torch.rand(2, 3, 32, 32)
    expected = source(x)
    bare = tmp_path / "model_best.pth.tar"
    torch.save(official, bare)
    wrapped = tmp_path / "checkpoint.pth.tar"
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in official.items()},
            "epoch": 219,
            "perf": 95.3,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
            "lr_scheduler": {"last_epoch": 219},
        },
        wrapped,
    )
    for path in (bare, wrapped):
        model, info = load_model(kind, checkpoint=path)
        assert info.width == 8 and info.num_classes == 10 and info.sha256 == sha256_of(path)
        torch.testing.assert_close(model(x), expected)


def test_wrong_shape_is_refused_with_the_key(tmp_path: Path) -> None:
    state = create_model("sdnet18", width=8).network.state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(16, 8, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches: layer2\.0\.conv1\.weight"):
        load_model("sdnet18", checkpoint=path)


def test_other_architecture_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(create_model("resnet18", width=8).network.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model("sdnet18", checkpoint=path)
    assert "missing keys" in str(err.value) and "unexpected keys" in str(err.value)


class RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {os.environ['SDNET_PWNED']}",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SDNET_PWNED", str(marker))
    state = create_model("sdnet18", width=8).network.state_dict()
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": state, "payload": RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        load_model("sdnet18", checkpoint=path)
    assert not marker.exists()


def test_safetensors_roundtrip_keeps_settings(tmp_path: Path) -> None:
    source = randomized(create_model("sdnet18", width=8, lam=0.3)).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(source.network, path, {"architecture": "sdnet18", "lam": 0.3, "n_steps": 2})
    model, info = load_model("sdnet18", checkpoint=path)
    assert info.lam == 0.3 and model.training_lam == 0.3
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_checkpoint_follows_the_umask_not_private(tmp_path: Path) -> None:
    """A checkpoint meant for weights/ must be readable by others (safetensors alone writes 0600)."""
    old = os.umask(0o022)
    try:
        save_checkpoint(create_model("resnet18", width=4).network, tmp_path / "r.safetensors", {})
    finally:
        os.umask(old)
    assert (tmp_path / "r.safetensors").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["r.safetensors"]


def test_shipped_checkpoint_must_match_manifest_sha256(tmp_path: Path) -> None:
    model = create_model("resnet18", width=8)
    digest = save_checkpoint(model.network, tmp_path / "r.safetensors", {"architecture": "resnet18"})
    entry = {
        "name": "r",
        "file": "r.safetensors",
        "architecture": "resnet18",
        "dataset": "cifar10",
        "sha256": digest,
        "default": True,
    }
    (tmp_path / "manifest.json").write_text(json.dumps({"models": [entry]}))
    _, info = load_model("resnet18", weights_dir=tmp_path)  # by architecture: the default entry
    assert info.name == "r" and info.sha256 == digest
    with open(tmp_path / "r.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "r.safetensors")) + " does not match"):
        load_model("r", weights_dir=tmp_path)


def test_unknown_model_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model 'vgg11'.*sdnet18"):
        load_model("vgg11", weights_dir=tmp_path)
    with pytest.raises(ModelError, match="no shipped cifar10 checkpoint"):
        load_model("sdnet34", weights_dir=tmp_path)


def test_same_parameter_count_as_the_paper() -> None:
    counts = {k: sum(p.numel() for p in create_model(k).parameters()) for k in ("resnet18", "sdnet18", "sdnet18_all")}
    assert len(set(counts.values())) == 1
    assert counts["sdnet18"] / 1e6 == pytest.approx(11.2, abs=0.05)


def _register_many(weights_dir: str, prefix: str, count: int) -> None:
    for i in range(count):
        update_manifest(
            {
                "name": f"{prefix}{i}",
                "file": f"{prefix}{i}.safetensors",
                "sha256": "0" * 64,
                "architecture": "resnet18",
                "dataset": "cifar10",
            },
            Path(weights_dir),
        )


@pytest.mark.slow
def test_concurrent_manifest_updates_keep_every_entry(tmp_path: Path) -> None:
    """Two trainings finishing together must not drop each other's entry (read-modify-write under a lock)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_register_many, args=(str(tmp_path), p, 40)) for p in ("a", "b", "c")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0, 0]
    names = {e["name"] for e in read_manifest(tmp_path)}
    assert names == {f"{p}{i}" for p in ("a", "b", "c") for i in range(40)}


def scaled_atoms(model: torch.nn.Module) -> torch.nn.Module:
    """Atom norms spread over 0.2 .. 1.7, as training leaves them, so a missing normalisation shows."""
    with torch.no_grad():
        for layer in model.csc_layers:
            layer.weight.mul_(torch.linspace(0.2, 1.7, layer.out_channels).view(-1, 1, 1, 1))
    return model


def atom_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.double().flatten(1).norm(dim=1)


@pytest.mark.slow
def test_saved_dictionaries_have_unit_norm_atoms_and_the_same_outputs(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    source = scaled_atoms(randomized(create_model("sdnet18_all", width=8))).eval()
    assert (atom_norms(source.network.layer0[0].dn.weight) - 1).abs().max() > 0.5
    path = tmp_path / "m.safetensors"
    save_checkpoint(source.network, path, {"architecture": "sdnet18_all"})
    stored = load_file(str(path))
    dictionaries = [k for k in stored if k.endswith("dn.weight")]
    assert len(dictionaries) == 17  # the stem and the 16 block convs
    for key in dictionaries:
        torch.testing.assert_close(atom_norms(stored[key]), torch.ones(stored[key].shape[0], dtype=torch.float64))
    other = "layer1.0.bn1.weight"
    assert torch.equal(stored[other], source.network.state_dict()[other])  # nothing else is touched
    model, _ = load_model("sdnet18_all", checkpoint=path)
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x), rtol=1e-5, atol=1e-5)


def test_n_steps_overrides_the_checkpoint_setting(tmp_path: Path) -> None:
    source = randomized(create_model("sdnet18", width=8)).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(source.network, path, {"architecture": "sdnet18", "n_steps": 2})
    x = torch.rand(2, 3, 32, 32)
    two, info_two = load_model("sdnet18", checkpoint=path)
    five, info_five = load_model("sdnet18", checkpoint=path, n_steps=5)
    assert (info_two.n_steps, info_five.n_steps) == (2, 5)
    assert info_five.as_meta()["n_steps"] == 5
    assert [layer.n_steps for layer in five.csc_layers] == [5]
    source.network.layer0[0].dn.n_steps = 5  # the same weights, solved with five steps
    torch.testing.assert_close(five(x), source(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(five(x), two(x), atol=1e-4)


def test_n_steps_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    save_checkpoint(create_model("resnet18", width=4).network, path, {"architecture": "resnet18"})
    with pytest.raises(ModelError, match="no CSC layers") as info:
        load_model("resnet18", checkpoint=path, n_steps=3)
    assert info.value.parameter == "n_steps"
    with pytest.raises(UsageError, match="n_steps must be an integer >= 1 and <= 1,000"):
        load_model("resnet18", checkpoint=path, n_steps=0)
