"""Models: load one once, train one with the reference recipe, export one for another code base."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..forecast import Progress
from ..report import Report, base_meta
from ..schemas import BATCH_MAX, EPOCHS_MAX, EXAMPLES_MAX, WIDTH_MAX
from ..specs import DataSpec, LoadedModel, ModelArg, ModelSpec, RunSpec, count_or_none, gradient_precision, unused
from ._session import job_progress, resolve_model, single_process

if TYPE_CHECKING:
    from ..train import TrainConfig

EXPORT_FORMATS = ("official",)
"""``official``: the plain ``torch.save`` state_dict the authors' SDNet code loads (their key names, unit-norm atoms)."""


def load_model(model: ModelSpec | ModelArg = "sdnet18", *, dataset: str | None = None) -> LoadedModel:
    """Load a model once and pass it as ``model=`` to every API function: a name (an architecture, whose
    default shipped checkpoint is used without a checkpoint, or a shipped checkpoint's name), or a
    ``ModelSpec`` saying more (``checkpoint``: weights to load into the architecture, our .safetensors, the
    authors' files or a state_dict, nothing unpickled; ``n_steps``: FISTA steps overriding the checkpoint's).
    ``dataset``: the one it was trained on (default cifar10).
    """
    return resolve_model(ModelSpec.of(model), dataset)


def export_checkpoint(
    *,
    out: Path,
    model: ModelSpec | ModelArg = "sdnet18",
    dataset: str | None = None,
    format: str = "official",
) -> Path:
    """Write a loaded model's weights in another code base's format and return the path. ``official``: what the
    authors' code (SDNet, Dai et al., NeurIPS 2022) loads and runs unchanged; set its config's lambda and FISTA
    step count (``NUM_LAYERS``) to the model's, which the file does not hold (so ``n_steps`` is refused)."""
    from ..data.datasets import dataset_spec
    from ..models.checkpoints import export_official

    single_process("export")
    spec = ModelSpec.of(model)
    unused(spec, ("n_steps",), "export", "the file holds weights only; set NUM_LAYERS in their config")
    if format not in EXPORT_FORMATS:
        raise UsageError(f"unknown format {format!r}; use one of: {', '.join(EXPORT_FORMATS)}", parameter="format")
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"out {out} is a directory; give the file to write (e.g. model_best.pth)")
    loaded = resolve_model(spec, dataset)
    export_official(loaded.classifier.network, out, dataset_spec(loaded.info.dataset).image_size)
    return out


