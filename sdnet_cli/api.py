"""The Python API: one keyword-only function per job, each returning a ``Report``.

A notebook uses it the way RobustBench's ``benchmark()`` is used::

    from sdnet_cli import api
    report = api.evaluate_corruptions(model="sdnet18", corruptions=["gaussian_noise"], severities=[3], n_examples=500)
    report.to_frame()          # a pandas DataFrame, one row per cell
    report.write("reports")    # JSON + CSV + Markdown

Nothing here prints. Long work reports to ``progress`` (any object with ``task(description, total)``
returning an ``advance(k)`` callable, and ``note(text)``), so every front end shows the same totals.
The ``sdnet`` CLI only parses options, calls these functions and prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import Interrupted, UsageError
from .reports import Report, base_meta, check_stem

if TYPE_CHECKING:
    from .evaluate import Runtime


class Progress(Protocol):
    """Where long work reports what it is doing."""

    def task(self, description: str, total: int) -> Callable[[int], None]: ...

    def note(self, text: str) -> None: ...


class Silent:
    """Progress that goes nowhere (the default)."""

    def task(self, description: str, total: int) -> Callable[[int], None]:
        return lambda k: None

    def note(self, text: str) -> None:
        pass


def _at_least_one(value: int | None, parameter: str) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{parameter} must be >= 1, got {value}", parameter=parameter)


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise UsageError(f"seed must be in 0 .. 2**32-1, got {seed}", parameter="seed")


def _strings(values: str | int | Sequence[str | int]) -> list[str]:
    return [str(values)] if isinstance(values, (str, int)) else [str(v) for v in values]


def _load(
    model: str,
    checkpoint: Path | None,
    dataset: str,
    weights_dir: Path | None,  # type: ignore[no-untyped-def]
    n_steps: int | None = None,
    threat: str = "corruptions",
    model_dir: Path | None = None,
):
    """(Classifier, ModelInfo) of what the user named; the dataset and checkpoint path are checked first,
    so a typo is reported as itself, not as a missing checkpoint. ``n_steps`` overrides the checkpoint's
    FISTA step count."""
    from .data.datasets import dataset_spec
    from .models import load_model

    dataset_spec(dataset)
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise UsageError(f"checkpoint {checkpoint} is a directory; give the checkpoint file", parameter="checkpoint")
    return load_model(
        model,
        Path(checkpoint) if checkpoint is not None else None,
        dataset,
        weights_dir,
        n_steps=n_steps,
        threat=threat,
        model_dir=model_dir,
    )


def _require_lambda(classifier: Any, info: Any) -> None:
    """Lambda sweeps, rules and hold-outs need a model with CSC layers (an SDNet)."""
    if not classifier.csc_layers:
        raise UsageError(
            f"{info.name} has no CSC layers, so it has no lambda to sweep or choose; use an SDNet model (e.g. sdnet18)",
            parameter="model",
        )


def _prepare_cells(source: Any, corruptions: Sequence[str], progress: Progress) -> None:
    """Generate (once, cached) the corrupted images the cache still lacks."""
    from . import distributed

    missing = source.missing_images(corruptions)
    advance = (
        progress.task(f"generating {source.spec.corrupted.title} (seed {source.seed})", missing) if missing else None
    )
    distributed.in_turn(lambda: source.prepare(corruptions, advance))


def evaluate_corruptions(
    *,
    model: str = "sdnet18",
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
    corruptions: str | Sequence[str] = ("none",),
    severities: str | int | Sequence[str | int] = ("all",),
    lam: float | str | None = None,
    calibration: Path | None = None,
    sweep: Path | None = None,
    cifar_c_dir: Path | None = None,
    n_examples: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    weights_dir: Path | None = None,
    n_steps: int | None = None,
    compile: bool = False,
    adapt: str = "none",
    threat: str = "corruptions",
    model_dir: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Accuracy on the clean test split and on every (corruption, severity) cell, plus their mean.

    ``lam``: the test-time lambda of every CSC layer (a number; ``"recon"``/``"noise"``, the per-input
    rules calibrated by ``sweep_lambda(fit=True)``, or ``"auto"``, the one the calibration recommends; ``"oracle"``, the best lambda of each cell from the
    sweep report ``sweep``, which uses labels). Corrupted images come from ``cifar_c_dir`` (an official
    release) or are generated with ``seed`` and cached in ``cache_dir``. ImageNet also gets mCE.
    ``n_steps``: FISTA steps of the CSC layers, overriding the checkpoint's (weights trained with another count).
    ``compile``: run inference through ``torch.compile`` (a one-off compile, then faster; see ``Runtime``).
    ``adapt``: ``bn`` or ``tent``, test-time adaptation to each cell's batches of ``batch_size`` (default
    200) test images (see ``sdnet_cli.adapt``); rows say so. ``threat``/``model_dir``: for
    ``model="robustbench:<name>"`` (see ``models.zoo``).
    """
    from . import distributed
    from .adapt import make_adaptation
    from .data.cells import CellSource, expand_cells, parse_corruptions, parse_severities
    from .evaluate import Runtime, evaluate_cells
    from .lam import ORACLE, lambda_label, oracle_lambdas, resolve_policy
    from .metrics import corruption_errors

    progress = progress or Silent()
    _at_least_one(n_examples, "n_examples")
    _at_least_one(batch_size, "batch_size")
    _check_seed(seed)
    names = parse_corruptions(_strings(corruptions))
    cells = expand_cells(names, parse_severities(_strings(severities)))
    oracle = lam == ORACLE
    if oracle and sweep is None:
        raise UsageError("lam='oracle' needs sweep, a sweep-lambda JSON report of this checkpoint", parameter="sweep")
    adaptation = make_adaptation(adapt, batch_size)
    if adaptation is not None and compile:
        raise UsageError(
            "adapt runs the model eagerly (its BatchNorm layers change); drop compile", parameter="compile"
        )
    runtime = Runtime.create(distributed.init(device), precision, compile)
    batch_size = adaptation.batch_size if adaptation is not None else batch_size or runtime.eval_batch_size
    classifier, info = _load(model, checkpoint, dataset, weights_dir, n_steps, threat, model_dir)
    if adaptation is not None:
        adaptation.check(classifier)
    cell_policy = oracle_lambdas(sweep, info, cells) if oracle else None  # type: ignore[arg-type]
    policy = None if oracle else resolve_policy(lam, classifier, info, calibration)
    source = CellSource(data_dir, cifar_c_dir, cache_dir, seed=seed, n_examples=n_examples, dataset=dataset)
    source.validate(names)  # every file the run will read, before the first forward
    runtime.prepare(classifier)
    _prepare_cells(source, names, progress)
    advance = progress.task(f"evaluating {info.name}", distributed.shard_size(source.n, batch_size) * len(cells))
    with classifier.using(policy):
        base = {"model": info.name, "dataset": dataset, "lam": ORACLE if oracle else lambda_label(classifier)}
        rows = evaluate_cells(classifier, cells, source, runtime, base, batch_size, advance, cell_policy, adaptation)
    summary = corruption_errors(rows, source.spec.ce_baseline, source.spec.ce_baseline_clean)
    meta = base_meta(
        "eval",
        seed,
        model=info.as_meta(),
        checkpoint_sha256=info.sha256,
        data_source=source.describe(),
        n_examples=source.n,
        batch_size=batch_size,
        lam_policy=f"best lambda per cell from {sweep}" if oracle else repr(policy or "training lambda"),
        oracle=oracle,
        adaptation=adaptation.describe() if adaptation is not None else None,
        corruption_errors=summary,
        distributed=distributed.describe(),
        **runtime.describe(),
    )
    return Report(rows, meta, name=f"eval-{info.name}", title=f"sdnet eval: {info.name}")


