"""bf16-checked precision: bf16 decisions whose margin is in doubt are re-run in fp32, and a seeded sample of
the accepted ones is audited. Tiny models whose bf16 and fp32 decisions differ by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdnet_cli import api
from sdnet_cli.errors import UsageError
from sdnet_cli.runtime import Checked, Runtime, predict, predict_correct
from sdnet_cli.specs import check_precision

ULP_1 = 2.0**-7  # bf16 spacing just above 1.0 (8 significant bits)


class NearTie(nn.Module):
    """Three classes from the first three values of channel 0 (autocast rounds inputs and weights to bf16,
    8 significant bits, and the output too). Class 0 = (1 + 0.6 ulp) * value 0; at pixel 129 (0.505882)
    fp32 gives 0.508260, bf16 rounds both factors up (1.0078, 0.507813) and the product to 0.511719.
    Class 1 = 0.509 * value 1; at pixel 255 (1.0) fp32 gives 0.509, bf16 rounds the weight down to 0.507813.
    So fp32 decides class 1 (by 0.0007), bf16 class 0. Class 2 = 10 * value 2: at pixel 255 it wins by
    more than 9 in either precision, at 0 it is out of the race."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3, bias=False)
        weight = torch.zeros(3, 3)
        weight[0, 0], weight[1, 1], weight[2, 2] = 1 + 0.6 * ULP_1, 0.509, 10.0
        self.fc.weight.data = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, 0, 0, :3])


