"""Lambda policies against independent references: per-input lambda vs per-sample runs and vs a
model trained at that lambda, the noise estimator vs known noise, the line fits vs numpy.polyfit and
hand-worked accuracy curves, the calibration file in every layout (which rule ``auto`` names, refits
without a corruption), and both oracles on correctness matrices whose answers are known by construction."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdnet_cli.errors import UsageError
from sdnet_cli.lam import (
    Calibration,
    FixedLambda,
    NoiseLevelLambda,
    OracleScores,
    ReconErrorLambda,
    estimate_noise_sigma,
    fit_line,
    fit_line_for_accuracy,
    lambda_grid,
    lambda_label,
    load_calibration,
    noise_sigma,
    oracle_scores,
    per_cell_oracle,
    per_input_oracle,
    recommend,
    resolve_policy,
    rule_accuracy,
    store_calibration,
)
from sdnet_cli.models import ModelInfo, create_model
from sdnet_cli.models.csc import normalize_atoms


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("sdnet18", width=8).eval()


@pytest.fixture(scope="module")
def mixed_batch(cifar_test_images: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """8 test images, half with gaussian noise of growing strength: reconstruction errors that differ."""
    images = torch.from_numpy(cifar_test_images[0][:8]).permute(0, 3, 1, 2).float() / 255
    sigmas = torch.tensor([0, 0, 0, 0, 0.03, 0.06, 0.1, 0.2]).view(-1, 1, 1, 1)
    return (images + sigmas * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)


def reference_stem_error(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """||xn - A^T z||^2 from the stem's ordinary forward (hooked), re-synthesised with F.conv_transpose2d."""
    stem = model.stem_csc
    seen = {}
    handle = stem.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0], z=out))
    with torch.no_grad():
        model(x)
    handle.remove()
    atoms = normalize_atoms(stem.weight.detach().double())
    recon = F.conv_transpose2d(seen["z"].double(), atoms, padding=1)
    return (seen["x"].double() - recon).pow(2).flatten(1).sum(1).numpy()


def test_fit_line_equals_polyfit() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 50, 12)
    y = 0.02 * x + 0.1 + rng.normal(0, 0.05, 12)
    np.testing.assert_allclose(fit_line(x, y), np.polyfit(x, y, 1), rtol=1e-10)
    with pytest.raises(ValueError, match="different x"):
        fit_line([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="two points"):
        fit_line([1.0], [0.1])


def line_through(e1: float, lam1: float, e2: float, lam2: float) -> tuple[float, float]:
    """(a, b) of the line through (e1, lam1) and (e2, lam2)."""
    a = (lam2 - lam1) / (e2 - e1)
    return a, lam1 - a * e1


def test_recon_lambda_is_the_clamped_line_of_the_stem_error(model: torch.nn.Module, mixed_batch: torch.Tensor) -> None:
    errors = reference_stem_error(model, mixed_batch)
    assert np.ptp(errors) > 0.1 * errors.mean()  # the noise levels really give different errors
    # the line from lambda 0.2 at one error to 1.0 at another, both inside the batch's range: the
    # inputs outside them sit at the clamps, exactly what np.interp does beyond its end points
    e1, e2 = np.quantile(errors, [0.2, 0.8])
    policy = ReconErrorLambda(*line_through(e1, 0.2, e2, 1.0), lo=0.2, hi=1.0)
    with torch.no_grad():
        lam = policy(model, model.normalize(mixed_batch)).numpy()
    np.testing.assert_allclose(lam, np.interp(errors, [e1, e2], [0.2, 1.0]), rtol=1e-4, atol=1e-5)
    assert (lam == np.float32(0.2)).sum() >= 1 and (lam == np.float32(1.0)).sum() >= 1


def test_per_input_lambda_equals_each_sample_alone(model: torch.nn.Module, mixed_batch: torch.Tensor) -> None:
    errors = reference_stem_error(model, mixed_batch)
    policy = ReconErrorLambda(*line_through(errors.min(), 0.1, errors.max(), 1.4), lo=0.1, hi=1.4)
    lams = np.interp(errors, [errors.min(), errors.max()], [0.1, 1.4])
    assert len(np.unique(lams.round(3))) >= 4
    with torch.no_grad():
        with model.using(policy):
            batched = model(mixed_batch)
        alone = []
        for i, value in enumerate(lams):
            with model.using(FixedLambda(float(value))):
                alone.append(model(mixed_batch[i : i + 1]))
        torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-4, atol=1e-4)
        # and the lambda really matters: the training lambda gives other logits
        assert not torch.allclose(batched, model(mixed_batch), atol=1e-3)


