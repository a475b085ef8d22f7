"""``sdnet export --format official``: the authors' checkpoint layout, unit-norm atoms, a lossless round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sdnet_cli.cli import app
from sdnet_cli.models import CheckpointError, create_model, load_model, save_checkpoint
from sdnet_cli.models.checkpoints import export_official


def trained_like(name: str) -> torch.nn.Module:
    """A small model with random BN statistics and atom norms spread over 0.2 .. 1.7, as training leaves them."""
    torch.manual_seed(3)
    model = create_model(name, width=8).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        for layer in model.csc_layers:
            layer.weight.mul_(torch.linspace(0.2, 1.7, layer.out_channels).view(-1, 1, 1, 1))
    return model


def stem_lipschitz(weight: torch.Tensor, size: int) -> float:
    """Largest eigenvalue of D D^T for the stem's synthesis matrix D on size x size images, from the explicit
    float64 matrix of a 3x3, stride 1, padding 1 convolution with unit-norm atoms."""
    atoms = weight.double() / weight.double().flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    n_in = 3 * size * size
    basis = torch.eye(n_in, dtype=torch.float64).view(n_in, 3, size, size)
    analysis = torch.nn.functional.conv2d(basis, atoms, padding=1).reshape(n_in, -1)  # rows: A applied to pixels
    return float(np.linalg.eigvalsh((analysis @ analysis.T).numpy()).max())


@pytest.mark.parametrize("name", ["sdnet18", "sdnet18_all", "resnet18"])
@pytest.mark.slow
def test_export_loads_back_to_identical_logits(tmp_path: Path, name: str) -> None:
    source = trained_like(name)
    out = tmp_path / "model_best.pth"
    export_official(source.network, out, image_size=32)
    model, _ = load_model(name, checkpoint=out)
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_export_is_a_plain_state_dict_in_the_authors_layout(tmp_path: Path) -> None:
    source = trained_like("sdnet18_all")
    out = tmp_path / "model_best.pth"
    export_official(source.network, out, image_size=32)
    state = torch.load(out, weights_only=True)
    assert type(state) is dict and all(type(v) is torch.Tensor for v in state.values())
    assert "layer1.layers.0.conv1.dn.weight" in state and "layer4.layers.1.bn2.running_var" in state
    assert not any(k.startswith(("layer1.0.", "module.")) for k in state)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    dictionaries = [k for k in state if k.endswith("dn.weight")]
    assert len(dictionaries) == 17
    for key in dictionaries:
        norms = state[key].double().flatten(1).norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        assert key.replace("weight", "step_size") in state


def test_exported_step_size_is_for_the_given_image_size(tmp_path: Path) -> None:
    source = trained_like("sdnet18")
    out = tmp_path / "small.pth"
    export_official(source.network, out, image_size=6)
    state = torch.load(out, weights_only=True)
    expected = 0.9 / stem_lipschitz(state["layer0.0.dn.weight"], 6)
    assert float(state["layer0.0.dn.step_size"]) == pytest.approx(expected, rel=2e-3)
    assert not source.training  # the probe forward leaves the mode as it was


def test_only_our_resnet_builds_export() -> None:
    with pytest.raises(CheckpointError, match="official layout"):
        export_official(torch.nn.Linear(2, 2), Path("never.pth"), image_size=32)


def test_cli_export_writes_the_file_and_refuses_unknown_formats(tmp_path: Path) -> None:
    source = trained_like("sdnet18")
    ours = tmp_path / "ours.safetensors"
    save_checkpoint(source.network, ours, {"architecture": "sdnet18", "n_steps": 2})
    out = tmp_path / "exported" / "model_best.pth"
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(out), "--model", "sdnet18", "--checkpoint", str(ours)])
    assert result.exit_code == 0, result.output
    model, _ = load_model("sdnet18", checkpoint=out)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x), rtol=1e-5, atol=1e-5)
    bad = runner.invoke(app, ["export", str(tmp_path / "x.pth"), "--format", "onnx", "--checkpoint", str(ours)])
    assert bad.exit_code == 2 and "--format" in bad.output and "official" in bad.output
    assert not (tmp_path / "x.pth").exists()