def near_tie_images(n_flip: int, n_clear: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip images (values 129, 255, 0; fp32 class 1), then clear ones (129, 255, 255; class 2)."""
    images = np.zeros((n_flip + n_clear, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = 129, 255
    images[n_flip:, 0, 2, 0] = 255
    return images, np.array([1] * n_flip + [2] * n_clear)


def test_near_tie_model_flips_in_bf16_by_construction() -> None:
    images, labels = near_tie_images(3, 2)
    model = NearTie()
    fp32, bf16 = Runtime.create("cpu", "fp32"), Runtime.create("cpu", "bf16")
    x = fp32.to_input(images)
    assert predict(model, x, fp32).tolist() == [1, 1, 1, 2, 2]  # hand-worked: 0.509 > 0.50826
    assert predict(model, x, bf16).tolist() == [0, 0, 0, 2, 2]  # 0.5117 > 0.5078 after rounding


def test_checked_catches_and_fixes_every_flip() -> None:
    images, labels = near_tie_images(20, 80)
    runtime = Runtime(torch.device("cpu"), "bf16-checked", checked=Checked(audit_share=0.0))
    correct = predict_correct(NearTie(), images, labels, runtime, batch_size=16)
    assert correct.all()  # the fp32 decisions on every image
    counts = runtime.checked.describe()
    assert counts["images"] == 100 and counts["rerun"] == 20 and counts["audited"] == 0


class Liar(nn.Module):
    """Decides class 0 by a margin of 5 under autocast and class 1 by 5 in fp32: a disagreement no margin
    test sees, which only the audit can find."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.is_autocast_enabled(x.device.type)
        row = torch.tensor([5.0, 0.0] if low else [0.0, 5.0])
        return row.expand(len(x), 2) + 0 * x.flatten(1)[:, :1]


def test_audit_counts_disagreements_and_is_seeded() -> None:
    images = np.zeros((500, 32, 32, 3), dtype=np.uint8)
    labels = np.ones(500, dtype=np.int64)
    found = []
    for _ in range(2):
        runtime = Runtime.create("cpu", "bf16-checked")
        correct = predict_correct(Liar(), images, labels, runtime, batch_size=64)
        found.append(runtime.checked.describe())
        assert correct.sum() == found[-1]["audited"]  # audited images take the fp32 decision
    assert found[0] == found[1]  # the same sample every run
    counts = found[0]
    assert counts["rerun"] == 0 and 0 < counts["audited"] < 30  # about 2% of 500
    assert counts["audit_same"] == 0 and counts["audit_agreement"] == 0.0


def test_audit_agrees_on_an_honest_model() -> None:
    images, labels = near_tie_images(0, 300)
    runtime = Runtime(torch.device("cpu"), "bf16-checked", checked=Checked(audit_share=0.5))
    predict_correct(NearTie(), images, labels, runtime, batch_size=64)
    counts = runtime.checked.describe()
    assert counts["audited"] > 100 and counts["audit_same"] == counts["audited"]


def test_precision_vocabulary_and_refusals() -> None:
    assert check_precision("bf16-checked") == "bf16-checked"
    with pytest.raises(UsageError, match="use fp32, bf16, bf16-checked"):
        check_precision("fp16")
    with pytest.raises(UsageError, match="checks only decisions") as caught:
        api.attack(run=api.RunSpec(precision="bf16-checked"), data=api.DataSpec(data_dir=Path("/nowhere")))
    assert caught.value.parameter == "precision"
    with pytest.raises(UsageError, match="checks only decisions"):
        api.train(model="sdnet18", out=Path("/nowhere/x.safetensors"), run=api.RunSpec(precision="bf16-checked"))


def test_checked_eval_meta_counts(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    model, data = api.ModelSpec("sdnet18", checkpoint=tiny_checkpoint), api.DataSpec(data_dir=data_dir, n_examples=64)
    report = api.evaluate_corruptions(
        model=model, data=data, run=api.RunSpec("cpu", "bf16-checked", batch_size=32), corruptions=["none"]
    )
    exact = api.evaluate_corruptions(
        model=model, data=data, run=api.RunSpec("cpu", "fp32", batch_size=32), corruptions=["none"]
    )
    assert report.rows[0]["correct"] == exact.rows[0]["correct"]
    check = report.meta["precision_check"]
    assert report.meta["precision"] == "bf16-checked" and check["images"] == 64


@pytest.mark.parametrize(("margin", "audit"), [(0.5, 0.0), (0.0, 0.5)])  # everything re-run; half, to audit
def test_checked_sweep_keeps_errors_and_takes_fp32_where_rerun(data_dir: Path, margin: float, audit: float) -> None:
    import sdnet_cli.sweep.runs as sweep
    from sdnet_cli.data.cells import Cell, CellSource
    from sdnet_cli.models import create_model
    from sdnet_cli.sweep.plan import EVERY_PAIR

    torch.manual_seed(0)
    model = create_model("sdnet18", width=8).eval()
    source = CellSource(data_dir, seed=1, n_examples=40, workers=1)
    cells, lams = [Cell("clean", 0)], [0.1, 0.5, 1.2]
    (exact,) = sweep.sweep_cells(model, cells, source, Runtime.create("cpu"), lams, 16, plan=EVERY_PAIR)
    runtime = Runtime(torch.device("cpu"), "bf16-checked", checked=Checked(margin=margin, audit_share=audit))
    (checked,) = sweep.sweep_cells(model, cells, source, runtime, lams, 16, plan=EVERY_PAIR)
    np.testing.assert_allclose(checked.mean_error, exact.mean_error, rtol=1e-6)  # the first (bf16) forward's stem
    counts = runtime.checked.describe()
    assert counts["images"] == 3 * 40
    if margin:  # an untrained model's logits are all close: every decision is fp32's
        assert counts["rerun"] == 120
        np.testing.assert_array_equal(checked.correct, exact.correct)
    else:  # about half of each batch re-run: the stem's error must still be the whole batch's
        assert counts["rerun"] == 0 and 30 <= counts["audited"] <= 90


def test_cli_refuses_checked_attacks_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdnet_cli.cli import app

    result = CliRunner().invoke(app, ["attack", "--precision", "bf16-checked", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "checks only decisions" in result.output, result.output
    assert not any(tmp_path.iterdir())
