"""Where keys, limits and budgets plug into the request path: a :class:`Gate`.

The app calls :meth:`Gate.admit` once a request is parsed and its route looked up (before
any provider is called; an unknown model's 404 comes only after admission, so a client
without a key learns nothing of the routes) and :meth:`Gate.settle` once it is over,
whatever the ending: answered, failed, or the client gone, with what the run spent. A gate
that refuses raises :class:`~cascade.gateway.GatewayError` (401, 403, 429 with
``retry_after_s``), which the client gets in its API's error format.

With no ``[gateway.keys]`` the gateway uses :data:`OPEN_GATE`: no key asked for, nothing
counted. The keyed gate (``_keys.py``) implements the same methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["OPEN_GATE", "Gate", "OpenGate"]


class Gate(Protocol):
    """Admits requests and settles what they spent (keys, rate limits, budgets)."""

    async def open(self) -> None:
        """Connect what the gate needs (shared state); the app calls it as it starts."""
        ...

    async def aclose(self) -> None:
        """Release it; the app calls it as it stops."""
        ...

    async def admit(
        self,
        headers: Mapping[str, str],
        *,
        estimated_tokens: int,
        estimated_cost_usd: float,
        route: str | None,
        model: str,
    ) -> Any:
        """Admit a request with these HTTP ``headers`` (its key is in ``Authorization``
        or ``x-api-key``), for the ``model`` it names, served by ``route`` (None: no route
        serves it, the app answers 404 after admission), expected to use
        ``estimated_tokens`` and cost ``estimated_cost_usd``. Returns what :meth:`settle`
        gets back; raises ``GatewayError`` to refuse."""
        ...

    async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None:
        """The request is over: it used ``tokens`` and cost ``cost_usd`` (every attempt,
        cancelled ones included). Never raises; safe in the ``finally`` of a cancelled
        request."""
        ...


class OpenGate:
    """Admits every request; counts nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<OpenGate>"

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def admit(
        self,
        headers: Mapping[str, str],
        *,
        estimated_tokens: int,
        estimated_cost_usd: float,
        route: str | None,
        model: str,
    ) -> None:
        return None

    async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None:
        return None


OPEN_GATE: Gate = OpenGate()
