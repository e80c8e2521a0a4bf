"""Python's syntax check for ``code_compiles``: :func:`compile`, the bytecode discarded.

One check, two places: in-process for a short source, and, run as ``python -I -S -c``
with this file's text and the source's path, in a child interpreter (``code.py`` kills it
after ``timeout_s``). compile() holds the GIL for the whole call and its cost grows faster
than the source (nested lambdas: ~8 ms at 1 KiB, ~0.3 s at 8 KiB, seconds at 16 KiB), so a
thread would not spare the event loop. Imports nothing but the standard library.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["check"]


def check(source: str) -> str | None:
    """None when ``source`` compiles, else why not. Never runs it; the caller holds what
    guards the warnings filters (process-global) from other threads."""
    try:
        # Warnings (invalid escape sequences, `is` with a literal) must neither print nor,
        # under an "error" filter, turn into SyntaxErrors: an answer compiles or it doesn't.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, "<answer>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f" at line {exc.lineno}" if exc.lineno else ""
        snippet = (exc.text or "").strip()
        shown = f": {snippet[:80]!r}" if snippet else ""
        return f"{type(exc).__name__}{where}: {exc.msg}{shown}"
    except ValueError as exc:  # null bytes (older Pythons), lone surrogates
        return f"does not compile: {exc}"
    except (RecursionError, MemoryError):
        return "does not compile: nested too deeply"
    return None


def _main(path: str) -> int:
    """In the child: check the file at ``path``, print why it does not compile."""
    with open(path, "rb") as f:
        source = f.read().decode("utf-8", "surrogatepass")
    problem = check(source)
    if problem is None:
        return 0
    sys.stdout.buffer.write(problem.encode("utf-8", "backslashreplace"))
    return 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
