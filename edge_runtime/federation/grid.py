"""A Flower ``Grid`` that hands every call to the grid it wraps: the base of our grids that change one part.

:class:`~edge_runtime.federation.server_app.PollingGrid` overrides ``send_and_receive`` (its reply poll),
:class:`~edge_runtime.federation.packing.PackingGrid` overrides ``push_messages`` / ``pull_messages``
(one Flower object per dtype); everything else is the wrapped grid's.
"""

from __future__ import annotations

from typing import Any, Iterable

from flwr.app import Message
from flwr.serverapp import Grid


class DelegatingGrid(Grid):
    """Every ``Grid`` method of ``grid``, unchanged."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)
