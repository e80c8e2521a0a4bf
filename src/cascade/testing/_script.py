"""Which answer each model gets: its responder, else its script, else the default."""

from __future__ import annotations

import inspect
from collections import deque

from cascade.testing._reply import FakeRequest, Reply, Responder, as_reply

__all__ = ["Playbook"]


class Playbook:
    """Per-model scripts (FIFO, last one repeats) and responders, plus a default."""

    __slots__ = ("_default", "_responders", "_scripts")

    def __init__(self, default: Reply | str | None) -> None:
        self._default = None if default is None else as_reply(default)
        self._scripts: dict[str, deque[Reply]] = {}
        self._responders: dict[str, Responder] = {}

    def script(self, model: str, replies: tuple[Reply | str, ...]) -> None:
        if not replies:
            raise ValueError("script() needs at least one reply")
        converted = [as_reply(reply) for reply in replies]
        self._scripts.setdefault(model, deque()).extend(converted)
        self._responders.pop(model, None)

    def respond(self, model: str, responder: Responder) -> None:
        if not callable(responder):
            raise TypeError(f"responder must be callable, got {type(responder).__name__}")
        self._responders[model] = responder
        self._scripts.pop(model, None)

    @property
    def default(self) -> Reply | None:
        return self._default

    @default.setter
    def default(self, value: Reply | str | None) -> None:
        self._default = None if value is None else as_reply(value)

    def clear(self) -> None:
        self._scripts.clear()
        self._responders.clear()

    def models(self) -> list[str]:
        """Models with a script or a responder, sorted."""
        return sorted(self._scripts.keys() | self._responders.keys())

    def has_responder(self, model: str) -> bool:
        return model in self._responders

    async def choose(self, model: str, request: FakeRequest | None) -> Reply | None:
        """The answer for this request, or None if ``model`` is unknown.

        ``request`` may be None only when ``model`` has no responder.
        """
        responder = self._responders.get(model)
        if responder is not None:
            if request is None:
                raise ValueError(f"responder for {model!r} needs the request")
            result = responder(request)
            if inspect.isawaitable(result):
                result = await result
            return as_reply(result)
        queue = self._scripts.get(model)
        if queue:
            return queue[0] if len(queue) == 1 else queue.popleft()
        return self._default