def attack(
    *,
    model: str = "sdnet18",
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
    attack: str = "autoattack",
    norm: str = "Linf",
    eps: str | float | Sequence[str | float] = ("8/255",),
    steps: int | None = None,
    restarts: int | None = None,
    version: str = "standard",
    lam: float | str | None = None,
    calibration: Path | None = None,
    n_examples: int | None = None,
    batch_size: int | None = None,
    pool_batches: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    data_dir: Path | None = None,
    weights_dir: Path | None = None,
    name: str | None = None,
    state_dir: Path | None = None,
    resume: bool = False,
    save_adversarials: Path | None = None,
    n_steps: int | None = None,
    adapt: str = "none",
    threat: str = "corruptions",
    model_dir: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Robust accuracy of the deployed model (lambda policy included) under one attack or standard
    AutoAttack, on the first ``n_examples`` test images, at every ``eps``.

    ``batch_size``: images per attacked batch (default 128). ``pool_batches``: the images are attacked in
    pools of this many batches (default 8): before each attack the points still standing in a pool are
    gathered into full batches; results depend on it as on ``batch_size``. ``state_dir``: finished pools
    are saved to ``<state_dir>/<name>.state.json``, so an interrupted run continues with ``resume`` (the
    file is removed once the run completes); ``name`` is the report's file stem (default
    ``attack-<model>-<attack>``). ``save_adversarials``: an ``.npz`` of the examples. ``n_steps``: FISTA
    steps of the CSC layers, overriding the checkpoint's. ``threat``/``model_dir``: for
    ``model="robustbench:<name>"``. ``adapt`` other than ``none`` is refused (out of scope).
    """
    from . import distributed
    from .attacks import requantized_robust_accuracy
    from .attacks import save_adversarials as save_npz
    from .lam import ORACLE, resolve_policy

    progress = progress or Silent()
    if adapt != "none":
        raise UsageError(
            f"adapt={adapt!r}: attacks on test-time-adapted models are out of scope (the attack would have to "
            "differentiate through the adaptation); use adapt with evaluate_corruptions (sdnet eval --adapt)",
            parameter="adapt",
        )
    if save_adversarials is not None and Path(save_adversarials).suffix != ".npz":
        raise UsageError(f"save_adversarials must end in .npz, got {save_adversarials}", parameter="save_adversarials")
    if lam == ORACLE:
        raise UsageError(
            "lam='oracle' picks lambda per corruption cell using labels; it is no deployed pipeline to attack",
            parameter="lam",
        )
    setup = _AttackSetup.create(
        model,
        checkpoint,
        dataset,
        weights_dir,
        attack,
        norm,
        eps,
        steps,
        restarts,
        version,
        n_examples,
        batch_size,
        pool_batches,
        device,
        precision,
        seed,
        data_dir,
        n_steps,
        threat,
        model_dir,
    )
    classifier, info = setup.classifier, setup.info
    policy = resolve_policy(lam, classifier, info, calibration)
    stem = check_stem(name or f"attack-{info.name}-{setup.config.attack}")
    advance = progress.task(f"{setup.config.attack} on {info.name}", setup.work_units())
    with classifier.using(policy):
        results, rows = setup.run(advance, state_dir, stem, resume, keep_adv=save_adversarials is not None)
        saved = None
        if save_adversarials is not None and distributed.is_main():
            saved = {
                "path": str(save_npz(Path(save_adversarials), results, setup.labels)),
                "format": "float32 NHWC in [0,1], not rounded (rounding to uint8 can undo an attack)",
                "uint8_robust_accuracy": requantized_robust_accuracy(
                    classifier, results, setup.labels, setup.runtime, setup.batch_size
                ),
            }
    meta = setup.meta(
        "attack",
        components=results.settings,
        lam_policy=repr(policy or "training lambda"),
        lambda_gradient=results.diagnostics.lambda_gradient,
        diagnostics=results.diagnostics.as_meta(),
        saved_adversarials=saved,
    )
    return Report(
        rows, meta, name=stem, title=f"sdnet attack: {info.name}, {setup.config.attack} ({setup.config.norm})"
    )


def attack_vs_lambda(
    *,
    model: str = "sdnet18",
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
    lams: str | Sequence[float] = "0.1:1.0:0.1",
    attack: str = "pgd",
    norm: str = "Linf",
    eps: str | float | Sequence[str | float] = ("1/255",),
    steps: int | None = None,
    restarts: int | None = None,
    version: str = "standard",
    baseline_model: str | None = None,
    n_examples: int | None = None,
    batch_size: int | None = None,
    pool_batches: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    data_dir: Path | None = None,
    weights_dir: Path | None = None,
    name: str | None = None,
    state_dir: Path | None = None,
    resume: bool = False,
    n_steps: int | None = None,
    progress: Progress | None = None,
) -> Report:
    """Clean and robust accuracy for every test lambda of ``lams``, each attacked as deployed at that lambda.

    SDNet's paper claims robustness to adversarial perturbations grows with the test-time lambda (Dai et
    al., NeurIPS 2022); this measures it under an adaptive attack. Every lambda is a separate run of
    ``attack`` (same images, seed and batches as ``attack(lam=...)``, so each point equals that call), with
    its own gradient-masking diagnostics in the rows and meta. ``baseline_model`` adds that model's rows
    (lam: its own) as a reference; the report's extra is the accuracy-vs-lambda plot. ``n_steps``: FISTA
    steps of ``model``'s CSC layers, overriding its checkpoint's (not applied to ``baseline_model``).
    """
    from .lam import FixedLambda, lambda_grid, lambda_label

    progress = progress or Silent()
    grid = lambda_grid(lams)
    setup = _AttackSetup.create(
        model,
        checkpoint,
        dataset,
        weights_dir,
        attack,
        norm,
        eps,
        steps,
        restarts,
        version,
        n_examples,
        batch_size,
        pool_batches,
        device,
        precision,
        seed,
        data_dir,
        n_steps,
    )
    _require_lambda(setup.classifier, setup.info)
    references = []
    if baseline_model is not None:
        references.append(
            _AttackSetup.create(
                baseline_model,
                None,
                dataset,
                weights_dir,
                attack,
                norm,
                eps,
                steps,
                restarts,
                version,
                n_examples,
                batch_size,
                pool_batches,
                device,
                precision,
                seed,
                data_dir,
            )
        )
    stem = check_stem(name or f"sweep-lambda-{setup.info.name}-{setup.config.attack}")
    advance = progress.task(
        f"{setup.config.attack} on {setup.info.name} at {len(grid)} lambdas",
        setup.work_units() * (len(grid) + len(references)),
    )
    rows: list[dict[str, Any]] = []
    diagnostics: dict[str, Any] = {}
    for lam in grid:
        with setup.classifier.using(FixedLambda(lam)):
            results, found = setup.run(advance, state_dir, f"{stem}.lam{lam:g}", resume)
        diagnostics[f"{lam:g}"] = results.diagnostics.as_meta()
        rows += [{**row, "masking_warnings": len(diagnostics[f"{lam:g}"]["warnings"])} for row in found]
    for reference in references:
        results, found = reference.run(advance, state_dir, f"{stem}.{reference.info.name}", resume)
        diagnostics[reference.info.name] = results.diagnostics.as_meta()
        rows += [
            {**row, "lam": lambda_label(reference.classifier), "masking_warnings": len(results.diagnostics.warnings())}
            for row in found
        ]
    meta = setup.meta(
        "sweep-lambda-attack",
        grid=grid,
        baseline_model=references[0].info.as_meta() if references else None,
        components=results.settings,
        diagnostics=diagnostics,
    )

    def plot(out_dir: Path, file_stem: str) -> list[Path]:
        from .sweep import save_attack_sweep_plot

        return [save_attack_sweep_plot(rows, setup.info.name, out_dir / f"{file_stem}.png")]

    report = Report(
        rows,
        meta,
        name=stem,
        title=f"sdnet sweep-lambda --attack: {setup.info.name}, {setup.config.attack}",
        extras=[plot],
    )
    report.markdown = _with_diagnostics(report, diagnostics, plot_name=f"{stem}.png")
    return report


def _with_diagnostics(report: Report, diagnostics: dict[str, Any], plot_name: str) -> str:
    """The default Markdown plus, per lambda, the gradient-masking warnings (or that there were none)."""
    from .reports import render_markdown

    lines = [
        render_markdown(report.title, report.rows, report.meta),
        f"![accuracy vs lambda]({plot_name})",
        "",
        "## Gradient-masking diagnostics per lambda",
        "",
    ]
    for key, found in diagnostics.items():
        warnings = found["warnings"]
        lines.append(
            f"- {key}: "
            + (
                "; ".join(warnings)
                if warnings
                else f"no warning signs (zero-gradient fraction {found['zero_gradient_fraction']:.3f})"
            )
        )
    return "\n".join(lines) + "\n"


class _AttackSetup:
    """A loaded model, its test images and a validated attack config: what ``attack`` and
    ``attack_vs_lambda`` share, so a sweep point is exactly an ``attack`` call."""

    def __init__(
        self,
        classifier: Any,
        info: Any,
        config: Any,
        images: Any,
        labels: Any,
        runtime: Runtime,
        seed: int,
        batch_size: int,
        pool_batches: int,
        dataset: str,
    ) -> None:
        self.classifier, self.info, self.config = classifier, info, config
        self.images, self.labels, self.runtime = images, labels, runtime
        self.seed, self.batch_size, self.pool_batches, self.dataset = seed, batch_size, pool_batches, dataset

    @classmethod
    def create(
        cls,
        model: str,
        checkpoint: Path | None,
        dataset: str,
        weights_dir: Path | None,
        attack: str,
        norm: str,
        eps: Any,
        steps: int | None,
        restarts: int | None,
        version: str,
        n_examples: int | None,
        batch_size: int | None,
        pool_batches: int | None,
        device: str,
        precision: str,
        seed: int,
        data_dir: Path | None,
        n_steps: int | None = None,
        threat: str = "corruptions",
        model_dir: Path | None = None,
    ) -> _AttackSetup:
        from . import distributed
        from .attacks import AttackConfig
        from .attacks.config import BATCH_SIZE, POOL_BATCHES
        from .data.datasets import dataset_spec
        from .evaluate import Runtime

        _at_least_one(n_examples, "n_examples")
        _at_least_one(batch_size, "batch_size")
        batch_size = BATCH_SIZE if batch_size is None else batch_size
        pool_batches = POOL_BATCHES if pool_batches is None else pool_batches
        _at_least_one(pool_batches, "pool_batches")
        _check_seed(seed)
        config = AttackConfig.create(
            attack=attack,
            norm=norm,
            eps=[eps] if isinstance(eps, (str, float, int)) else list(eps),
            steps=steps,
            restarts=restarts,
            version=version,
        )
        runtime = Runtime.create(distributed.init(device), precision)
        classifier, info = _load(model, checkpoint, dataset, weights_dir, n_steps, threat, model_dir)
        images, labels = dataset_spec(dataset).load(data_dir, "test")
        return cls(
            classifier,
            info,
            config,
            images[:n_examples],
            labels[:n_examples],
            runtime,
            seed,
            batch_size,
            pool_batches,
            dataset,
        )

    def work_units(self) -> int:
        return self.config.work_units(len(self.images), self.batch_size, self.pool_batches)

    def run(
        self, advance: Callable[[int], None], state_dir: Path | None, stem: str, resume: bool, keep_adv: bool = False
    ) -> tuple[Any, list[dict[str, Any]]]:
        """(AttackResults, rows) of the attack on the classifier with its policy as set by the caller;
        progress saved under ``<state_dir>/<stem>.state.json`` when a folder is given."""
        from . import distributed
        from .attacks import run_attack
        from .attacks.state import remove_state, saved_pools
        from .lam import lambda_label

        state_path = (
            Path(state_dir) / f"{stem}{distributed.rank_suffix()}.state.json" if state_dir is not None else None
        )
        try:
            results = run_attack(
                self.classifier,
                self.images,
                self.labels,
                self.config,
                seed=self.seed,
                runtime=self.runtime,
                batch_size=self.batch_size,
                pool_batches=self.pool_batches,
                progress=advance,
                state_path=state_path,
                resume=resume,
                keep_adv=keep_adv,
                fingerprint={"model": self.info.name, "checkpoint_sha256": self.info.sha256, "dataset": self.dataset},
            )
        except KeyboardInterrupt:
            saved = saved_pools(state_path) if state_path is not None else 0
            if saved:
                pool_size = self.batch_size * self.pool_batches
                pools = -(-len(self.images) // pool_size)
                raise Interrupted(
                    f"{saved} finished pools of {pools} ({pool_size} images each) "
                    f"are saved in {state_path}; the same call with resume=True continues",
                    parameter="resume",
                ) from None
            raise
        if state_path is not None:
            remove_state(state_path)
        return results, results.rows(
            {"model": self.info.name, "dataset": self.dataset, "lam": lambda_label(self.classifier)}
        )

    def meta(self, command: str, **extra: Any) -> dict[str, Any]:
        from . import distributed

        return base_meta(
            command,
            self.seed,
            model=self.info.as_meta(),
            checkpoint_sha256=self.info.sha256,
            data_source={"dataset": self.dataset, "split": "test", "first_n": len(self.images)},
            n_examples=len(self.images),
            batch_size=self.batch_size,
            pool_size=self.batch_size * self.pool_batches,
            **self.config.as_meta(),
            protocol="sample-wise: each attack runs only on points still classified correctly and each adversarial "
            "example is judged once by the deployed model; robust = correct and fooled by no attack; over an eps sweep "
            "a point fooled at a smaller eps counts as fooled at larger ones; eps 0 is the clean accuracy; before each "
            "attack the points still standing in a pool of pool_size images are gathered into full batches",
            **extra,
            distributed=distributed.describe(),
            **self.runtime.describe(),
        )


def sweep_lambda(
    *,
    model: str = "sdnet18",
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
    corruptions: str | Sequence[str] = ("gaussian_noise",),
    severities: str | int | Sequence[str | int] = ("all",),
    lams: str | Sequence[float] = "0.1:1.4:0.1",
    fit: bool = False,
    fit_corruptions: str | Sequence[str] | None = None,
    fit_n: int = 1000,
    calibration_out: Path | None = None,
    cifar_c_dir: Path | None = None,
    n_examples: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    weights_dir: Path | None = None,
    n_steps: int | None = None,
    compile: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Accuracy and the stem's mean reconstruction error for every test lambda on every cell.

    ``fit``: also calibrate the per-input rules of ``lam="recon"``/``"noise"`` on corrupted TRAINING images
    (never the test set), record which one ``lam="auto"`` runs (the higher mean accuracy on the calibration
    groups) and write the calibration beside the checkpoint (or ``calibration_out``).
    The report's extras are the accuracy-vs-lambda and best-lambda-vs-error plots. ``n_steps``: FISTA steps
    of the CSC layers, overriding the checkpoint's. ``compile``: inference through ``torch.compile``.
    """
    from .data.cells import CellSource, expand_cells, parse_corruptions, parse_severities
    from .data.datasets import dataset_spec
    from .evaluate import Runtime
    from .lam import lambda_grid, store_calibration
    from .sweep import calibrate, cell_points, save_sweep_plots
    from .sweep import sweep_lambda as sweep_cells

    progress = progress or Silent()
    _at_least_one(n_examples, "n_examples")
    _at_least_one(batch_size, "batch_size")
    _check_seed(seed)
    if fit_n < 2:
        raise UsageError(f"fit_n must be >= 2, got {fit_n}", parameter="fit_n")
    grid = lambda_grid(lams)
    names = parse_corruptions(_strings(corruptions))
    severity_list = parse_severities(_strings(severities))
    cells = expand_cells(names, severity_list)
    fit_names = parse_corruptions(_strings(fit_corruptions)) if fit_corruptions else names
    runtime = Runtime.create(device, precision, compile)
    batch_size = batch_size or runtime.eval_batch_size
    classifier, info = _load(model, checkpoint, dataset, weights_dir, n_steps)
    _require_lambda(classifier, info)
    runtime.prepare(classifier)
    spec = dataset_spec(dataset)
    train = spec.load(data_dir, "train") if fit else None
    source = CellSource(data_dir, cifar_c_dir, cache_dir, seed=seed, n_examples=n_examples, dataset=dataset)
    source.validate(names)
    _prepare_cells(source, names, progress)
    advance = progress.task(f"sweeping {info.name}", source.n * len(cells) * len(grid))
    base = {"model": info.name, "dataset": dataset}
    rows = sweep_cells(classifier, cells, source, runtime, grid, base, batch_size, advance)
    points = cell_points(classifier, cells, source, runtime, rows, batch_size)
    calibration = calibration_path = None
    if train is not None:
        groups = len(expand_cells(fit_names, severity_list))
        advance = progress.task("calibrating on training images", min(fit_n, len(train[0])) * groups * len(grid))
        calibration = calibrate(
            classifier,
            *train,
            runtime,
            grid,
            fit_names,
            severity_list,
            fit_n,
            seed,
            advance,
            batch_size,
            info.sha256 or "",
            spec.strength,
        )
        calibration_path = store_calibration(calibration, info, calibration_out)
    meta = base_meta(
        "sweep-lambda",
        seed,
        model=info.as_meta(),
        checkpoint_sha256=info.sha256,
        data_source=source.describe(),
        n_examples=source.n,
        batch_size=batch_size,
        grid=grid,
        points=points,
        calibration=str(calibration_path) if calibration_path else None,
        calibration_rules=calibration.to_json().get("rules") if calibration is not None else None,
        calibration_formulas={name: rule.formula for name, rule in calibration.rules.items()} if calibration else None,
        calibration_recommended=calibration.recommended if calibration is not None else None,
        **runtime.describe(),
    )

    def plots(out_dir: Path, stem: str) -> list[Path]:
        return save_sweep_plots(rows, points, out_dir, stem, info.name, calibration)

    return Report(
        rows, meta, name=f"sweep-lambda-{info.name}", title=f"sdnet sweep-lambda: {info.name}", extras=[plots]
    )


