"""Imports the built-in routers so that their ``@router`` decorators register them."""

from __future__ import annotations

from . import _learned, compose, cost, llm, rules  # noqa: F401
