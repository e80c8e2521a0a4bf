"""A JSON Schema validation worker: one process, one job at a time, killed when it overruns.

Run as a script (``python -I _schema_worker.py ENGINE_PID``), not imported: it needs nothing
but the standard library, msgspec and jsonschema, so it starts fast and runs none of the host
program's code. It writes ``{"ready": true}`` once started, then reads one job per line on
stdin, ``{"schema": "<schema JSON>", "text": "<the answer>", "limit_s": 2.0}``, finds the
answer's JSON (``_json_extract.py``, loaded by its path) and writes one line per job:
``{"valid": true}``, ``{"valid": false, "where": "$.a", "message": "..."}``,
``{"no_json": "<why>"}``; a job ``{"find": "<the answer>", "path": [...], "lists": false}``
gets the value at that path of the answer's JSON: ``{"value": ...}``, ``{"text": ...}`` (an
object or array, as ``str()``), ``{"missing": true}``. ``{"overrun": true}`` when a job was
stopped at its time limit (a timer signal), ``{"error": "..."}`` when it could not run.
Compiled validators are cached by schema text. A schema never reaches the network or the
disk: its registry refuses every retrieval. The worker dies with the engine
(``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

# SIGKILL for this worker when the engine's thread that started it ends (Linux: no orphan
# keeps a core busy), and an engine gone before this line means exit now
if sys.platform.startswith("linux"):
    with contextlib.suppress(Exception):  # no libc to call: the end of stdin tells, then
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if len(sys.argv) > 1 and os.getppid() != int(sys.argv[1]):
    os._exit(0)
with contextlib.suppress(OSError):  # not permitted here: run at the same priority
    os.nice(10)  # before the imports: a hostile answer's check must not starve the engine

import importlib.util
import json
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from jsonschema.exceptions import best_match


def _load_extract_json() -> Any:
    """``extract_json`` from its file beside this one (no package import: a fast start)."""
    path = Path(__file__).with_name("_json_extract.py")
    spec = importlib.util.spec_from_file_location("_cascade_json_extract", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.extract_json


extract_json = _load_extract_json()


class _Overrun(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Overrun


def _refuse(uri: str) -> Any:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


_REGISTRY: Any = referencing.Registry(retrieve=_refuse)  # type: ignore[call-arg]
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
    try:
        instance = extract_json(job["text"])
    except ValueError as exc:
        return {"no_json": str(exc)}
    if validator.is_valid(instance):
        return {"valid": True}
    error = best_match(validator.iter_errors(instance))
    return {
        "valid": False,
        "where": error.json_path if error is not None else "$",
        "message": (error.message if error is not None else "invalid")[:500],
    }


def find(job: dict[str, Any]) -> dict[str, Any]:
    """The value at a path of the answer's JSON (the same rule as the validators' own)."""
    try:
        value = extract_json(job["find"])
    except ValueError as exc:
        return {"no_json": str(exc)}
    for key in job["path"]:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif job["lists"] and isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return {"missing": True}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    return {"text": str(value)}


def main() -> None:
    signal.signal(signal.SIGALRM, _alarm)
    out = sys.stdout
    out.write('{"ready": true}\n')  # its start-up is not counted against the first job
    out.flush()
    for line in sys.stdin.buffer:
        try:
            job = json.loads(line)
            # stop the check at its time limit (between bytecodes), and stay alive for the
            # next job; the engine kills a worker that does not answer in time all the same
            signal.setitimer(signal.ITIMER_REAL, float(job["limit_s"]))
            try:
                reply = check(job) if "schema" in job else find(job)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Overrun:
            reply = {"overrun": True}
        except Exception as exc:  # anything the job holds is a reply, never a dead worker
            reply = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
