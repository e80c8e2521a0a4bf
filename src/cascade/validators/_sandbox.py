"""Where ``code_compiles`` runs a compiler: a bubblewrap sandbox that cannot read the
project's files, or, without one, the host with includes that name files refused.

The sandbox (``bwrap``): new user, mount, PID, network, IPC and UTS namespaces, every
capability dropped, a new session, killed with its parent. It sees the system's own
directories read-only (``/usr/bin``, ``/usr/lib*``, ``/usr/libexec``, ``/usr/include``,
``/lib*``, ``/bin``, ``/etc/alternatives``: what a compiler needs; not ``/usr/local`` or
``/usr/src``, where projects live in many images), Python's own interpreter and standard
library (its ``site-packages`` hidden), a private ``/tmp`` tmpfs holding the source, and a
minimal ``/dev``; nothing of ``$HOME``, the project, ``/etc`` or ``/proc``.

Without it, a C or C++ source is checked before the compiler sees it: every preprocessing
directive must be a known harmless one, ``#include`` and ``__has_include`` may only name a
system header (``<stdio.h>``, ``<sys/types.h>``), never a path or a macro, and what could
hide a directive or spell one from pieces (NUL, a byte-order mark, control characters,
``##``, ``_Pragma``) is refused. Python, ``node --check`` and ``bash -n`` never open a file
the code names.

Either way, a C or C++ compiler's messages are cut to those about the answer itself, so
that nothing it read elsewhere is quoted.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import sysconfig
from typing import Final

__all__ = [
    "SANDBOX_DIR",
    "bwrap_argv",
    "c_include_problem",
    "only_answer_lines",
    "pass_source",
    "probe",
    "python_paths",
]

# The private tmpfs holding the source, inside the sandbox (not the host's /tmp).
SANDBOX_DIR: Final = "/tmp"  # noqa: S108
# Read-only inside: the compilers' own system directories (not all of /usr: /usr/local
# and /usr/src hold projects in many images); a symlink (merged /usr) is recreated as the
# same symlink.
_SYSTEM_PATHS = (
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libx32",
    "/usr/libexec",
    "/usr/include",
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


def bwrap_argv(
    bwrap: str,
    source: tuple[int, str] | None,
    *,
    tool: str | None = None,
    binds: tuple[str, ...] = (),
    masks: tuple[str, ...] = (),
) -> list[str]:
    """``bwrap`` options for one syntax check; ``source``: (file descriptor, path inside
    the sandbox), the file copied in; ``tool``: a compiler outside the system directories,
    bound read-only at its path (that file alone); ``binds``: more paths bound read-only;
    ``masks``: directories inside those hidden under an empty tmpfs. Append ``--`` and the
    command."""
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
    if tool is not None and not _is_system(tool):
        argv += ["--ro-bind", tool, tool]
    for path in binds:
        argv += ["--ro-bind", path, path]
    for path in masks:
        argv += ["--tmpfs", path]
    if source is not None:
        argv += ["--file", str(source[0]), source[1]]
    return argv


def _is_system(path: str) -> bool:
    return path.startswith(tuple(p + "/" for p in _SYSTEM_PATHS))


def python_paths() -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """This Python for a child syntax check: its executable, what the sandbox must bind
    for it (outside the system directories: the executable, the standard library, the
    shared libpython), and the directories to hide inside those (site-packages)."""
    exe = os.path.realpath(sys.executable)
    stdlib = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib")}
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    shared = sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and soname
    wanted = [exe, *sorted(stdlib)]
    if shared:
        wanted.append(os.path.join(libdir, soname))
    binds = tuple(p for p in wanted if os.path.exists(p) and not _is_system(p))
    sites = {sysconfig.get_path(name) for name in ("purelib", "platlib")}
    masks = tuple(sorted(s for s in sites if os.path.isdir(s) and any(_under(s, b) for b in binds)))
    return exe, binds, masks


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


async def probe(
    bwrap: str,
    env: dict[str, str],
    command: tuple[str, ...] = ("true",),
    *,
    binds: tuple[str, ...] = (),
    masks: tuple[str, ...] = (),
) -> str | None:
    """None when ``command`` runs in a bwrap sandbox here, else why not (its first line of
    error)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *bwrap_argv(bwrap, None, binds=binds, masks=masks),
            "--",
            *command,
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
# #embed, #line markers and anything unknown are refused; #pragma by its name.
_HARMLESS = frozenset(
    {"define", "undef", "if", "ifdef", "ifndef", "elif", "elifdef", "elifndef", "else"}
    | {"endif", "error", "warning", "line"}
)
# Pragmas that open no file (not `GCC dependency`, `GCC pch_preprocess`, `include_alias`).
_PRAGMAS = frozenset(
    {"once", "pack", "push_macro", "pop_macro", "diagnostic", "optimize", "push_options"}
    | {"pop_options", "reset_options", "target", "visibility", "poison", "system_header"}
    | {"warning", "error", "message", "region", "endregion", "ivdep", "unroll", "novector"}
    | {"weak", "redefine_extname", "scalar_storage_order", "mark", "FP_CONTRACT"}
    | {"FENV_ACCESS", "CX_LIMITED_RANGE", "FENV_ROUND", "FENV_DEC_ROUND"}
)
_PRAGMA_SPACES = frozenset({"GCC", "clang", "STDC"})
_PRAGMA_FREE = frozenset({"omp", "acc"})  # OpenMP / OpenACC: no file names
_SPLICE = re.compile(r"\\[ \t\f\v]*\n")  # gcc splices a backslash, spaces, newline too
# White space and whole comments; a comment cannot run past its first */ (no backtracking).
_SPACE = re.compile(r"(?:[ \t\f\v]|/\*(?:[^*]|\*(?!/))*\*/)*")
_HASH = re.compile(r"#|%:")  # %: is the digraph of #
_NAME = re.compile(r"[A-Za-z_]\w*")
_HEADER = re.compile(r"<[A-Za-z0-9_][A-Za-z0-9_.+-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*>")
# What a compiler skips (NUL: gcc ignores it; a byte-order mark) or may read as white
# space or a line break, and this check would not: before it a directive is hidden.
_HIDING = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\x85\u2028\u2029\ufeff]")
# Spelling a name from pieces (##, %:%: its digraph) can make one of _OPERATORS, and
# _Pragma(...) a #pragma from a string built by macros: neither can be checked here.
_PASTE = re.compile(r"##|%:%:|_Pragma|__pragma")
# Operators that look a file up: only `(<system header>)` may follow.
_OPERATORS = re.compile(r"__has_(?:include|embed)\w*")