def train(
    *,
    model: str,
    out: Path,
    data: DataSpec = DataSpec(),
    run: RunSpec = RunSpec(),
    epochs: int = 30,
    width: int = 32,
    batch_size: int = 128,
    lr: float = 0.1,
    lam: float = 0.1,
    sqrt_lasso: bool = False,
    n_train: int | None = None,
    n_test: int | None = None,
    resume: bool = False,
    default: bool = False,
    half: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Train ``model`` (an architecture) with the reference CIFAR recipe, save ``out`` (.safetensors) and add
    its manifest entry beside it.

    ``data``: the dataset (default cifar10), its folder and the seed (initialisation and batch order); the
    images used are ``n_train`` and ``n_test``. ``run``: device and precision; ``batch_size`` (images per
    training step) is train's own.

    Returns the per-epoch history (extras: the accuracy curve). ``resume`` continues from
    ``<out>.resume.pt``, written after every epoch (settings that differ from the interrupted run's are a
    usage error). ``half`` stores fp16 weights; the manifest's accuracy is then measured with the stored weights.
    """
    from ..runtime import Runtime
    from ..train import TrainConfig

    dataset = data.dataset or "cifar10"
    out = _check_train(model, out, dataset, data, run, epochs=epochs, width=width, batch_size=batch_size, n_train=n_train, n_test=n_test)  # fmt: skip
    cfg = TrainConfig(
        model=model, dataset=dataset, epochs=epochs, width=width, batch_size=batch_size, lr=lr, lam=lam,
        square_noise=not sqrt_lasso, seed=data.seed, n_train=n_train, n_test=n_test,
    )  # fmt: skip
    runtime = Runtime.create(run.device, run.precision)
    told = job_progress(progress, runtime)
    classifier, state, test_data = _fit(cfg, runtime, out, resume, data.data_dir, told)
    meta = _save_trained(classifier, cfg, out, half, test_data, runtime, run.precision, default, state)
    out.with_name(out.name + ".resume.pt").unlink(missing_ok=True)
    rows = [vars(h) for h in state.history]
    return Report(rows, meta, name=out.stem, title=f"sdnet train: {out.stem}", extras=[_curve(rows, cfg)])


def _fit(cfg: TrainConfig, runtime: Any, out: Path, resume: bool, data_dir: Path | None, progress: Progress) -> Any:
    """(classifier, training state, test split): the model built with ``cfg.seed`` and trained, resumable
    from ``<out>.resume.pt``."""
    import torch

    from .. import train
    from ..data.datasets import dataset_spec
    from ..models import create_model

    resume_path = out.with_name(out.name + ".resume.pt")
    if resume and resume_path.is_file():
        train.check_resume(resume_path, cfg)  # before any work
    spec = dataset_spec(cfg.dataset)
    train_data, test_data = spec.load(data_dir, "train"), spec.load(data_dir, "test")
    on_batch, on_epoch = _train_progress(progress, cfg, min(cfg.n_train or len(train_data[0]), len(train_data[0])))
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        lam, square_noise = cfg.lam, cfg.square_noise
        classifier = create_model(cfg.model, dataset=cfg.dataset, width=cfg.width, lam=lam, square_noise=square_noise)
        state = train.train(
            classifier, cfg, train_data, test_data, runtime, resume_path, resume=resume, on_batch=on_batch,
            on_epoch=on_epoch,
        )  # fmt: skip
    return classifier, state, test_data


def _check_train(model: str, out: Path, dataset: str, data: DataSpec, run: RunSpec, **counts: int | None) -> Path:
    """Refuse, before any work, a bad output name, an unknown architecture, a count < 1, a non-CIFAR dataset
    or a field of ``data``/``run`` that training does not use."""
    from ..data.datasets import dataset_spec
    from ..models.registry import ARCHITECTURES

    single_process("train")
    unused(data, ("cache_dir", "cifar_c_dir"), "train", "it trains on the clean training split")
    unused(data, ("n_examples",), "train", "give n_train and n_test")
    unused(run, ("batch_size",), "train", "train takes its own batch_size= (images per training step)")
    unused(run, ("compile",), "train", "training runs eagerly")
    gradient_precision(run.precision, "training")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UsageError(f"out must end in .safetensors, got {out}", parameter="out")
    if model not in ARCHITECTURES:
        raise UsageError(f"unknown model {model!r}; choose one of: {', '.join(ARCHITECTURES)}", parameter="model")
    bounds = {"epochs": EPOCHS_MAX, "width": WIDTH_MAX, "batch_size": BATCH_MAX}
    for parameter, value in counts.items():
        count_or_none(value, parameter, bounds.get(parameter, EXAMPLES_MAX))
    spec = dataset_spec(dataset)
    if spec.stem != "cifar":
        raise UsageError(
            f"train implements the CIFAR recipe only; for {spec.title}, load trained weights with checkpoint",
            parameter="dataset",
        )
    return out


def _train_progress(
    progress: Progress, cfg: TrainConfig, n_images: int
) -> tuple[Callable[[int], None], Callable[[Any], None]]:
    """Per-batch progress over every epoch's images, and a note per finished epoch."""
    advance = progress.task(f"training {cfg.model} w{cfg.width}", n_images * cfg.epochs)

    def on_epoch(log: Any) -> None:
        progress.note(
            f"epoch {log.epoch}/{cfg.epochs}: loss {log.train_loss:.4f}, train {log.train_accuracy:.2f}%, "
            f"test {log.test_accuracy:.2f}%, {log.images_per_second:.0f} img/s"
        )

    return advance, on_epoch


def _save_trained(
    classifier: Any,
    cfg: TrainConfig,
    out: Path,
    half: bool,
    test_data: Any,
    runtime: Any,
    precision: str,
    default: bool,
    state: Any,
) -> dict[str, Any]:
    """Save the weights, measure them as users will load them, register them in the manifest; the report meta."""
    from .. import train
    from ..models import save_checkpoint
    from ..models.weights import update_manifest
    from ..runtime import hardware

    settings = {
        "architecture": cfg.model, "dataset": cfg.dataset, "width": cfg.width,
        "num_classes": classifier.network.linear.out_features, "lam": cfg.lam, "n_steps": 2,
        "square_noise": cfg.square_noise,
    }  # fmt: skip
    digest = save_checkpoint(classifier.network, out, settings, half=half)
    if half:  # measure what users will load: the rounded weights
        from safetensors.torch import load_file

        classifier.network.load_state_dict(load_file(str(out)))
    accuracies = train.clean_accuracies(classifier, test_data, runtime)
    meta = base_meta(
        "train", cfg.seed, config=vars(cfg), checkpoint=str(out), checkpoint_sha256=digest, **accuracies,
        n_test=len(test_data[0]), **runtime.describe(),
    )  # fmt: skip
    entry = {
        "name": out.stem, "file": out.name, **settings, "sha256": digest, "dtype": "float16" if half else "float32",
        **accuracies, "epochs": cfg.epochs, "seed": cfg.seed, "precision": precision,
        "train_seconds": round(sum(h.seconds for h in state.history), 1), "hardware": hardware(),
        "command": meta["argv"], "default": default,
    }  # fmt: skip
    meta["manifest"] = str(update_manifest(entry, out.parent))
    return meta


def _curve(rows: Sequence[dict[str, Any]], cfg: TrainConfig) -> Callable[[Path, str], list[Path]]:
    """The report extra: train and test accuracy (and the loss, right axis) per epoch."""

    def curve(out_dir: Path, stem: str) -> list[Path]:
        import pandas as pd

        from ..plots import save_line_plot

        title = f"{cfg.model} width {cfg.width} on {cfg.dataset}"
        frame = pd.DataFrame(list(rows))
        path = out_dir / f"{stem}.png"
        return [
            save_line_plot(
                frame,
                "epoch",
                ["train_accuracy", "test_accuracy"],
                path,
                title,
                "accuracy (%)",
                secondary=["train_loss"],
            )
        ]

    return curve