def compare_lambda_rules(
    *,
    model: str = "sdnet18",
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
    corruptions: str | Sequence[str] = ("gaussian_noise",),
    severities: str | int | Sequence[str | int] = ("all",),
    rules: Sequence[float | str] = (0.1, "recon", "noise", "auto"),
    lams: str | Sequence[float] = "0.1:1.4:0.05",
    calibration: Path | None = None,
    cifar_c_dir: Path | None = None,
    n_examples: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    weights_dir: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Every lambda of ``rules`` (numbers, ``"recon"``, ``"noise"``, ``"auto"``) on the same cells, beside
    the per-cell and per-input oracles computed from one sweep of ``lams`` over the same images.

    The oracles use the test labels (rows say ``uses_labels``): they are the ceilings of one lambda per
    cell and of one grid lambda per input. Per-input rules' rows carry the chosen lambda's mean and
    10th/90th percentiles. The Markdown leads with each method's gain over the first of ``rules``.
    """
    from .data.cells import CellSource, expand_cells, parse_corruptions, parse_severities
    from .evaluate import Runtime
    from .lam import lambda_grid, resolve_policy
    from .reports import markdown_table, render_markdown
    from .sweep import ORACLE_NOTE, compare_rules, rule_summary

    progress = progress or Silent()
    _at_least_one(n_examples, "n_examples")
    _at_least_one(batch_size, "batch_size")
    _check_seed(seed)
    if not rules:
        raise UsageError("rules needs at least one lambda or rule name", parameter="rules")
    grid = lambda_grid(lams)
    names = parse_corruptions(_strings(corruptions))
    cells = expand_cells(names, parse_severities(_strings(severities)))
    runtime = Runtime.create(device, precision)
    batch_size = batch_size or runtime.eval_batch_size
    classifier, info = _load(model, checkpoint, dataset, weights_dir)
    _require_lambda(classifier, info)
    policies = [resolve_policy(rule, classifier, info, calibration) for rule in rules]
    runtime.prepare(classifier)
    source = CellSource(data_dir, cifar_c_dir, cache_dir, seed=seed, n_examples=n_examples, dataset=dataset)
    source.validate(names)
    _prepare_cells(source, names, progress)
    advance = progress.task(
        f"{len(rules)} rules and a {len(grid)}-lambda sweep on {info.name}",
        source.n * len(cells) * (len(rules) + len(grid)),
    )
    rows = compare_rules(
        classifier,
        cells,
        source,
        runtime,
        policies,
        grid,
        {"model": info.name, "dataset": dataset},
        batch_size,
        advance,
    )
    summary = rule_summary(rows, rows[0]["lam"])
    meta = base_meta(
        "lambda-rules",
        seed,
        model=info.as_meta(),
        checkpoint_sha256=info.sha256,
        data_source=source.describe(),
        n_examples=source.n,
        batch_size=batch_size,
        grid=grid,
        rules=[str(rule) for rule in rules],
        policies=[repr(p) for p in policies],
        summary=summary,
        oracle_note=ORACLE_NOTE,
        **runtime.describe(),
    )
    title = f"sdnet lambda rules: {info.name}"
    wide = _wide_accuracy(rows)
    markdown = "\n".join(
        [
            render_markdown(title, summary, meta).rstrip(),
            "",
            f"Gain and clean change: accuracy points against "
            f"`{rows[0]['lam']}`; corrupted_mean: mean over the corrupted cells. {ORACLE_NOTE}",
            "",
            "## Accuracy per cell (%)",
            "",
            markdown_table(wide),
            "",
            "## All rows",
            "",
            markdown_table(rows),
            "",
        ]
    )
    return Report(rows, meta, name=f"lambda-rules-{info.name}", title=title, markdown=markdown)


def _wide_accuracy(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell, a column of accuracy per method (``lam``)."""
    table: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in rows:
        table.setdefault((r["corruption"], r["severity"]), {"corruption": r["corruption"], "severity": r["severity"]})[
            str(r["lam"])
        ] = r["accuracy"]
    return list(table.values())


def lambda_hold_out(
    *,
    model: str = "sdnet18",
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
    hold_out: str | Sequence[str] = ("all", "extra"),
    rule: str = "auto",
    reference_lam: float = 0.1,
    severities: str | int | Sequence[str | int] = ("all",),
    calibration: Path | None = None,
    fit_corruptions: str | Sequence[str] = ("all", "extra"),
    fit_n: int = 1000,
    fit_lams: str | Sequence[float] = "0.1,0.2,0.3,0.4,0.6,0.8,1.0,1.2,1.4",
    calibration_out: Path | None = None,
    cifar_c_dir: Path | None = None,
    n_examples: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    weights_dir: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Does the label-free rule work on corruptions it was not calibrated on? For each corruption of
    ``hold_out`` in turn, ``rule`` refitted without that corruption's training groups (clean and the other
    groups stay) is evaluated on its test cells, beside the same rule fitted with it and ``reference_lam``.

    The calibration sweep over the groups runs once (on ``fit_n`` corrupted TRAINING images per group of
    ``fit_corruptions``, at ``fit_lams``; written to ``calibration_out`` when given), or is read from
    ``calibration`` (a file whose groups include every held-out corruption); each held-out line is refitted
    from the stored group curves. The Markdown leads with one row per held-out corruption.
    """
    from .data.cells import CLEAN, CellSource, parse_corruptions, parse_severities
    from .data.datasets import dataset_spec
    from .evaluate import Runtime
    from .lam import AUTO, RULES, lambda_grid, load_calibration
    from .reports import markdown_table, render_markdown
    from .sweep import calibrate, hold_out_summary
    from .sweep import hold_out as run_hold_out

    progress = progress or Silent()
    _at_least_one(n_examples, "n_examples")
    _at_least_one(batch_size, "batch_size")
    _check_seed(seed)
    if rule != AUTO and rule not in RULES:
        raise UsageError(f"rule must be {AUTO!r} or one of {', '.join(RULES)}, got {rule!r}", parameter="rule")
    if fit_n < 2:
        raise UsageError(f"fit_n must be >= 2, got {fit_n}", parameter="fit_n")
    held = [c for c in parse_corruptions(_strings(hold_out)) if c != CLEAN]
    if not held:
        raise UsageError("hold_out needs at least one corruption", parameter="hold_out")
    severity_list = parse_severities(_strings(severities))
    runtime = Runtime.create(device, precision)
    batch_size = batch_size or runtime.eval_batch_size
    classifier, info = _load(model, checkpoint, dataset, weights_dir)
    _require_lambda(classifier, info)
    runtime.prepare(classifier)
    source = CellSource(data_dir, cifar_c_dir, cache_dir, seed=seed, n_examples=n_examples, dataset=dataset)
    source.validate(held)
    if calibration is not None:
        full = load_calibration(info, Path(calibration))
    else:
        spec = dataset_spec(dataset)
        train = spec.load(data_dir, "train")
        fit_names = [c for c in parse_corruptions(_strings(fit_corruptions)) if c != CLEAN]
        fit_grid = lambda_grid(fit_lams)
        advance = progress.task(
            "calibrating on training images", min(fit_n, len(train[0])) * (1 + len(fit_names) * 5) * len(fit_grid)
        )
        full = calibrate(
            classifier,
            *train,
            runtime,
            fit_grid,
            fit_names,
            [1, 2, 3, 4, 5],
            fit_n,
            seed,
            advance,
            batch_size,
            info.sha256 or "",
            spec.strength,
        )
        if calibration_out is not None:
            full.save(Path(calibration_out))
    missing = [c for c in held if c not in full.corruptions]
    if missing:
        raise UsageError(
            f"the calibration has no training groups of {', '.join(missing)} to hold out; include them "
            "in fit_corruptions",
            parameter="hold_out",
        )
    _prepare_cells(source, held, progress)
    advance = progress.task(f"held-out evaluation on {info.name}", source.n * len(held) * len(severity_list) * 3)
    rows = run_hold_out(
        classifier,
        full,
        held,
        source,
        runtime,
        severity_list,
        {"model": info.name, "dataset": dataset},
        rule,
        reference_lam,
        batch_size,
        advance,
    )
    summary = hold_out_summary(rows)
    meta = base_meta(
        "lambda-hold-out",
        seed,
        model=info.as_meta(),
        checkpoint_sha256=info.sha256,
        data_source=source.describe(),
        n_examples=source.n,
        batch_size=batch_size,
        rule=rule,
        reference_lam=reference_lam,
        calibration=full.to_json(),
        calibration_file=str(calibration or calibration_out or ""),
        summary=summary,
        **runtime.describe(),
    )
    title = f"sdnet lambda hold-out: {info.name}, rule {rule}"
    note = (
        f"Per held-out corruption: mean test accuracy over severities {', '.join(map(str, severity_list))} at "
        f"lambda {reference_lam:g}, and the gain (points) of rule `{rule}` over it when the corruption's training "
        "groups are in the calibration and when they are left out (refitted from the stored group curves of clean "
        "and the other corruptions). kept = held-out gain / in-calibration gain. No test labels choose anything."
    )
    markdown = "\n".join(
        [render_markdown(title, summary, meta).rstrip(), "", note, "", "## All rows", "", markdown_table(rows), ""]
    )
    return Report(rows, meta, name=f"lambda-hold-out-{info.name}", title=title, markdown=markdown)


def generate_corruptions(
    *,
    out_dir: Path,
    dataset: str = "cifar10",
    corruptions: str | Sequence[str] = ("all", "extra"),
    n_examples: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    data_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write a seeded corruption benchmark of the test split in the official release layout
    (CIFAR-10-C / CIFAR-100-C ``.npy`` files, ImageNet-C folders) to ``out_dir``."""
    from .data.cells import CLEAN, parse_corruptions
    from .data.datasets import dataset_spec

    progress = progress or Silent()
    _at_least_one(n_examples, "n_examples")
    _at_least_one(workers, "workers")
    _check_seed(seed)
    spec = dataset_spec(dataset)
    names = [c for c in parse_corruptions(_strings(corruptions)) if c != CLEAN]
    if not names:
        raise UsageError("nothing to generate: give at least one corruption", parameter="corruptions")
    images, labels = spec.load(data_dir, "test")
    n = min(n_examples or len(images), len(images))
    advance = progress.task(f"generating {len(names)} corruptions (seed {seed})", len(names) * 5 * n)
    spec.corrupted.generate(Path(out_dir), names, images, labels, n, seed, workers or os.cpu_count() or 1, advance)
    return Path(out_dir)


EXPORT_FORMATS = ("official",)
"""``official``: the plain ``torch.save`` state_dict the authors' SDNet code loads (their key names, unit-norm atoms)."""


def export_checkpoint(
    *,
    out: Path,
    model: str = "sdnet18",
    checkpoint: Path | None = None,
    dataset: str = "cifar10",
    format: str = "official",
    weights_dir: Path | None = None,
) -> Path:
    """Write a loaded model's weights in another code base's format and return the path. ``official``: what the
    authors' code (SDNet, Dai et al., NeurIPS 2022) loads and runs unchanged; set its config's lambda and FISTA
    step count (``NUM_LAYERS``) to the model's, which the file does not hold."""
    from .data.datasets import dataset_spec
    from .models.checkpoints import export_official

    if format not in EXPORT_FORMATS:
        raise UsageError(f"unknown format {format!r}; use one of: {', '.join(EXPORT_FORMATS)}", parameter="format")
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"out {out} is a directory; give the file to write (e.g. model_best.pth)")
    classifier, _ = _load(model, checkpoint, dataset, weights_dir)
    export_official(classifier.network, out, dataset_spec(dataset).image_size)
    return out


