"""Where keys, limits and budgets plug into the request path: a :class:`Gate`.

The app calls :meth:`Gate.admit` once a request is parsed and its route looked up (an
unknown model's 404 comes after it: a client without a key learns nothing), before any
provider is called, and :meth:`Gate.settle` once it is over, whatever the ending:
answered, failed, or the client gone, with what the run spent. A gate that refuses raises
:class:`~cascade.gateway.GatewayError` (401, 403, 429 with ``retry_after_s``), which the
client gets in its API's error format.

With no ``[gateway.keys]`` the gateway uses :data:`OPEN_GATE`: no key asked for, nothing
counted. The keyed gate (``_key_gate.py``) implements the same methods; the app opens
the gate as it starts and closes it last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._routes import Route
    from ._wire import GatewayRequest

__all__ = ["OPEN_GATE", "Gate", "Held", "OpenGate", "check_key", "enter_key"]


class Gate(Protocol):
    """Admits requests and settles what they spent (keys, rate limits, budgets)."""

    async def open(self) -> None:
        """Connect what the gate needs (its shared state), as the app starts."""
        ...

    async def aclose(self) -> None:
        """Disconnect, once the app has served its last request."""
        ...

    async def admit(
        self, headers: Mapping[str, str], *, request: GatewayRequest, route: Route | None
    ) -> Any:
        """Admit ``request`` (its HTTP ``headers`` carry the key: ``Authorization`` or
        ``x-api-key``, as each API's SDK sends it) for ``route`` (None: no route serves
        its model, a 404 once admitted); returns what :meth:`settle` gets back. Raises
        ``GatewayError`` to refuse."""
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
        self, headers: Mapping[str, str], *, request: GatewayRequest, route: Route | None
    ) -> None:
        return None

    async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None:
        return None


OPEN_GATE: Gate = OpenGate()


def check_key(gate: Gate, headers: Mapping[str, str]) -> Callable[[str, str], bool]:
    """The cheap part of admission, from the headers alone (no I/O, nothing counted):
    raises ``GatewayError`` (401) when ``gate`` asks for a key and ``headers`` present
    none that it knows. The app calls it before a request takes an in-flight slot or
    its body is read, so that clients without a key hold neither; :meth:`Gate.admit`
    still checks everything once the request is parsed. Returns whether the key may ask
    a route (its name) for a model name (``GET /v1/models`` lists only those)."""
    if gate is OPEN_GATE:
        return _any_model
    from ._key_gate import KeyGate

    if isinstance(gate, KeyGate):  # the keyed gate is the only one that asks for a key
        return gate.check_headers(headers)
    return _any_model


def enter_key(gate: Gate, headers: Mapping[str, str]) -> Held | None:
    """:func:`check_key` for a request about to be served, which also counts it in its
    key's requests in flight: ``GatewayError`` (429 ``key_busy``) when the key is at its
    ``max_in_flight``. Returns what to ``leave()`` once the request is over (``None``:
    nothing counted)."""
    if gate is OPEN_GATE:
        return None
    from ._key_gate import KeyGate

    if isinstance(gate, KeyGate):
        return gate.enter(headers)
    return None


class Held(Protocol):
    """A request counted in flight by its key."""

    @property
    def name(self) -> str:
        """The key's configured name (for the access log; never the key)."""
        ...

    def leave(self) -> None: ...


def _any_model(route: str, model: str) -> bool:
    return True
