"""Robust accuracy: one attack on the deployed model, and the same attack at every test lambda."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Interrupted, UsageError
from ..forecast import Progress
from ..report import Report, check_stem
from ..schemas import POOL_BATCHES_MAX
from ..specs import DataSpec, ModelArg, ModelSpec, RunSpec, count_or_none, gradient_precision, unused
from ._session import Session

if TYPE_CHECKING:
    import numpy as np

    from ..adapt import Adapt
    from ..attacks import AttackConfig, Norm
    from ..models import LambdaPolicy

PROTOCOL = (
    "sample-wise: each attack runs only on points still classified correctly and each adversarial example is "
    "judged once by the deployed model; robust = correct and fooled by no attack; over an eps sweep a point fooled "
    "at a smaller eps counts as fooled at larger ones; eps 0 is the clean accuracy; before each attack the points "
    "still standing in a pool of pool_size images are gathered into full batches"
)


def attack(
    *,
    model: ModelSpec | ModelArg = "sdnet18",
    data: DataSpec = DataSpec(),
    run: RunSpec = RunSpec(),
    attack: str = "autoattack",
    norm: Norm = "Linf",
    eps: str | float | Sequence[str | float] = ("8/255",),
    steps: int | None = None,
    restarts: int | None = None,
    version: str = "standard",
    lam: float | str | None = None,
    calibration: Path | None = None,
    pool_batches: int | None = None,
    name: str | None = None,
    state_dir: Path | None = None,
    resume: bool = False,
    save_adversarials: Path | None = None,
    adapt: Adapt = "none",
    progress: Progress | None = None,
) -> Report:
    """Robust accuracy of the deployed model (lambda policy included) under one attack or standard
    AutoAttack, on the first ``data.n_examples`` test images, at every ``eps``.

    ``model``: a name, ``load_model(...)``'s result, any ``torch.nn.Module`` mapping [0, 1] images to
    logits, or a ``ModelSpec`` saying more (checkpoint, n_steps, a module's normalisation...). ``data``: the
    dataset, its folder, the seed and how many images (clean test images: no corruption folders).
    ``run.batch_size``: images per attacked batch (default ``attacks.config.BATCH_SIZE``); ``run.compile``
    is refused (attacks take gradients). ``pool_batches``: the images are attacked in pools of this many
    batches: before each attack the points still standing in a pool are gathered into full batches; results
    depend on it as on the batch size. ``state_dir``: finished pools are saved to ``<state_dir>/<name>.state.json``,
    so an interrupted run continues with ``resume`` (the file is removed once the run completes); ``name`` is
    the report's file stem (default ``attack-<model>-<attack>``). ``save_adversarials``: an ``.npz`` of the
    examples. ``adapt`` other than ``none`` is refused (see ``_check_attackable``).
    """
    from ..lam import resolve_policy

    _check_attackable(lam, adapt, save_adversarials)
    config = attack_config(attack, norm, eps, steps, restarts, version)
    job = AttackJob.open(
        "attack", config, pool_batches, model=ModelSpec.of(model), data=data, run=run, progress=progress,
        distributed=True,
    )  # fmt: skip
    classifier, info = job.session.classifier, job.session.info
    policy = resolve_policy(lam, classifier, info, calibration)
    stem = check_stem(name or f"attack-{info.name}-{config.attack}")
    advance = job.session.progress.task(f"{config.attack} on {info.name}", job.work_units())
    with classifier.using(policy):
        results, rows = job.run(advance, state_dir, stem, resume, keep_adv=save_adversarials is not None)
        saved = job.save(save_adversarials, results) if save_adversarials is not None else None
    meta = job.meta(
        components=results.settings,
        lam_policy=repr(policy or "training lambda"),
        lambda_gradient=results.diagnostics.lambda_gradient,
        diagnostics=results.diagnostics.as_meta(),
        saved_adversarials=saved,
    )
    return Report(rows, meta, name=stem, title=f"sdnet attack: {info.name}, {config.attack} ({config.norm})")


def attack_vs_lambda(
    *,
    model: ModelSpec | ModelArg = "sdnet18",
    data: DataSpec = DataSpec(),
    run: RunSpec = RunSpec(),
    lams: str | Sequence[float] = "0.1:1.0:0.1",
    attack: str = "pgd",
    norm: Norm = "Linf",
    eps: str | float | Sequence[str | float] = ("1/255",),
    steps: int | None = None,
    restarts: int | None = None,
    version: str = "standard",
    baseline_model: ModelSpec | ModelArg | None = None,
    pool_batches: int | None = None,
    name: str | None = None,
    state_dir: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Clean and robust accuracy for every test lambda of ``lams``, each attacked as deployed at that lambda.

    SDNet's paper claims robustness to adversarial perturbations grows with the test-time lambda (Dai et
    al., NeurIPS 2022); this measures it under an adaptive attack. Every lambda is a separate run of
    ``attack`` (same images, seed and batches as ``attack(lam=...)``, so each point equals that call), with
    its own gradient-masking diagnostics in the rows and meta. ``baseline_model`` adds that model's rows
    (lam: its own) as a reference; a name is looked up where ``model`` is (``_baseline_spec``). The report's
    extra is the accuracy-vs-lambda plot.
    """
    from ..lam import lambda_grid
    from ..sweep.report import render_attack_sweep, save_attack_sweep_plot

    grid = lambda_grid(lams)
    config = attack_config(attack, norm, eps, steps, restarts, version)
    spec = ModelSpec.of(model)
    job = AttackJob.open("sweep-lambda-attack", config, pool_batches, model=spec, data=data, run=run, progress=progress)
    job.session.require_lambda()
    reference = job.reference(_baseline_spec(baseline_model, spec), run) if baseline_model is not None else None
    info = job.session.info
    stem = check_stem(name or f"sweep-lambda-{info.name}-{config.attack}")
    runs = len(grid) + (reference is not None)
    advance = job.session.progress.task(
        f"{config.attack} on {info.name} at {len(grid)} lambdas", job.work_units() * runs
    )
    rows, diagnostics, settings = _sweep_points(job, reference, grid, advance, state_dir, stem, resume)
    meta = job.meta(
        grid=grid,
        baseline_model=reference.session.info.as_meta() if reference is not None else None,
        components=settings,
        diagnostics=diagnostics,
    )

    def plot(out_dir: Path, file_stem: str) -> list[Path]:
        return [save_attack_sweep_plot(rows, info.name, out_dir / f"{file_stem}.png")]

    title = f"sdnet sweep-lambda --attack: {info.name}, {config.attack}"
    markdown = render_attack_sweep(title, rows, meta, diagnostics, plot_name=f"{stem}.png")
    return Report(rows, meta, name=stem, title=title, extras=[plot], markdown=markdown)


def _sweep_points(
    job: AttackJob,
    reference: AttackJob | None,
    grid: Sequence[float],
    advance: Callable[[int], None],
    state_dir: Path | None,
    stem: str,
    resume: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Rows, diagnostics per lambda (and per reference model) and attack settings of the sweep's runs."""
    from ..lam import FixedLambda

    rows: list[dict[str, Any]] = []
    diagnostics: dict[str, Any] = {}
    runs: list[tuple[str, AttackJob, LambdaPolicy | None, str]]
    runs = [(f"{lam:g}", job, FixedLambda(lam), f"{stem}.lam{lam:g}") for lam in grid]
    if reference is not None:
        name = reference.session.info.name
        runs.append((name, reference, None, f"{stem}.{name}"))
    for key, run, policy, run_stem in runs:
        with run.session.classifier.using(policy):
            results, found = run.run(advance, state_dir, run_stem, resume)
        diagnostics[key] = results.diagnostics.as_meta()
        rows += [{**row, "masking_warnings": len(diagnostics[key]["warnings"])} for row in found]
    return rows, diagnostics, results.settings


def _baseline_spec(baseline: ModelSpec | ModelArg, spec: ModelSpec) -> ModelSpec:
    """A baseline given by name is looked up where the swept model is: the same shipped-weights folder, and
    for two ``robustbench:`` models the same leaderboard and folder. Other baselines say for themselves."""
    from ..schemas import ROBUSTBENCH

    if not isinstance(baseline, str):
        return ModelSpec.of(baseline)
    zoo = baseline.startswith(ROBUSTBENCH) and isinstance(spec.model, str) and spec.model.startswith(ROBUSTBENCH)
    if zoo:
        return ModelSpec(baseline, weights_dir=spec.weights_dir, threat=spec.threat, model_dir=spec.model_dir)
    return ModelSpec(baseline, weights_dir=spec.weights_dir)


def _check_attackable(lam: float | str | None, adapt: Adapt, save_adversarials: Path | None) -> None:
    """Only a deployed pipeline is attacked: no label-picked lambda, no test-time adaptation (the attack would
    have to differentiate through the adaptation of a whole batch; out of scope)."""
    from ..lam import ORACLE

    if save_adversarials is not None and Path(save_adversarials).suffix != ".npz":
        raise UsageError(f"save_adversarials must end in .npz, got {save_adversarials}", parameter="save_adversarials")
    if lam == ORACLE:
        raise UsageError(
            "lam='oracle' picks lambda per corruption cell using labels; it is no deployed pipeline to attack",
            parameter="lam",
        )
    if adapt != "none":
        raise UsageError(
            f"adapt={adapt!r}: attacks on test-time-adapted models are out of scope (the attack would have to "
            "differentiate through the adaptation); use adapt with evaluate_corruptions (sdnet eval --adapt)",
            parameter="adapt",
        )


def attack_config(
    attack: str,
    norm: Norm,
    eps: str | float | Sequence[str | float],
    steps: int | None,
    restarts: int | None,
    version: str,
) -> AttackConfig:
    from ..attacks import AttackConfig

    eps_list = [eps] if isinstance(eps, (str, float, int)) else list(eps)
    return AttackConfig.create(attack=attack, norm=norm, eps=eps_list, steps=steps, restarts=restarts, version=version)


@dataclass
class AttackJob:
    """An opened session, its first ``n_examples`` test images and a validated attack config: what ``attack``
    and ``attack_vs_lambda`` share, so a sweep point is exactly an ``attack`` call."""

    session: Session
    config: AttackConfig
    images: np.ndarray
    labels: np.ndarray
    pool_batches: int

    @classmethod
    def open(
        cls,
        command: str,
        config: AttackConfig,
        pool_batches: int | None,
        *,
        model: ModelSpec,
        data: DataSpec,
        run: RunSpec,
        progress: Progress | None,
        distributed: bool = False,
    ) -> AttackJob:
        """The session of ``model`` on the first ``data.n_examples`` clean test images; the batch size
        defaults to the attacks' own."""
        from ..attacks.config import BATCH_SIZE, POOL_BATCHES
        from ..data.datasets import dataset_spec

        why = "attacks run on clean test images"
        unused(data, ("cache_dir", "cifar_c_dir"), command, why)
        unused(run, ("compile",), command, "attacks take gradients through the eager model")
        gradient_precision(run.precision, "an attack")
        pool_batches = POOL_BATCHES if pool_batches is None else pool_batches
        count_or_none(pool_batches, "pool_batches", POOL_BATCHES_MAX)
        session = Session.open(
            command, model=model, data=data, run=run, progress=progress, default_batch_size=BATCH_SIZE,
            distributed=distributed,
        )  # fmt: skip
        images, labels = dataset_spec(session.dataset).load(data.data_dir, "test")
        n = data.n_examples
        return cls(session, config, images[:n], labels[:n], pool_batches)

    def reference(self, model: ModelSpec, run: RunSpec) -> AttackJob:
        """The same attack on the same images against another model (its own lambda, its own checkpoint)."""
        session = self.session
        data = replace(session.data, dataset=session.dataset)
        return AttackJob.open(
            session.command, self.config, self.pool_batches, model=model, data=data, run=run, progress=session.progress
        )

    def work_units(self) -> int:
        return self.config.work_units(len(self.images), self.session.batch_size, self.pool_batches)

    def run(
        self, advance: Callable[[int], None], state_dir: Path | None, stem: str, resume: bool, keep_adv: bool = False
    ) -> tuple[Any, list[dict[str, Any]]]:
        """(AttackResults, rows) of the attack on the classifier with its policy as set by the caller;
        progress saved under ``<state_dir>/<stem>.state.json`` when a folder is given."""
        from .. import distributed
        from ..attacks import run_attack
        from ..attacks.state import remove_state
        from ..lam import lambda_label

        session = self.session
        state_path = Path(state_dir) / f"{stem}{distributed.rank_suffix()}.state.json" if state_dir else None
        with self._saved_pools(state_path):
            results = run_attack(
                session.classifier, self.images, self.labels, self.config, seed=session.seed,
                runtime=session.runtime, batch_size=session.batch_size, pool_batches=self.pool_batches,
                progress=advance, state_path=state_path, resume=resume, keep_adv=keep_adv, fingerprint=session.fingerprint(),
                estimate=self._say_estimate,
            )  # fmt: skip
        if state_path is not None:
            remove_state(state_path)
        return results, results.rows(session.base(lam=lambda_label(session.classifier)))

    def _say_estimate(self, seconds: float) -> None:
        """The probe's prediction as one line before the attack (with the smaller-n hint when n was not given)."""
        from ..attacks.registry import AUTOATTACK
        from ..forecast import forecast, where

        config, session = self.config, self.session
        what = f"{config.version} AutoAttack" if config.attack == AUTOATTACK else config.attack
        what += " at eps " + ", ".join(e.text for e in config.eps)
        device = str(session.runtime.device)
        session.progress.note(forecast(what, len(self.images), seconds, where(device), session.n_examples is None))

    @contextmanager
    def _saved_pools(self, state_path: Path | None) -> Iterator[None]:
        """Ctrl-C with pools saved becomes ``Interrupted``, saying how many and how to continue."""
        from ..attacks.state import saved_pools

        try:
            yield
        except KeyboardInterrupt:
            saved = saved_pools(state_path) if state_path is not None else 0
            if not saved:
                raise
            pool_size = self.session.batch_size * self.pool_batches
            pools = -(-len(self.images) // pool_size)
            raise Interrupted(
                f"{saved} finished pools of {pools} ({pool_size} images each) "
                f"are saved in {state_path}; the same call with resume=True continues",
                parameter="resume",
            ) from None

    def save(self, path: Path, results: Any) -> dict[str, Any] | None:
        """Write the adversarial examples (rank 0) and measure robust accuracy after rounding them to uint8."""
        from .. import attacks, distributed

        if not distributed.is_main():
            return None
        session = self.session
        return {
            "path": str(attacks.save_adversarials(Path(path), results, self.labels)),
            "format": "float32 NHWC in [0,1], not rounded (rounding to uint8 can undo an attack)",
            "uint8_robust_accuracy": attacks.requantized_robust_accuracy(
                session.classifier, results, self.labels, session.runtime, session.batch_size
            ),
        }

    def meta(self, **extra: Any) -> dict[str, Any]:
        n = len(self.images)
        source = {"dataset": self.session.dataset, "split": "test", "first_n": n}
        pool_size = self.session.batch_size * self.pool_batches
        return self.session.meta(source, pool_size=pool_size, **self.config.as_meta(), protocol=PROTOCOL, **extra)