def train(
    *,
    model: str,
    out: Path,
    dataset: str = "cifar10",
    epochs: int = 30,
    width: int = 32,
    batch_size: int = 128,
    lr: float = 0.1,
    lam: float = 0.1,
    sqrt_lasso: bool = False,
    precision: str = "fp32",
    device: str = "auto",
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    resume: bool = False,
    default: bool = False,
    half: bool = False,
    data_dir: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Train with the reference CIFAR recipe, save ``out`` (.safetensors) and add its manifest entry beside it.

    Returns the per-epoch history (extras: the accuracy curve). ``resume`` continues from
    ``<out>.resume.pt``, written after every epoch. ``half`` stores fp16 weights; the manifest's
    accuracy is then measured with the stored weights.
    """
    import torch

    from .data.datasets import dataset_spec
    from .evaluate import Runtime
    from .models import create_model, save_checkpoint
    from .models.registry import ARCHITECTURES
    from .models.weights import update_manifest
    from .reports import save_line_plot
    from .train import TrainConfig, clean_accuracies, hardware
    from .train import train as train_model

    progress = progress or Silent()
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UsageError(f"out must end in .safetensors, got {out}", parameter="out")
    if model not in ARCHITECTURES:
        raise UsageError(f"unknown model {model!r}; choose one of: {', '.join(ARCHITECTURES)}", parameter="model")
    for value, parameter in (
        (epochs, "epochs"),
        (width, "width"),
        (batch_size, "batch_size"),
        (n_train, "n_train"),
        (n_test, "n_test"),
    ):
        _at_least_one(value, parameter)
    _check_seed(seed)
    spec = dataset_spec(dataset)
    if spec.stem != "cifar":
        raise UsageError(
            f"train implements the CIFAR recipe only; for {spec.title}, load trained weights with checkpoint",
            parameter="dataset",
        )
    cfg = TrainConfig(
        model=model,
        dataset=dataset,
        epochs=epochs,
        width=width,
        batch_size=batch_size,
        lr=lr,
        lam=lam,
        square_noise=not sqrt_lasso,
        seed=seed,
        n_train=n_train,
        n_test=n_test,
    )
    runtime = Runtime.create(device, precision)
    train_data, test_data = spec.load(data_dir, "train"), spec.load(data_dir, "test")
    n_images = min(n_train or len(train_data[0]), len(train_data[0]))
    resume_path = out.with_name(out.name + ".resume.pt")
    advance = progress.task(f"training {model} w{width}", n_images * epochs)

    def on_epoch(log: Any) -> None:
        progress.note(
            f"epoch {log.epoch}/{epochs}: loss {log.train_loss:.4f}, train {log.train_accuracy:.2f}%, "
            f"test {log.test_accuracy:.2f}%, {log.images_per_second:.0f} img/s"
        )

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        classifier = create_model(model, dataset=dataset, width=width, lam=lam, square_noise=not sqrt_lasso)
        state = train_model(
            classifier,
            cfg,
            train_data,
            test_data,
            runtime,
            resume_path,
            resume=resume,
            on_batch=advance,
            on_epoch=on_epoch,
        )
    settings = {
        "architecture": model,
        "dataset": dataset,
        "width": width,
        "num_classes": classifier.network.linear.out_features,
        "lam": lam,
        "n_steps": 2,
        "square_noise": not sqrt_lasso,
    }
    digest = save_checkpoint(classifier.network, out, settings, half=half)
    if half:  # measure what users will load: the rounded weights
        from safetensors.torch import load_file

        classifier.network.load_state_dict(load_file(str(out)))
    accuracies = clean_accuracies(classifier, test_data, runtime)
    meta = base_meta(
        "train",
        seed,
        config=vars(cfg),
        checkpoint=str(out),
        checkpoint_sha256=digest,
        **accuracies,
        n_test=len(test_data[0]),
        **runtime.describe(),
    )
    entry = {
        "name": out.stem,
        "file": out.name,
        **settings,
        "sha256": digest,
        "dtype": "float16" if half else "float32",
        **accuracies,
        "epochs": epochs,
        "seed": seed,
        "precision": precision,
        "train_seconds": round(sum(h.seconds for h in state.history), 1),
        "hardware": hardware(),
        "command": meta["argv"],
        "default": default,
    }
    meta["manifest"] = str(update_manifest(entry, out.parent))
    resume_path.unlink(missing_ok=True)
    rows = [vars(h) for h in state.history]

    def curve(out_dir: Path, stem: str) -> list[Path]:
        import pandas as pd

        return [
            save_line_plot(
                pd.DataFrame(rows),
                "epoch",
                ["train_accuracy", "test_accuracy"],
                out_dir / f"{stem}.png",
                f"{model} width {width} on {dataset}",
                "accuracy (%)",
                secondary=["train_loss"],
            )
        ]

    return Report(rows, meta, name=out.stem, title=f"sdnet train: {out.stem}", extras=[curve])


def check(
    *,
    baseline: Path = Path("reports/baseline.json"),
    suite: Path | None = None,
    update: bool = False,
    tolerance: float | None = None,
    device: str = "auto",
    precision: str = "fp32",
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    weights_dir: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Re-run a fixed, seeded suite and compare every metric with ``baseline``.

    Returns the comparison (``meta["passed"]`` is False on a regression or a metric no longer
    measured). With ``update`` the returned report holds the new baseline's rows instead, to be
    written over ``baseline``. The suite comes from ``suite``, else the baseline's own, else the default.
    """
    from .check import Suite, compare_with_baseline, failed, read_baseline, run_suite
    from .evaluate import Runtime

    progress = progress or Silent()
    baseline = Path(baseline)
    if tolerance is not None and tolerance < 0:
        raise UsageError(f"tolerance must be >= 0, got {tolerance}", parameter="tolerance")
    stored = read_baseline(baseline) if not update or baseline.is_file() else None
    if suite is not None:
        chosen = Suite.load(Path(suite))
    elif stored is not None and "suite" in stored[0]:
        chosen = Suite.load_dict(stored[0]["suite"])
    else:
        chosen = Suite()
    if tolerance is not None:
        chosen.tolerance = tolerance
    runtime = Runtime.create(device, precision)
    advance = progress.task("checking", chosen.work_units())
    rows = run_suite(chosen, runtime, data_dir, cache_dir, advance, weights_dir)
    if update:
        meta = base_meta("check", chosen.seed, suite=chosen.as_meta(), **runtime.describe())
        return Report(rows, meta, name=baseline.stem, title="sdnet check baseline")
    table = compare_with_baseline(rows, stored[1], chosen.tolerance)  # type: ignore[index]
    meta = base_meta(
        "check",
        chosen.seed,
        baseline=str(baseline),
        tolerance=chosen.tolerance,
        passed=not failed(table),
        suite=chosen.as_meta(),
        **runtime.describe(),
    )
    return Report(table, meta, name=f"check-{baseline.stem}", title=f"sdnet check vs {baseline}")


def compare(
    sources: Sequence[str | Path | tuple[str, Path]],
    *,
    out_dir: Path,
    name: str = "compare",
    title: str | None = None,
    note: str = "",
) -> list[Path]:
    """One table (and plots) from several eval or attack reports, a column per label; writes them to
    ``out_dir`` and returns the paths. Sources are ``"LABEL=report.json"`` or ``(label, path)``."""
    from .compare import compare_reports

    check_stem(name)
    return compare_reports(sources, out_dir=Path(out_dir), name=name, title=title, note=note)
