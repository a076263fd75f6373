"""What the handlers return: what became of a command or a watch step, and what to do with its
message. The metrics count the same values (``service.metrics``)."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

__all__ = ["CommandOutcome", "CommandResult", "Disposition", "WatchOutcome", "WatchResult"]

CommandResult = Literal["accepted", "adopted", "rejected", "failed", "retried", "requeued"]
"""What became of a command."""
Disposition = Literal["ack", "requeue", "reject"]
"""What the broker layer does with the command's delivery."""
WatchResult = Literal["waiting", "ready", "failed", "requeue"]
"""What became of one watch step (``requeue``: its message goes back to the queue)."""


class CommandOutcome(Struct, frozen=True):
    """What became of a command, and what to do with its delivery."""

    outcome: CommandResult
    disposition: Disposition


class WatchOutcome(Struct, frozen=True):
    """What became of one watch in a step."""

    outcome: WatchResult
    time_to_online_s: float | None = None
