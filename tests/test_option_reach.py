"""Every option of every command reaches what the command does, or is refused at the door: none is dropped.

Each command is run once with its defaults and once per option with another valid value for that option
alone. The API functions are replaced by spies that record what they receive and stop there, as are the
CLI's own uses of an option before the call (the output folder checks, the RobustBench entry check). A
changed option must change what was recorded, or, for the few options listed in ``REFUSED``, end the run
with exit 2 and a message naming the option before the API is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import typer.testing
from typer.testing import CliRunner

from sdnet_cli import api, robustbench_export
from sdnet_cli.cli import app, commands, lam_commands

API_FUNCTIONS = (
    "evaluate_corruptions",
    "generate_corruptions",
    "train",
    "attack",
    "check",
    "compare",
    "export_checkpoint",
    "sweep_lambda",
    "attack_vs_lambda",
    "compare_lambda_rules",
    "lambda_hold_out",
)

BASE: dict[str, tuple[list[str], list[str]]] = {
    "make-c": (["--out", "generated"], []),
    "train": (["--model", "sdnet18", "--out", "w.safetensors"], []),
    "export": ([], ["model_best.pth"]),
    "compare": ([], ["a=first.json"]),
}
"""Options and arguments a command needs to run at all: (options, arguments)."""

MODES = {
    "sweep-lambda --attack": ("sweep-lambda", ["--attack", "pgd"]),
    "eval --adapt bn-prior": ("eval", ["--adapt", "bn-prior"]),
    "eval --adapt memo": ("eval", ["--adapt", "memo"]),
    "sweep-lambda --adapt bn-prior": ("sweep-lambda", ["--adapt", "bn-prior"]),
}
"""A command run in another mode, with the options that select it."""

TEXT = {
    "model": "resnet18",
    "dataset": "cifar100",
    "device": "cpu",
    "precision": "bf16",
    "threat": "Linf",
    "adapt": "bn",
    "prior_strength": "4",
    "memo_copies": "4",
    "memo_lr": "0.01",
    "stream": "mixed",
    "norm": "L2",
    "version": "rand",
    "attack": "apgd-ce",
    "rule": "noise",
    "lam": "0.3",
    "lams": "0.2,0.4",
    "fit_lams": "0.2,0.4",
    "baseline_model": "resnet18",
    "name": "other",
    "title": "A title",
    "note": "A note",
    "format": "other",
    "corruptions": "contrast",
    "fit_corruptions": "contrast",
    "hold_out": "contrast",
    "severities": "2",
    "eps": "2/255",
    "rules": "0.2",
    "sources": "b=second.json",
}
"""A valid value other than the default for every text option and argument (by its parameter name)."""

HIDDEN = ("eps", "norm", "steps", "restarts", "version", "baseline_model", "pool_batches")
SWEEP_ONLY = ("corruptions", "severities", "fit", "fit_corruptions", "fit_n", "calibration_out", "sweep_span")
SWEEP_ONLY += ("cifar_c_dir", "cache_dir", "compile", "adapt", "prior_strength")
REFUSED = (
    {(mode, name) for mode in ("sweep-lambda", "sweep-lambda --adapt bn-prior") for name in HIDDEN}
    | {("sweep-lambda --attack", name) for name in SWEEP_ONLY}
    | {(mode, "prior_strength") for mode in ("eval", "eval --adapt memo", "sweep-lambda")}
    | {("sweep-lambda --adapt bn-prior", "attack")}
    | {(mode, name) for mode in ("eval", "eval --adapt bn-prior") for name in ("memo_copies", "memo_lr")}
)
"""(mode, option) pairs a run cannot use: sweep-lambda's hidden options are the former ``--attack`` spelling's
(attack-vs-lambda); with ``--attack`` the corruption sweep's options have nothing to act on; a test-time
adaptation's own settings (bn-prior's strength, MEMO's copies and learning rate) belong to that method alone."""


class Reached(Exception):
    """Raised by the spies: the command got as far as its API call."""


def command_names() -> list[str]:
    return list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def parameters(name: str) -> list[Any]:
    """The command's options and arguments as the command line parses them (Typer's click parameters)."""
    return list(typer.main.get_command(app).commands[name].params)  # type: ignore[attr-defined]


def is_argument(param: Any) -> bool:
    return bool(param.param_type_name == "argument")


