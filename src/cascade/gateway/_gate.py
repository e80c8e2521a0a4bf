"""Where keys, limits and budgets plug into the request path: a :class:`Gate`.

The app calls :meth:`Gate.admit` once a request is parsed (before its route is looked
up and before any provider is called) and :meth:`Gate.settle` once it is over, whatever
the ending: answered, failed, or the client gone, with what the run spent. A gate that
refuses raises :class:`~cascade.gateway.GatewayError` (401, 403, 429 with
``retry_after_s``), which the client gets in its API's error format.

With no ``[gateway.keys]`` the gateway uses :data:`OPEN_GATE`: no key asked for, nothing
counted. The keyed gate (``_keys.py``) implements the same two methods.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["OPEN_GATE", "Gate", "OpenGate"]


class Gate(Protocol):
    """Admits requests and settles what they spent (keys, rate limits, budgets)."""

    async def admit(self, authorization: str | None, *, estimated_tokens: int) -> Any:
        """Admit a request carrying ``authorization`` (the ``Authorization`` header value,
        or None) expected to use ``estimated_tokens``; returns what :meth:`settle` gets
        back. Raises ``GatewayError`` to refuse."""
        ...

    async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None:
        """The request is over: it used ``tokens`` and cost ``cost_usd`` (every attempt,
        cancelled ones included). Never raises for the client."""
        ...


class OpenGate:
    """Admits every request; counts nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<OpenGate>"

    async def admit(self, authorization: str | None, *, estimated_tokens: int) -> None:
        return None

    async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None:
        return None


OPEN_GATE: Gate = OpenGate()
