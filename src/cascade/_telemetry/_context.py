"""Making a span current and detaching it again, as ``context.attach(
trace.set_span_in_context(span))`` and ``context.detach(token)`` do, without the API's
layers of calls: through the default runtime context's variable directly (each run makes
and detaches three spans current, and a run the sampler drops one). Under another runtime
context (``OTEL_PYTHON_CONTEXT``), the API's functions themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span

__all__ = ["SPAN_KEY", "attach", "current", "detach", "use_span"]

current: Callable[[], Context]
"""The current context (``context.get_current``)."""
attach: Callable[[Context], Token[Context]]
"""Make a context current (``context.attach``)."""
_reset: Callable[[Token[Context]], Any]
_SPAN_KEY: str | None

try:
    from opentelemetry.context import _RUNTIME_CONTEXT
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
    from opentelemetry.trace.propagation import _SPAN_KEY as _KEY

    if type(_RUNTIME_CONTEXT) is not ContextVarsRuntimeContext:
        raise ImportError
    current = _RUNTIME_CONTEXT._current_context.get
    attach = _RUNTIME_CONTEXT._current_context.set
    _reset = _RUNTIME_CONTEXT._current_context.reset
    _SPAN_KEY = _KEY
except (ImportError, AttributeError):  # pragma: no cover - another runtime context
    current = otel_context.get_current
    attach = otel_context.attach
    _reset = otel_context.detach
    _SPAN_KEY = None

SPAN_KEY: str | None = _SPAN_KEY
"""The current span's key in a context (None under another runtime context)."""


def use_span(span: Span) -> Token[Context]:
    """Make ``span`` current; the token detaches it (:func:`detach`)."""
    key = _SPAN_KEY
    if key is None:  # pragma: no cover - another runtime context
        return otel_context.attach(trace.set_span_in_context(span))
    values = current().copy()  # set_value's copy of the current context
    values[key] = span
    return attach(Context(values))


def detach(token: Token[Context]) -> None:
    """Restore the context ``token`` replaced; a failure is logged by the API, as its
    ``detach`` does (a token from another task's context, say)."""
    try:
        _reset(token)
    except Exception:  # the API's detach logs it and goes on
        otel_context.detach(token)