def c_include_problem(code: str) -> str | None:
    """Why ``code`` (C or C++) may make a compiler read a file, or see whether one
    exists, or None.

    Deliberately over-cautious: anything that may be a directive or an operator that looks
    a file up is checked, also where a comment or a string would make it none (such code is
    refused, not missed). Linear in ``code``.
    """
    problem = _token_problem(code)
    if problem is not None:
        return f"{problem} (no sandbox here: system headers only)"
    text = code.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPLICE.sub("", text.replace("??/", "\\").replace("??=", "#"))
    problem = _token_problem(text)  # also where a splice or trigraph made one
    if problem is not None:
        return f"{problem} (no sandbox here: system headers only)"
    for lineno, line in enumerate(text.split("\n"), 1):
        reach = -1  # where the white space and comments from an earlier start end
        for start in [0, *(m.end() for m in re.finditer(r"\*/", line))]:
            if start <= reach:
                continue  # a comment end inside that run: the same directive position
            reach = _skip(line, start)
            problem = _directive_problem(line, reach)
            if problem is not None:
                return f"line {lineno}: {problem} (no sandbox here: system headers only)"
    return None


def _token_problem(text: str) -> str | None:
    hiding = _HIDING.search(text)
    if hiding is not None:
        line = text.count("\n", 0, hiding.start()) + 1
        return f"line {line}: character U+{ord(hiding.group()):04X} is not allowed"
    paste = _PASTE.search(text)
    if paste is not None:
        line = text.count("\n", 0, paste.start()) + 1
        return f"line {line}: {paste.group()} is not allowed"
    for op in _OPERATORS.finditer(text):
        if op.group() in ("__has_include", "__has_include_next"):
            pos = _skip(text, op.end())
            if text.startswith("(", pos):
                header = _HEADER.match(text, _skip(text, pos + 1))
                if header is not None and text.startswith(")", _skip(text, header.end())):
                    continue
        line = text.count("\n", 0, op.start()) + 1
        return f"line {line}: {op.group()} may only name a system header, as (<stdio.h>)"
    return None


def _directive_problem(line: str, pos: int) -> str | None:
    hash_ = _HASH.match(line, pos)
    if hash_ is None:
        if pos < len(line) and not line[pos].isascii() and _HASH.search(line, pos):
            return "a character before # that may hide a directive"
        return None  # not a directive
    pos = _skip(line, hash_.end())
    name = _NAME.match(line, pos)
    if name is None:
        if line[pos:].strip() == "":
            return None  # the null directive
        return "a preprocessing directive that is not a plain name"
    if name.group() in _HARMLESS:
        return None
    if name.group() == "pragma":
        return _pragma_problem(line, name.end())
    if name.group() != "include":
        return f"#{name.group()} is not allowed"
    pos = _skip(line, name.end())
    header = _HEADER.match(line, pos)
    end = _skip(line, header.end()) if header is not None else pos
    if header is None or not (end == len(line) or line.startswith("//", end)):
        return f"#include {line[pos:].strip()[:60]} names a file, not a system header"
    return None


def _pragma_problem(line: str, pos: int) -> str | None:
    names = []
    for _ in range(2):
        name = _NAME.match(line, _skip(line, pos))
        if name is None:
            break
        names.append(name.group())
        pos = name.end()
    if not names or names[0] in _PRAGMA_FREE:
        return None
    if names[0] in _PRAGMA_SPACES:
        names = names[1:]
    if names and names[0] in _PRAGMAS:
        return None
    shown = line[_skip(line, 0) :].strip()[:60]
    return f"{shown} is not allowed"


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
