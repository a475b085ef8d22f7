"""`sweep-lambda --attack`: robust accuracy vs test-time lambda, each point an ordinary attack run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdnet_cli import api
from sdnet_cli.cli import app
from sdnet_cli.errors import UsageError
from sdnet_cli.models import create_model, save_checkpoint

COMMON = dict(attack="pgd", eps=["1/255", "2/255"], steps=2, run=api.RunSpec(batch_size=8, device="cpu"))


def twelve(data_dir: Path) -> api.DataSpec:
    return api.DataSpec(n_examples=12, seed=5, data_dir=data_dir)


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "masking_warnings")} for r in rows]


@pytest.mark.slow
def test_each_point_equals_an_attack_at_that_lambda(tiny_checkpoint: Path, data_dir: Path) -> None:
    model = api.ModelSpec("sdnet18", checkpoint=tiny_checkpoint)
    sweep = api.attack_vs_lambda(model=model, data=twelve(data_dir), lams="0.1,0.5", **COMMON)
    assert [r["lam"] for r in sweep.rows] == [0.1, 0.1, 0.5, 0.5]
    for lam in (0.1, 0.5):
        single = api.attack(model=model, data=twelve(data_dir), lam=lam, **COMMON)
        assert without_seconds([r for r in sweep.rows if r["lam"] == lam]) == without_seconds(single.rows)
    assert set(sweep.meta["diagnostics"]) == {"0.1", "0.5"}
    assert all("zero_gradient_fraction" in d for d in sweep.meta["diagnostics"].values())
    assert all(isinstance(r["masking_warnings"], int) for r in sweep.rows)


@pytest.mark.slow
def test_baseline_rows_plot_and_markdown(tiny_checkpoint: Path, data_dir: Path, tmp_path: Path) -> None:
    resnet = tmp_path / "r8.safetensors"
    save_checkpoint(create_model("resnet18", width=8).network, resnet, {"architecture": "resnet18"})
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "models": [
                    {
                        "name": "r8",
                        "file": "r8.safetensors",
                        "architecture": "resnet18",
                        "dataset": "cifar10",
                        "sha256": __import__("sdnet_cli.models.checkpoints", fromlist=["sha256_of"]).sha256_of(resnet),
                    }
                ]
            }
        )
    )
    report = api.attack_vs_lambda(
        model=api.ModelSpec("sdnet18", checkpoint=tiny_checkpoint, weights_dir=tmp_path),
        data=twelve(data_dir),
        lams=[0.1, 0.3],
        baseline_model="r8",  # looked up in the swept model's weights_dir
        **{**COMMON, "eps": ["1/255"]},
    )
    assert [r["model"] for r in report.rows] == ["sdnet18", "sdnet18", "r8"]
    assert report.rows[-1]["lam"] is None  # a ResNet has no lambda
    paths = report.write(tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{report.name}.{ext}" for ext in ("csv", "json", "md", "png"))
    assert (tmp_path / "out" / f"{report.name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "out" / f"{report.name}.md").read_text()
    assert f"]({report.name}.png)" in markdown and "Gradient-masking diagnostics per lambda" in markdown
    assert "- 0.1:" in markdown and "- r8:" in markdown


@pytest.mark.parametrize(
    ("kwargs", "parameter"), [({"lams": ""}, "lams"), ({"attack": "pgdd"}, "attack"), ({"eps": ["-1/255"]}, "eps")]
)
def test_bad_input_is_refused_before_any_work(kwargs: dict, parameter: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        api.attack_vs_lambda(data=api.DataSpec(data_dir=tmp_path / "nowhere"), **kwargs)
    assert caught.value.parameter == parameter


def test_cli_attack_sweep_typo_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["sweep-lambda", "--attack", "pgdd", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 2 and "--attack" in result.output
    assert not (tmp_path / "out").exists()
