"""``with`` for the servers of the dev stack: entering starts, leaving stops."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class Lifecycle(abc.ABC):
    """Something with ``start()`` (returning itself) and ``stop()``, usable in ``with``."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start; return self."""

    @abc.abstractmethod
    def stop(self) -> object:
        """Stop (safe to call more than once)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
