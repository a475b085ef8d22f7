"""What the evaluation loop needs of a test-time adaptation, whichever it is."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from torch import nn


class Adaptation(Protocol):
    """``cell(model)`` gives the module that runs one cell's (or one stream's) batches of ``batch_size``
    images and puts the model back on exit; ``stateful``: a batch's predictions depend on earlier batches;
    ``check`` refuses a model it cannot adapt before any work; ``describe`` (report meta) and ``columns``
    (every row) say what the predictions relied on."""

    name: str
    stateful: bool

    @property
    def batch_size(self) -> int: ...

    def cell(self, model: nn.Module) -> AbstractContextManager[nn.Module]: ...

    def check(self, model: nn.Module) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def columns(self) -> dict[str, Any]: ...