def twin_at(model: torch.nn.Module, lam: float) -> torch.nn.Module:
    """The same weights in a model whose training lambda is ``lam``."""
    twin = create_model("sdnet18", width=8, lam=lam).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def test_test_lambda_block_runs_the_model_at_that_lambda(model: torch.nn.Module, mixed_batch: torch.Tensor) -> None:
    with torch.no_grad():
        expected = twin_at(model, 1.0)(mixed_batch)
        with model.test_lambda(1.0):
            inside = model(mixed_batch)
        after = model(mixed_batch)
    torch.testing.assert_close(inside, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(after, expected, atol=1e-3)  # and the training lambda is back after the block
    torch.testing.assert_close(after, twin_at(model, 0.1)(mixed_batch), rtol=1e-4, atol=1e-4)


def test_using_blocks_nest_and_restore_the_outer_policy(model: torch.nn.Module, mixed_batch: torch.Tensor) -> None:
    outer, inner = FixedLambda(1.0), FixedLambda(0.5)
    with torch.no_grad():
        expected = twin_at(model, 1.0)(mixed_batch)
        with model.using(outer):
            with model.using(inner):
                assert model.lam_policy is inner
            assert model.lam_policy is outer
            torch.testing.assert_close(model(mixed_batch), expected, rtol=1e-4, atol=1e-4)
            with pytest.raises(RuntimeError), model.using(inner):
                raise RuntimeError("a failing block")
            assert model.lam_policy is outer
    assert model.lam_policy is None
    with pytest.raises(AttributeError):
        model.lam_policy = outer  # read-only: policies change only through ``using``


def test_recon_lambda_keeps_the_graph_for_attacks(model: torch.nn.Module, mixed_batch: torch.Tensor) -> None:
    x = mixed_batch.clone().requires_grad_(True)
    lam = ReconErrorLambda(a=1e-3, b=0.1, lo=0.0, hi=100.0)(model, model.normalize(x))
    assert lam.requires_grad
    (grad,) = torch.autograd.grad(lam.sum(), x)
    assert grad.abs().sum() > 0


def smooth_images(n: int = 4) -> torch.Tensor:
    """Ramps plus gentle sinusoids: almost no high-frequency content."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    images = []
    for i in range(n):
        channels = [
            0.2
            + 0.01 * (i + 1) * xx
            + 0.1 * torch.sin(2 * torch.pi * yy / 32 + c)
            + 0.05 * torch.sin(2 * torch.pi * xx / 32) * torch.cos(2 * torch.pi * yy / 32)
            for c in range(3)
        ]
        images.append(torch.stack(channels) * 0.5)
    return torch.stack(images)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_noise_estimator_recovers_gaussian_sigma(sigma: float) -> None:
    clean = smooth_images()
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    estimate = estimate_noise_sigma(noisy)
    assert estimate.shape == (4,)
    np.testing.assert_allclose(estimate.numpy(), sigma, rtol=0.2)
    assert float(estimate_noise_sigma(clean).max()) < 0.1 * sigma


def test_noise_lambda_is_the_clamped_line_of_the_pixel_noise(model: torch.nn.Module) -> None:
    clean = smooth_images(1).expand(4, -1, -1, -1)
    sigmas = torch.tensor([0.0, 0.03, 0.06, 0.12]).view(-1, 1, 1, 1)
    x = clean + sigmas * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    # lambda 0.1 at noise 0.02, 1.0 at noise 0.1 (in [0,1] pixel units, not the normalised input's)
    policy = NoiseLevelLambda(*line_through(0.02, 0.1, 0.1, 1.0), lo=0.1, hi=1.0)
    with torch.no_grad():
        lam = policy(model, model.normalize(x)).numpy()
    estimate = estimate_noise_sigma(x).numpy()
    np.testing.assert_allclose(lam, np.interp(estimate, [0.02, 0.1], [0.1, 1.0]), rtol=1e-5, atol=1e-6)
    assert lam[0] == pytest.approx(0.1) and lam[3] == pytest.approx(1.0) and lam[1] < lam[2]


def test_lambda_grid() -> None:
    grid = lambda_grid("0.1:1.4:0.1")
    assert len(grid) == 14 and grid[0] == 0.1 and grid[-1] == 1.4 and grid[2] == 0.3
    assert (
        lambda_grid("0.5, 0.1,0.5") == [0.1, 0.5] == lambda_grid([0.5, 0.1, 0.5]) == lambda_grid(np.array([0.1, 0.5]))
    )
    for bad in ("1:0:0.1", "a,b", "0.1:1", "-1,0.2", "", [], [0.1, float("nan")], ["x"]):
        with pytest.raises(UsageError, match="lams") as raised:
            lambda_grid(bad)  # type: ignore[arg-type]
        assert raised.value.parameter == "lams" and "--" not in str(raised.value)


def test_resolve_policy(model: torch.nn.Module) -> None:
    assert resolve_policy(None, model) is None
    assert resolve_policy(0.5, model) == FixedLambda(0.5) == resolve_policy("0.5", model)
    assert resolve_policy(0, model) == FixedLambda(0.0)
    for bad in (-0.1, "-1", float("inf"), "nan", "x", True, "oracle"):
        with pytest.raises(UsageError, match="lam") as raised:
            resolve_policy(bad, model)  # type: ignore[arg-type]
        assert raised.value.parameter == "lam" and "--" not in str(raised.value)
    with pytest.raises(UsageError, match="no CSC layers"):
        resolve_policy(0.5, create_model("resnet18", width=4))
    with pytest.raises(UsageError, match="info"):
        resolve_policy("auto", model)


# Two calibration groups on the grid 0.1, 0.7, 1.4, worked by hand. recon: lambda = 0.01 * error + 0.05,
# noise: lambda = 8 * noise + 0.1 (both clamped to [0.1, 1.4]).
#   clean (error 5, noise 0.01): recon 0.1 -> 90; noise 0.18 -> 90 - 10 * 0.08 / 0.6 = 88.667
#   noisy (error 50, noise 0.1): recon 0.55 -> 40 + 30 * 0.45 / 0.6 = 62.5; noise 0.9 -> 70 - 10 * 0.2 / 0.7 = 67.143
# mean: recon 76.25 < noise 77.905, so ``auto`` is noise. With the noisy curve ending at 20 instead of 60
# the noise rule reads 70 - 50 * 0.2 / 0.7 = 55.714 there (mean 72.19) and recon wins.
GROUPS = [
    {
        "corruption": "clean",
        "severity": 0,
        "best_lam": 0.1,
        "accuracy": 90.0,
        "error": 5.0,
        "noise": 0.01,
        "curve": [90.0, 80.0, 50.0],
    },
    {
        "corruption": "gaussian_noise",
        "severity": 5,
        "best_lam": 0.7,
        "accuracy": 70.0,
        "error": 50.0,
        "noise": 0.1,
        "curve": [40.0, 70.0, 60.0],
    },
]
RECON_LINE, NOISE_LINE = {"a": 0.01, "b": 0.05, "lo": 0.1, "hi": 1.4}, {"a": 8.0, "b": 0.1, "lo": 0.1, "hi": 1.4}


def make_calibration(sha: str, points: list[dict] | None = None, recommended: str = "noise") -> Calibration:
    return Calibration(
        recon=ReconErrorLambda(**RECON_LINE),
        noise=NoiseLevelLambda(**NOISE_LINE),
        recommended=recommended,
        grid=[0.1, 0.7, 1.4],
        points=GROUPS if points is None else points,
        corruptions=["gaussian_noise"],
        severities=[5],
        n=100,
        seed=4,
        training_lam=0.1,
        checkpoint_sha256=sha,
    )


def test_rule_accuracy_and_recommendation_by_hand() -> None:
    calibration = make_calibration("ab" * 32)
    assert rule_accuracy(calibration.recon, GROUPS, calibration.grid) == pytest.approx(76.25)
    assert rule_accuracy(calibration.noise, GROUPS, calibration.grid) == pytest.approx((88 + 2 / 3 + 70 - 2 / 0.7) / 2)
    assert recommend(calibration.rules, GROUPS, calibration.grid) == "noise"
    steep = [GROUPS[0], {**GROUPS[1], "curve": [40.0, 70.0, 20.0]}]
    assert rule_accuracy(calibration.noise, steep, calibration.grid) == pytest.approx((88 + 2 / 3 + 70 - 10 / 0.7) / 2)
    assert recommend(calibration.rules, steep, calibration.grid) == "recon"
    with pytest.raises(UsageError, match="curves"):
        recommend(calibration.rules, [{k: v for k, v in GROUPS[0].items() if k != "curve"}], calibration.grid)


def test_auto_names_the_recommended_rule_and_says_so(model: torch.nn.Module) -> None:
    calibration = make_calibration("ab" * 32)
    auto = calibration.policy("auto")
    assert auto.name == "auto:noise" and (auto.a, auto.b, auto.lo, auto.hi) == tuple(NOISE_LINE.values())
    assert calibration.policy("noise").name == "noise" and calibration.policy("recon").name == "recon"
    assert make_calibration("ab" * 32, recommended="recon").policy("auto").name == "auto:recon"
    with model.using(auto):  # what an eval row's lam column says
        assert lambda_label(model) == "auto:noise"
    with pytest.raises(UsageError, match="recommended"):
        make_calibration("ab" * 32, recommended="auto")


def test_calibration_is_stored_beside_a_shipped_checkpoint_and_named_in_its_manifest(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    entry = {
        "name": "sdnet18-w8",
        "file": "sdnet18-w8.safetensors",
        "architecture": "sdnet18",
        "dataset": "cifar10",
        "sha256": "ab" * 32,
    }
    (weights / "manifest.json").write_text(json.dumps({"models": [entry]}))
    info = ModelInfo(
        "sdnet18-w8",
        "sdnet18",
        "cifar10",
        8,
        10,
        0.1,
        2,
        True,
        "cifar",
        checkpoint=str(weights / entry["file"]),
        sha256=entry["sha256"],
        manifest_entry=entry,
    )
    path = store_calibration(make_calibration(entry["sha256"]), info)
    assert path == weights / "sdnet18-w8.lambda.json"
    saved = json.loads(path.read_text())
    assert (
        saved["rules"] == {"recon": RECON_LINE, "noise": {**NOISE_LINE, "c": 0.0}} and saved["recommended"] == "noise"
    )
    assert {"grid", "points", "corruptions", "severities", "n", "seed", "checkpoint_sha256"} <= set(saved)
    assert saved["split"] == "train" and saved["schema"] == 4
    manifest = json.loads((weights / "manifest.json").read_text())["models"]
    assert manifest == [{**entry, "calibration": "sdnet18-w8.lambda.json"}]
    # found through the manifest entry, and round-trips
    shipped = ModelInfo(**{**info.__dict__, "manifest_entry": manifest[0]})
    assert load_calibration(shipped) == make_calibration(entry["sha256"])
    model = create_model("sdnet18", width=8)
    assert resolve_policy("recon", model, shipped) == ReconErrorLambda(**RECON_LINE)
    assert resolve_policy("noise", model, shipped) == NoiseLevelLambda(**NOISE_LINE)
    assert resolve_policy("auto", model, shipped) == NoiseLevelLambda(**NOISE_LINE, label="auto")
    # a calibration of another checkpoint is refused
    other = ModelInfo(**{**shipped.__dict__, "sha256": "cd" * 32})
    with pytest.raises(UsageError, match="another checkpoint"):
        load_calibration(other)
    # written elsewhere: the manifest is left alone
    elsewhere = store_calibration(make_calibration(entry["sha256"]), info, tmp_path / "x.json")
    assert elsewhere.is_file() and json.loads((weights / "manifest.json").read_text())["models"] == manifest


def test_missing_calibration_says_how_to_make_one(tmp_path: Path) -> None:
    info = ModelInfo(
        "sdnet18",
        "sdnet18",
        "cifar10",
        8,
        10,
        0.1,
        2,
        True,
        "cifar",
        checkpoint=str(tmp_path / "m.safetensors"),
        sha256="ab" * 32,
    )
    for lam in ("auto", "recon", "noise"):
        with pytest.raises(UsageError, match="calibrate.*calibration=PATH") as raised:
            resolve_policy(lam, create_model("sdnet18", width=8), info)
        assert raised.value.parameter == "calibration"


COMMON = {
    "grid": [0.1, 0.7, 1.4],
    "points": GROUPS,
    "corruptions": ["gaussian_noise"],
    "severities": [5],
    "n": 100,
    "seed": 4,
    "training_lam": 0.1,
    "checkpoint_sha256": "ab" * 32,
    "split": "train",
}
SCHEMA_1 = {**RECON_LINE, "noise": NOISE_LINE, **COMMON}  # the reconstruction-error rule at the top level
SCHEMA_2 = {"rules": {"auto": RECON_LINE, "noise": NOISE_LINE}, **COMMON, "schema": 2}  # ... named "auto"
SCHEMA_3 = {"rules": {"recon": RECON_LINE, "noise": NOISE_LINE}, **COMMON, "schema": 3}  # no impulse term yet


@pytest.mark.parametrize("steep", [False, True])
def test_old_layouts_load_and_auto_picks_the_better_rule_from_their_curves(tmp_path: Path, steep: bool) -> None:
    points = [GROUPS[0], {**GROUPS[1], "curve": [40.0, 70.0, 20.0]}] if steep else GROUPS
    expected = make_calibration("ab" * 32, points, recommended="recon" if steep else "noise")
    schema_3 = {**SCHEMA_3, "recommended": expected.recommended}
    for number, layout in ((1, SCHEMA_1), (2, SCHEMA_2), (3, schema_3)):
        path = tmp_path / f"schema{number}.lambda.json"
        path.write_text(json.dumps({**layout, "points": points}))
        assert Calibration.load(path) == expected
        assert Calibration.load(path).noise.c == 0.0
    new = expected.save(tmp_path / "new.lambda.json")
    assert "a" not in json.loads(new.read_text()) and Calibration.load(new) == expected
    broken = tmp_path / "broken.lambda.json"
    broken.write_text(json.dumps({**SCHEMA_1, "noise": {"a": 1.0}}))
    with pytest.raises(UsageError, match=r"broken.lambda.json: noise.b is missing"):
        Calibration.load(broken)
    no_curves = tmp_path / "no_curves.lambda.json"
    no_curves.write_text(json.dumps({**SCHEMA_1, "points": [{k: v for k, v in GROUPS[0].items() if k != "curve"}]}))
    with pytest.raises(UsageError, match="curves"):
        Calibration.load(no_curves)


def test_old_layouts_give_the_lambdas_they_always_gave(
    tmp_path: Path, model: torch.nn.Module, mixed_batch: torch.Tensor
) -> None:
    """A file without the impulse term runs lambda = clamp(a * sigma + b) bit for bit as before it existed
    (the float64 line agrees to float32 rounding), for salt-and-pepper inputs too."""
    salted = mixed_batch.clone()
    salted[:, :, ::5, ::7] = 1.0
    x = model.normalize(torch.cat([mixed_batch, salted]))
    sigma = estimate_noise_sigma(torch.cat([mixed_batch, salted]).double()).numpy()
    for number, layout in ((1, SCHEMA_1), (2, SCHEMA_2), (3, {**SCHEMA_3, "recommended": "noise"})):
        path = tmp_path / f"schema{number}.lambda.json"
        path.write_text(json.dumps(layout))
        policy = Calibration.load(path).policy("auto")
        with torch.no_grad():
            lam = policy(model, x)
            before = (NOISE_LINE["a"] * noise_sigma(model, x) + NOISE_LINE["b"]).clamp(0.1, 1.4)  # the one-feature code
        assert torch.equal(lam, before)
        np.testing.assert_allclose(lam.numpy(), np.clip(8.0 * sigma + 0.1, 0.1, 1.4), atol=1e-5)


def test_shipped_calibrations_load_recommend_noise_and_stay_untouched(tmp_path: Path) -> None:
    weights = Path(__file__).resolve().parents[1] / "weights"
    shipped = sorted(weights.glob("*.lambda.json"))
    assert shipped
    for path in shipped:
        before = path.read_bytes()
        raw = json.loads(before)
        calibration = Calibration.load(path)
        lines = raw.get("rules", {"recon": raw, "noise": raw.get("noise")})
        assert calibration.recon == ReconErrorLambda(*(lines["recon"][key] for key in ("a", "b", "lo", "hi")))
        assert calibration.noise == NoiseLevelLambda(**lines["noise"])
        # the noise rule reads the higher mean accuracy off the file's own training-group curves
        assert calibration.recommended == "noise"
        assert calibration.policy("auto").name == "auto:noise"
        assert Calibration.load(calibration.save(tmp_path / path.name)) == calibration
        assert path.read_bytes() == before


def test_refit_without_a_corruption_never_sees_its_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three groups; leaving gaussian_noise out must refit on clean + contrast only (the lines through
    their two peaks), whatever gaussian_noise's curve says."""
    import sdnet_cli.lam.calibration as calibration_module

    grid = [0.1, 0.7, 1.4]
    points = [
        GROUPS[0],
        {"corruption": "contrast", "severity": 5, "error": 20.0, "noise": 0.05, "curve": [10.0, 20.0, 80.0]},
        {"corruption": "gaussian_noise", "severity": 5, "error": 50.0, "noise": 0.1, "curve": [99.0, 0.0, 0.0]},
    ]
    full = replace(make_calibration("ab" * 32, points), grid=grid, corruptions=["contrast", "gaussian_noise"])
    seen: list[list[float]] = []
    real_fit = calibration_module.fit_rule_for_accuracy

    def spy(features, curves, grid):  # type: ignore[no-untyped-def]
        seen.append([float(c) for c in np.asarray(curves)[:, 0]])
        return real_fit(features, curves, grid)

    monkeypatch.setattr(calibration_module, "fit_rule_for_accuracy", spy)
    refit = full.without(["gaussian_noise"])
    assert seen and all(99.0 not in first_values for first_values in seen)  # the held-out curve never reached a fit
    assert [p["corruption"] for p in refit.points] == ["clean", "contrast"] and refit.corruptions == ["contrast"]
    # two groups: each clamped line reaches both peaks (clean at 0.1, contrast at 1.4), which gaussian_noise's
    # curve (best at 0.1, between them) would have forbidden
    for rule, clean, contrast in ((refit.recon, 5.0, 20.0), (refit.noise, 0.01, 0.05)):
        lams = np.clip(rule.a * np.array([clean, contrast]) + rule.b, rule.lo, rule.hi)
        np.testing.assert_allclose(lams, [0.1, 1.4], atol=1e-9)
    with pytest.raises(UsageError, match="not among") as raised:
        full.without(["fog"])
    assert raised.value.parameter == "hold_out"


def test_oracles_of_a_correctness_matrix_known_by_construction() -> None:
    grid = [0.1, 0.5, 1.0]
    # 6 images; lambda 0.5 gets 4 right, 0.1 gets 3, 1.0 gets 2; images 0-4 are right at some lambda, 5 never
    correct = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0]], dtype=bool)
    assert per_cell_oracle(correct, grid) == (0.5, 4)
    assert per_input_oracle(correct) == 5
    assert oracle_scores(correct, grid) == OracleScores(n=6, cell_lam=0.5, cell_correct=4, input_correct=5)
    tie = np.array([[1, 0], [0, 1]], dtype=bool)
    assert per_cell_oracle(tie, [0.3, 0.2]) == (0.2, 1)  # a tie goes to the smaller lambda
    with pytest.raises(UsageError, match="boolean"):
        per_input_oracle(correct.astype(int))
    with pytest.raises(UsageError, match="grid"):
        per_cell_oracle(correct, grid[:2])


