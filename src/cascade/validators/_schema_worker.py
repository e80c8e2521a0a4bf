"""A JSON Schema validation worker: one process, one job at a time, killed when it overruns.

Run as a script (``python -I _schema_worker.py``), not imported: it needs nothing but the
standard library and jsonschema, so it starts fast and runs none of the host program's
code. It reads one job per line on stdin, ``{"schema": "<schema JSON>", "instance": ...}``,
and writes one line per job, ``{"valid": true}`` or ``{"valid": false, "where": "$.a",
"message": "..."}`` (``{"error": "..."}`` when the job could not be run). Compiled
validators are cached by schema text. A schema never reaches the network or the disk: its
registry refuses every retrieval.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from jsonschema.exceptions import best_match


def _refuse(uri: str) -> Any:
    raise referencing.exceptions.NoSuchResource(ref=uri)


_REGISTRY: Any = referencing.Registry(retrieve=_refuse)
_CACHE: dict[str, Any] = {}
_CACHE_SIZE = 64


def _validator(schema_text: str) -> Any:
    found = _CACHE.get(schema_text)
    if found is None:
        schema = json.loads(schema_text)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        found = cls(schema, registry=_REGISTRY)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[schema_text] = found
    return found


def check(job: dict[str, Any]) -> dict[str, Any]:
    """The verdict on one job (the same rule as the validator's inline path)."""
    validator = _validator(job["schema"])
    instance = job["instance"]
    if validator.is_valid(instance):
        return {"valid": True}
    error = best_match(validator.iter_errors(instance))
    return {
        "valid": False,
        "where": error.json_path if error is not None else "$",
        "message": (error.message if error is not None else "invalid")[:500],
    }


def main() -> None:
    try:
        os.nice(10)  # a hostile answer's validation must not starve the engine's process
    except OSError:  # pragma: no cover - not permitted here: run at the same priority
        pass
    out = sys.stdout
    for line in sys.stdin.buffer:
        try:
            reply = check(json.loads(line))
        except Exception as exc:  # anything the job holds is a reply, never a dead worker
            reply = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
