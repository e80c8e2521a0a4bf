"""``code_compiles``: the answer's code must compile in its language; it is never executed.

Python goes through :func:`compile` (``_pycheck.py``), in-process for a short source, else
in a child interpreter; other languages through a syntax-only command (``node --check``,
``gcc -fsyntax-only``, ``bash -n``, your own). A child (``_compiler.py``) runs inside a
bubblewrap sandbox where one starts (``_sandbox.py``), killed after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Literal

import anyio.to_thread
import structlog

from .._errors import ConfigError
from .._types import Completion, Verdict
from . import _pycheck
from ._compiler import run_compiler
from ._fences import Fence, fences, layout
from ._registry import ValidationContext, validator
from ._sandbox import c_include_problem, probe, python_paths

__all__ = ["CodeCompilesValidator"]

log = structlog.get_logger("cascade")


# language -> (syntax-check command, file suffix); no command: Python's compile()
_PRESETS: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "python": (None, ".py"),
    "javascript": (("node", "--check", "{file}"), ".js"),
    # No caret lines: a diagnostic must not quote what an `#include "/etc/..."` pulled in.
    "c": (("gcc", "-fsyntax-only", "-fno-diagnostics-show-caret", "-x", "c", "{file}"), ".c"),
    "cpp": (
        ("g++", "-fsyntax-only", "-fno-diagnostics-show-caret", "-x", "c++", "{file}"),
        ".cpp",
    ),
    "bash": (("bash", "-n", "{file}"), ".sh"),
}
# Fence tags per language, the canonical name first. Languages beyond the presets are here
# so that ``check_partial`` knows a fence of another language when it sees one.
_LANGUAGE_TAGS = (
    "python py python3 py3; javascript js node mjs cjs; c h; cpp c++ cxx cc hpp; "
    "bash sh shell zsh console; powershell ps1; typescript ts tsx; java; go golang; rust rs; "
    "ruby rb; php; csharp cs c#; kotlin kt; swift; scala; perl pl; lua; haskell hs; r; dart; "
    "julia; elixir; zig"
)
_LANGUAGES = [group.split() for group in _LANGUAGE_TAGS.split(";")]
# Shell blocks ("pip install x", "npm i x") often come before the code an answer is about.
_SHELLS = frozenset({"bash", "powershell"})
_ALIAS = {tag: group[0] for group in _LANGUAGES for tag in group}
_TAGS = {group[0]: frozenset(group) for group in _LANGUAGES}

# compile() holds the GIL and grows faster than the source (nested lambdas: ~8 ms at this
# size, ~0.3 s at 8 KiB): longer sources compile in a child interpreter, killed on timeout.
_INLINE_CHARS = 1024
_MAX_SOURCE = 200_000  # characters of code
_MAX_TEXT = 2 * _MAX_SOURCE  # characters of answer searched for code
_LOOP_CHARS = 16_384  # longer answers are searched for code in a worker thread
_MAX_TIMEOUT_S = 3600.0
_C_FAMILY = frozenset({"c", "cpp"})
Sandbox = Literal["auto", "bwrap", "off"]
# warnings.catch_warnings swaps process-global state: never from two threads at once.
_WARNINGS_LOCK = threading.Lock()


@validator("code_compiles")
class CodeCompilesValidator:
    """Accepts an answer whose code compiles in ``language``; it is never executed.

    The code: the answer's fenced blocks of that language (```` ```python ````, ```` ```py ````
    or a tag in ``fence``), else its untagged fenced blocks, else, when the answer has no
    fence at all, the whole answer; ``require_fence = true`` takes tagged blocks only.
    Several blocks are checked as one file, prose blanked out so that a reason's line
    numbers are the answer's. The verdict's ``parsed`` is that code.

    ``language``: ``python`` (:func:`compile`: in-process up to 1 KiB, else in a child
    ``python -I -S`` like any compiler), ``javascript`` (``node --check``), ``c``
    (``gcc -fsyntax-only``), ``cpp`` (``g++ -fsyntax-only``), ``bash`` (``bash -n``),
    or any name with ``command = ["tool", "--check", "{file}"]`` and ``suffix``. A compiler
    runs without a shell or stdin, with an environment holding only ``PATH`` (as it was
    when the validator was built, so a compiler driver finds its helpers; no API keys, no
    ``HOME``), ``max_concurrency`` at a time, for at most ``timeout_s`` (then its process
    group is killed and the answer rejected). Its output, the file shown as ``<answer>``,
    is the reason; a C or C++ compiler's only as far as it is about the answer (nothing
    quoted from an included file). A compiler not on PATH is a ConfigError.

    ``sandbox``: where the compiler runs. ``"bwrap"``: in a bubblewrap sandbox that sees
    the system's directories read-only, the source in a private tmpfs, and no project
    file, home, ``/etc`` or network (``bwrap`` on PATH, else a ConfigError; a sandbox that
    fails to start rejects every answer). ``"off"``: in a fresh temporary directory on the
    host; a C or C++ ``#include`` or ``__has_include`` may then only name a system header
    (``<stdio.h>``), and other directives that read files (``#embed``, ``#include_next``,
    ``#pragma GCC dependency``...), what could hide a directive (NUL, a byte-order mark,
    control characters) or spell one (``##``, ``_Pragma``) are refused (Python,
    ``node --check`` and ``bash -n`` never open a file the code names; your own ``command``
    is not checked). ``"auto"`` (default): ``"bwrap"`` when a sandbox starts here, else
    ``"off"``, logged once (``code_compiles sandbox``, ``mode``). In the sandbox, a command
    of your own is there at its path, but must find all else it needs (interpreter,
    libraries, toolchain) under ``/usr/bin``, ``/usr/lib*``, ``/usr/libexec``,
    ``/usr/include`` or ``/lib*`` (not ``/usr/local``); give ``sandbox = "off"`` if not.
    An answer over 400,000 characters, or code over 200,000, is rejected unchecked.

    ``early_reject`` (default true): a streaming answer whose first tagged fence opens
    another language (```` ```javascript ```` when Python is wanted; shell blocks such as
    ``pip install`` do not count) is rejected as it arrives.

    Example::

        validators = [{ name = "code_compiles", language = "c", timeout_s = 5 }]
    """

    def __init__(
        self,
        *,
        language: str,
        command: list[str] | None = None,
        suffix: str | None = None,
        fence: list[str] | None = None,
        timeout_s: float = 10.0,
        max_concurrency: int = 4,
        require_fence: bool = False,
        early_reject: bool = True,
        sandbox: Sandbox = "auto",
        name: str = "code_compiles",
    ) -> None:
        if not isinstance(language, str) or not language.strip():
            raise ConfigError("expected a language name", path="language")
        lang = _ALIAS.get(language.strip().lower(), language.strip().lower())
        preset = _PRESETS.get(lang)
        if command is not None:
            if not _strings(command) or not command or not all(command):
                raise ConfigError("expected a list of non-empty strings", path="command")
            if not any("{file}" in arg for arg in command):
                raise ConfigError("the command needs a {file} placeholder", path="command")
            preset = (tuple(command), preset[1] if preset else "")
        elif preset is None:
            raise ConfigError(
                f"no syntax check built in for {language!r} (built in: "
                f"{', '.join(_PRESETS)}); give `command`",
                path="language",
            )
        argv = preset[0]
        # Python's own check: this interpreter, isolated (-I), without site (-S).
        self._python_inline = argv is None
        python = ""
        self._binds: tuple[str, ...] = ()
        self._masks: tuple[str, ...] = ()
        if argv is None:
            if not sys.executable:  # an embedded interpreter: no child to run
                raise ConfigError("no Python executable for the syntax check", path="language")
            python, self._binds, self._masks = python_paths()
            child = Path(_pycheck.__file__).read_text(encoding="utf-8")
            argv = (python, "-I", "-S", "-c", child, "{file}")
        suffix = preset[1] if suffix is None else suffix
        if not isinstance(suffix, str) or "/" in suffix or "\\" in suffix:
            raise ConfigError(f"expected a suffix such as '.js', got {suffix!r}", path="suffix")
        if fence is not None and not _strings(fence):
            raise ConfigError("expected a list of fence tags", path="fence")
        if type(timeout_s) not in (int, float) or not 0 < timeout_s <= _MAX_TIMEOUT_S:
            raise ConfigError(
                f"expected seconds > 0 and <= {_MAX_TIMEOUT_S:g}, got {timeout_s!r}",
                path="timeout_s",
            )
        if sandbox not in ("auto", "bwrap", "off"):
            raise ConfigError(f"expected 'auto', 'bwrap' or 'off', got {sandbox!r}", path="sandbox")
        if type(max_concurrency) is not int or max_concurrency < 1:
            raise ConfigError(
                f"expected an integer >= 1, got {max_concurrency!r}", path="max_concurrency"
            )
        self.name = name
        self.language = lang
        self.suffix = suffix
        self.timeout_s = float(timeout_s)
        self.max_concurrency = max_concurrency
        self.require_fence = bool(require_fence)
        self.early_reject = bool(early_reject)
        self.tags = _TAGS.get(lang, frozenset({lang})) | {t.strip().lower() for t in fence or ()}
        self._env = {"PATH": os.environ.get("PATH", os.defpath)}
        found = python or shutil.which(argv[0], path=self._env["PATH"])
        if found is None:
            where = "command" if command is not None else "language"
            raise ConfigError(f"compiler {argv[0]!r} not found on PATH", path=where)
        self.command: tuple[str, ...] = (found, *argv[1:])
        self._probe_command = (python, "-I", "-S", "-c", "pass") if python else ("true",)
        self.sandbox: Sandbox = sandbox
        self._bwrap = shutil.which("bwrap", path=self._env["PATH"])
        if sandbox == "bwrap" and self._bwrap is None:
            raise ConfigError("bwrap (bubblewrap) not found on PATH", path="sandbox")
        # "bwrap" or "off" once known; the first check of an "auto" validator probes.
        self._mode: Literal["bwrap", "off"] | None = None if sandbox != "off" else "off"
        self._sandbox_error = ""
        self._probing = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._running = 0

    def __repr__(self) -> str:
        how = "compile()" if self._python_inline else " ".join(self.command)
        return (
            f"<CodeCompilesValidator {self.name!r} {self.language}: {how}, "
            f"sandbox {self._mode or self.sandbox}, "
            f"running {self._running}/{self.max_concurrency}>"
        )

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        text = completion.text
        if len(text) > _MAX_TEXT:
            return self._verdict(
                False, f"answer too long to look for code ({len(text)} characters)"
            )
        # Finding fences and laying the code out is linear, not free: off the loop when long.
        if len(text) <= _LOOP_CHARS:
            code, problem = self._code(text)
        else:
            code, problem = await anyio.to_thread.run_sync(self._code, text)
        if code is None:
            return self._verdict(False, problem)
        if len(code) > _MAX_SOURCE:
            return self._verdict(False, f"code too long to check ({len(code)} characters)")
        # A short Python source compiles on the loop (unless another thread holds the
        # warnings lock); anything else in a child process.
        if (
            self._python_inline
            and len(code) <= _INLINE_CHARS
            and _WARNINGS_LOCK.acquire(blocking=False)
        ):
            try:
                error = _pycheck.check(code)
            finally:
                _WARNINGS_LOCK.release()
            return self._verdict(error is None, error or "", code)
        mode = self._mode or await self._probe()
        if mode == "bwrap" and self._sandbox_error:
            return self._verdict(False, f"sandbox failed to start: {self._sandbox_error}")
        if mode == "off" and self.language in _C_FAMILY:
            if len(code) <= _LOOP_CHARS:
                refused = c_include_problem(code)
            else:
                refused = await anyio.to_thread.run_sync(c_include_problem, code)
            if refused is not None:
                return self._verdict(False, refused)
        async with self._slots:
            self._running += 1
            try:
                error = await run_compiler(
                    self.command,
                    code,
                    suffix=self.suffix,
                    env=self._env,
                    timeout_s=self.timeout_s,
                    bwrap=self._bwrap,
                    binds=self._binds,
                    masks=self._masks,
                    c_family=self.language in _C_FAMILY,
                    sandboxed=mode == "bwrap",
                )
            finally:
                self._running -= 1
        return self._verdict(error is None, error or "", code)

    async def _probe(self) -> Literal["bwrap", "off"]:
        """Whether a bwrap sandbox starts here (once; logged)."""
        async with self._probing:
            if self._mode is not None:
                return self._mode
            why = "bwrap not found on PATH"
            if self._bwrap is not None:
                failed = await probe(
                    self._bwrap,
                    self._env,
                    self._probe_command,
                    binds=self._binds,
                    masks=self._masks,
                )
                why = failed or ""
            if not why:
                self._mode = "bwrap"
                log.info("code_compiles sandbox", validator=self.name, mode="bwrap")
            elif self.sandbox == "bwrap":
                self._mode, self._sandbox_error = "bwrap", why
                log.error("code_compiles sandbox", validator=self.name, mode="bwrap", error=why)
            else:
                self._mode = "off"
                log.warning(
                    "code_compiles sandbox",
                    validator=self.name,
                    mode="off",
                    why=why,
                    effect="includes of files are refused; compilers run on the host",
                )
            return self._mode

    def check_partial(self, text: str, context: ValidationContext) -> Verdict | None:
        """Reject a partial answer whose first tagged fence opens another language."""
        for fence in fences(text):
            if fence.tag is None or fence.tag in self.tags:
                return None  # the tag is not complete yet, or the wanted language is there
            other = _ALIAS.get(fence.tag)
            if other is not None and (other not in _SHELLS or self.language in _SHELLS):
                return self._verdict(
                    False,
                    f"rejected while streaming: a ```{fence.tag} block, not {self.language}",
                )
        return None

    # -- finding the code ------------------------------------------------------------------

    def _code(self, text: str) -> tuple[str | None, str]:
        found = list(fences(text))
        chosen = [f for f in found if f.tag in self.tags]
        if not chosen and not self.require_fence:
            chosen = [f for f in found if f.tag == ""]
            if not found:
                chosen = [Fence("", 0, len(text))]
        if not chosen:
            seen = sorted({f"```{f.tag}" for f in found if f.tag})
            also = f" (found {', '.join(seen)})" if seen else ""
            return None, f"no ```{self.language} block in the answer{also}"
        code = layout(text, chosen)
        if not code.strip():
            return None, f"the {self.language} code is empty"
        return code, ""

    def _verdict(self, passed: bool, reason: str, code: str | None = None) -> Verdict:
        return Verdict(
            validator=self.name,
            passed=passed,
            score=1.0 if passed else 0.0,
            reason=reason,
            parsed=code if passed else None,
        )


def _strings(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