def other_value(param: Any) -> str | None:
    """Text giving ``param`` a valid value other than its default (None: a flag, given by its name alone)."""
    kind = param.type_descriptor.annotation
    if kind is bool:
        assert param.is_flag and param.default is False, f"{param.name}: a flag that is on by default"
        return None
    if kind is int:
        return str((param.default or 0) + 3)
    if kind is float:
        return str((param.default or 0.0) + 0.25)
    if kind is Path:
        return f"elsewhere/{param.name}"
    assert param.name in TEXT, f"give --{param.name} a valid other value in TEXT"
    return TEXT[param.name]


def arguments(mode: str, changed: Any | None) -> list[str]:
    """The command line of ``mode`` with ``changed`` (if any) given another value."""
    name, selector = MODES.get(mode, (mode, []))
    options, positional = BASE.get(name, ([], []))
    options = [*selector, *options]
    if changed is None:
        return [name, *options, *positional]
    value = other_value(changed)
    if is_argument(changed):
        return [name, *options, str(value)]
    given = [changed.opts[0]] if value is None else [changed.opts[0], value]
    return [name, *options, *given, *positional]  # a repeated option: the last one counts


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, Any]]:
    """What the spies record, in order: each API call's arguments (but the progress bar), and each use of an
    option the CLI makes itself before that call."""
    record: list[tuple[str, Any]] = []
    monkeypatch.chdir(tmp_path)

    def spy(function: str) -> Any:
        def called(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("progress", None)
            record.append((function, (args, kwargs)))
            raise Reached

        return called

    for function in API_FUNCTIONS:
        monkeypatch.setattr(api, function, spy(function))
    for module in (commands, lam_commands):
        monkeypatch.setattr(module, "preflight", lambda *args, **kwargs: record.append(("preflight", (args, kwargs))))
    monkeypatch.setattr(robustbench_export, "check_request", lambda *args: record.append(("check_request", args)))
    built = typer.main.get_command(app)  # once: the runner would rebuild the whole app for every run
    monkeypatch.setattr(typer.testing, "_get_command", lambda _: built, raising=False)
    return record


def reached(result: Any) -> bool:
    """Whether the run got to the API (whose spy raises ``Reached``); ``sdnet check`` reports an unexpected
    exception, this one included, with its traceback and exit 3."""
    return isinstance(result.exception, Reached) or (result.exit_code == 3 and "Reached" in result.output)


def invoke(args: list[str], record: list[tuple[str, Any]]) -> tuple[Any, list[tuple[str, Any]]]:
    record.clear()
    result = CliRunner().invoke(app, args)
    return result, list(record)


@pytest.mark.parametrize("mode", [*command_names(), *MODES])
def test_every_option_reaches_the_api_or_is_refused(mode: str, received: list[tuple[str, Any]]) -> None:
    name = MODES.get(mode, (mode, []))[0]
    default, before = invoke(arguments(mode, None), received)
    assert reached(default), default.output
    walked, problems = 0, []
    for param in parameters(name):
        walked += 1
        flag = param.opts[0]
        result, after = invoke(arguments(mode, param), received)
        if (mode, param.name) in REFUSED:
            refused = result.exit_code == 2 and flag in result.output
            if not refused or any(what in API_FUNCTIONS for what, _ in after):
                problems.append(f"{flag}: not refused ({result.output.strip()})")
        elif not reached(result):
            problems.append(f"{flag}: the run stopped before the API ({result.output.strip()})")
        elif after == before:
            problems.append(f"{flag}: changed nothing the command does (dropped)")
    assert walked >= 4 and problems == [], f"sdnet {mode}: " + "; ".join(problems)


def test_the_walk_covers_the_commands_that_share_options() -> None:
    """Every registered command is walked (a new one without being listed here); these, at least."""
    walked = set(command_names()) | set(MODES)
    assert walked >= {"eval", "attack", "sweep-lambda", "lambda-rules", "lambda-hold-out", "attack-vs-lambda"}
    assert {mode for mode, _ in REFUSED} <= walked


def test_robustbench_folder_reaches_the_model_of_every_command(received: list[tuple[str, Any]]) -> None:
    """The case that was dropped: --threat and --model-dir on the lambda commands land in the model's record."""
    for command in ("eval", "attack", "sweep-lambda", "lambda-rules", "lambda-hold-out", "attack-vs-lambda"):
        args = [command, "-m", "robustbench:Standard", "--threat", "Linf", "--model-dir", "zoo"]
        result, calls = invoke(args, received)
        assert reached(result), result.output
        [(_, kwargs)] = [call for what, call in calls if what in API_FUNCTIONS]
        assert kwargs["model"] == api.ModelSpec("robustbench:Standard", threat="Linf", model_dir=Path("zoo"))