def test_accuracy_fit_passes_through_two_groups_peaks() -> None:
    """Two groups: a line can hit both peaks, so the accuracy-maximising line is the line through them."""
    grid = np.round(np.arange(0.1, 1.41, 0.1), 2)
    curves = np.stack([_peaked(grid, 0.3, 90, 30), _peaked(grid, 1.1, 60, 10)])
    a, b = fit_line_for_accuracy([1.0, 3.0], curves, grid)
    assert (a, b) == pytest.approx((0.4, -0.1), abs=1e-9)  # through (1, 0.3) and (3, 1.1)


def _peaked(grid: np.ndarray, peak: float, height: float, steepness: float) -> np.ndarray:
    return height - steepness * np.abs(grid - peak)


def test_accuracy_fit_reaches_every_peak_a_line_can_reach() -> None:
    grid = np.round(np.arange(0.1, 1.41, 0.1), 2)
    features = [1.0, 2.0, 3.0]
    curves = np.stack([_peaked(grid, peak, 80, 20) for peak in (0.2, 0.6, 1.0)])  # collinear peaks
    a, b = fit_line_for_accuracy(features, curves, grid)
    assert (a, b) == pytest.approx((0.4, -0.2), abs=1e-9)


def test_accuracy_fit_weighs_misses_by_their_cost_unlike_least_squares() -> None:
    """Groups 1 and 2 lose 40 points per unit of lambda away from their peaks (0.1 and 0.8); group 3
    peaks at 0.2 but loses only 0.5 per unit. Moving the line off either steep peak by d costs 40 d
    there and wins at most 0.5 * 2 d at group 3 (its lambda moves at most twice as far), so the best
    line is the one through (1, 0.1) and (2, 0.8): slope 0.7, intercept -0.6, with group 3 clamped
    at 1.4. Least squares through the three best lambdas is nearly flat instead (slope 0.05)."""
    grid = np.round(np.arange(0.1, 1.41, 0.1), 2)
    curves = np.stack([_peaked(grid, 0.1, 85, 40), _peaked(grid, 0.8, 40, 40), _peaked(grid, 0.2, 80, 0.5)])
    assert fit_line_for_accuracy([1.0, 2.0, 3.0], curves, grid) == pytest.approx((0.7, -0.6), abs=1e-9)
    assert fit_line([1.0, 2.0, 3.0], [0.1, 0.8, 0.2]) == pytest.approx(np.polyfit([1, 2, 3], [0.1, 0.8, 0.2], 1))
    assert fit_line([1.0, 2.0, 3.0], [0.1, 0.8, 0.2])[0] == pytest.approx(0.05)


def test_accuracy_fit_refuses_what_cannot_define_a_line() -> None:
    grid = [0.1, 0.5]
    with pytest.raises(UsageError, match="different x"):
        fit_line_for_accuracy([2.0, 2.0], np.array([[1.0, 2.0], [2.0, 1.0]]), grid)
    with pytest.raises(UsageError, match="two grid lambdas"):
        fit_line_for_accuracy([1.0, 2.0], np.array([[1.0], [2.0]]), [0.1])
    with pytest.raises(UsageError, match="two groups"):
        fit_line_for_accuracy([1.0], np.array([[1.0, 2.0]]), grid)
