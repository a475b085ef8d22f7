"""The Python API: one keyword-only function per job, each returning a ``Report``.

A notebook uses it the way RobustBench's ``benchmark()`` is used::

    from sdnet_cli import api
    report = api.evaluate_corruptions(
        model="sdnet18", data=api.DataSpec(n_examples=500), corruptions=["gaussian_noise"], severities=[3]
    )
    report.to_frame()          # a pandas DataFrame, one row per cell
    report.write("reports")    # JSON + CSV + Markdown

``model=`` is a name, ``api.load_model(...)``'s result (load once, evaluate many times), any
``torch.nn.Module`` mapping images in [0, 1], (N, 3, H, W), to logits, or a ``ModelSpec`` saying more
(checkpoint, weights folder, FISTA steps, a module's normalisation). What the jobs share comes as typed
records, checked when made: ``data=DataSpec(...)`` (dataset, folders, seed, number of images) and
``run=RunSpec(...)`` (device, precision, batch size, compile); a job refuses a field it cannot use.
A test-time adaptation with settings of its own comes as ``adapt=AdaptSpec("memo", memo_copies=16)``.
Nothing here prints. Long work reports to ``progress`` (any object with ``task(description, total)`` returning an ``advance(k)``
callable, and ``note(text)``), so every front end shows the same totals. The ``sdnet`` CLI only
parses options, calls these functions and prints.
"""

from ..adapt import AdaptSpec
from ..errors import UsageError
from ..forecast import Progress, Silent
from ..report import Report
from ..specs import DataSpec, LoadedModel, ModelArg, ModelSpec, RunSpec
from .adversarial import attack, attack_vs_lambda
from .corruptions import evaluate_corruptions, generate_corruptions
from .gate import check, compare
from .lam import compare_lambda_rules, lambda_hold_out, sweep_lambda
from .models import EXPORT_FORMATS, export_checkpoint, load_model, train

__all__ = [
    "EXPORT_FORMATS",
    "AdaptSpec",
    "DataSpec",
    "LoadedModel",
    "ModelArg",
    "ModelSpec",
    "Progress",
    "Report",
    "RunSpec",
    "Silent",
    "UsageError",
    "attack",
    "attack_vs_lambda",
    "check",
    "compare",
    "compare_lambda_rules",
    "evaluate_corruptions",
    "export_checkpoint",
    "generate_corruptions",
    "lambda_hold_out",
    "load_model",
    "sweep_lambda",
    "train",
]
