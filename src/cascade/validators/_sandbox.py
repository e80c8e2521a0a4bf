"""Where ``code_compiles`` runs a compiler: a bubblewrap sandbox that cannot read the
project's files, or, without one, the host with includes that name files refused.

The sandbox (``bwrap``): new user, mount, PID, network, IPC and UTS namespaces, every
capability dropped, a new session, killed with its parent. It sees the system's own
directories read-only (``/usr``, ``/lib*``, ``/bin``, ``/etc/alternatives``: what a
compiler needs), a private ``/tmp`` tmpfs holding the source, and a minimal ``/dev``;
nothing of ``$HOME``, the project, ``/etc`` or ``/proc``.

Without it, a C or C++ source is checked before the compiler sees it: every preprocessing
directive must be a known harmless one, and ``#include`` may only name a system header
(``<stdio.h>``, ``<sys/types.h>``), never a path or a macro. Python, ``node --check`` and
``bash -n`` never open a file the code names.

Either way, a C or C++ compiler's messages are cut to those about the answer itself, so
that nothing it read elsewhere is quoted.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Final

__all__ = [
    "SANDBOX_DIR",
    "bwrap_argv",
    "c_include_problem",
    "only_answer_lines",
    "pass_source",
    "probe",
]

# The private tmpfs holding the source, inside the sandbox (not the host's /tmp).
SANDBOX_DIR: Final = "/tmp"  # noqa: S108
# Read-only inside: the compilers' own system directories; a symlink (merged /usr) is
# recreated as the same symlink.
_SYSTEM_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/ld.so.cache",
)
_PROBE_TIMEOUT_S = 10.0


def bwrap_argv(bwrap: str, source: tuple[int, str] | None, *, tool: str | None = None) -> list[str]:
    """``bwrap`` options for one syntax check; ``source``: (file descriptor, path inside
    the sandbox), the file copied in; ``tool``: a compiler outside the system directories,
    bound read-only at its path (that file alone). Append ``--`` and the command."""
    argv = [
        bwrap,
        "--unshare-all",  # user (where possible), mount, PID, network, IPC, UTS, cgroup
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into the caller's terminal
        "--cap-drop",
        "ALL",
    ]
    for path in _SYSTEM_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            argv += ["--ro-bind", path, path]
    argv += ["--dev", "/dev", "--tmpfs", SANDBOX_DIR, "--chdir", SANDBOX_DIR]
    if tool is not None and not tool.startswith(tuple(p + "/" for p in _SYSTEM_PATHS)):
        argv += ["--ro-bind", tool, tool]
    if source is not None:
        argv += ["--file", str(source[0]), source[1]]
    return argv


async def probe(bwrap: str, env: dict[str, str]) -> str | None:
    """None when a bwrap sandbox starts here, else why not (its first line of error)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *bwrap_argv(bwrap, None),
            "--",
            "true",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return f"{bwrap}: {exc.strerror}"
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"{bwrap} did not start within {_PROBE_TIMEOUT_S:g}s"
    if proc.returncode == 0:
        return None
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return lines[0][:200] if lines else f"{bwrap} exited with status {proc.returncode}"


def pass_source(code: str) -> int:
    """An anonymous in-memory file holding ``code``, at offset 0, for ``--file``."""
    fd = os.memfd_create("cascade-answer", os.MFD_CLOEXEC)
    try:
        data = code.encode("utf-8", "surrogatepass")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- without a sandbox: C and C++ directives ----------------------------------------------

# Directives that read no file. #include is checked on its own; #include_next, #import,
# #embed, #line markers and anything unknown are refused.
_HARMLESS = frozenset(
    {"define", "undef", "if", "ifdef", "ifndef", "elif", "elifdef", "elifndef", "else"}
    | {"endif", "error", "warning", "pragma", "line"}
)
_SPLICE = re.compile(r"\\[ \t\f\v]*\n")  # gcc splices a backslash, spaces, newline too
_SPACE = re.compile(r"(?:[ \t\f\v]+|/\*.*?\*/)*", re.S)  # white space and whole comments
_HASH = re.compile(r"#|%:")  # %: is the digraph of #
_NAME = re.compile(r"[A-Za-z_]\w*")
_SYSTEM_HEADER = re.compile(
    r"<[A-Za-z0-9_][A-Za-z0-9_.+-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*>"
    r"(?:[ \t\f\v]+|/\*.*?\*/)*(?://.*)?$"
)


def c_include_problem(code: str) -> str | None:
    """Why ``code`` (C or C++) may make a compiler read a file, or None.

    Deliberately over-cautious: anything that may be a directive is checked, also where a
    comment or a raw string would make it none (such a line is refused, not missed).
    """
    text = code.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPLICE.sub("", text.replace("??/", "\\").replace("??=", "#"))
    for lineno, line in enumerate(text.split("\n"), 1):
        starts = [0] + [m.end() for m in re.finditer(r"\*/", line)]
        for start in starts:
            problem = _directive_problem(line, _skip(line, start))
            if problem is not None:
                return f"line {lineno}: {problem} (no sandbox here: system headers only)"
    return None


def _directive_problem(line: str, pos: int) -> str | None:
    hash_ = _HASH.match(line, pos)
    if hash_ is None:
        return None  # not a directive
    pos = _skip(line, hash_.end())
    name = _NAME.match(line, pos)
    if name is None:
        if line[pos:].strip() == "":
            return None  # the null directive
        return "a preprocessing directive that is not a plain name"
    if name.group() in _HARMLESS:
        return None
    if name.group() != "include":
        return f"#{name.group()} is not allowed"
    rest = line[_skip(line, name.end()) :]
    if _SYSTEM_HEADER.match(rest) is None:
        return f"#include {rest.strip()[:60]} names a file, not a system header"
    return None


def _skip(line: str, pos: int) -> int:
    """Past the white space and whole comments at ``pos``."""
    m = _SPACE.match(line, pos)
    assert m is not None  # the pattern matches the empty string
    return m.end()


def only_answer_lines(output: str, shown: str) -> str:
    """A C/C++ compiler's messages about the answer (lines starting ``<shown>:``) only:
    notes on included files and "In file included from" lines are dropped, so that
    nothing read from another file is quoted."""
    prefix = shown + ":"
    return "\n".join(line for line in output.splitlines() if line.startswith(prefix))
