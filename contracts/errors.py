"""The error a producer gets back for a command that cannot be accepted."""

from __future__ import annotations

from msgspec import Struct

__all__ = ["FieldError", "InvalidCommand"]


class FieldError(Struct, frozen=True):
    """One problem in a command: where (a JSON path such as ``$.cluster.num_nodes``) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidCommand(ValueError):
    """A command failed to decode or broke a rule; ``errors`` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"invalid command: {shown}{more}")
