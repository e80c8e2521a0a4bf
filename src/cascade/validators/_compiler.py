"""Running one syntax check for ``code_compiles``: the compiler as a child process that can
neither hang the run nor flood it, whatever the answer holds.

An answer is untrusted input to a program written for trusted input: a compiler may loop,
allocate without end (``#include "/dev/zero"``), write large files or print megabytes of
messages. So it gets the code as a file (in the sandbox's private tmpfs, passed by
descriptor, or in a fresh temporary directory on the host), no stdin, no shell, limits on
its address space, CPU time and file size, and a process group of its own, killed as one
when ``timeout_s`` runs out or the run is cancelled. What it prints is read to the end (a
full pipe would stall it) but only the first 64 KiB kept, and becomes the verdict's reason
(the file shown as ``<answer>``). Which compiler runs, and whether in the sandbox, is the
validator's choice (:mod:`.code`); what the sandbox is, :mod:`._sandbox`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import re
import resource
import shutil
import signal
import tempfile

from ._sandbox import SANDBOX_DIR, bwrap_argv, only_answer_lines, pass_source

__all__ = ["run_compiler"]

# A line that starts an import or export statement (not import() or import.meta); linear:
# no quantifier can reach past its own line.
_ES_MODULE = re.compile(r"^[ \t]*(?:import[ \t]*[\w{*\"']|export[ \t{*])", re.M)
_NODE_NOISE = re.compile(r"^(?:[ \t]+at .*|Node\.js v[\d.]+)$", re.M)

_MEMORY_LIMIT = 1 << 30  # bytes of address space for a compiler (`#include "/dev/zero"`)
_FILE_LIMIT = 16 << 20  # bytes a compiler may write
_MAX_OUTPUT = 64 * 1024  # compiler output kept for the reason; the rest is drained
_MAX_REASON = 1000


async def run_compiler(
    command: tuple[str, ...],
    code: str,
    *,
    suffix: str,
    env: dict[str, str],
    timeout_s: float,
    bwrap: str | None,
    binds: tuple[str, ...],
    masks: tuple[str, ...],
    c_family: bool,
    sandboxed: bool,
) -> str | None:
    """What ``command`` (its ``{file}`` the answer's ``code``, as a file ending in
    ``suffix``) says is wrong with the code, as a verdict's reason; None when it exits 0.
    ``sandboxed``: in the ``bwrap`` sandbox with ``binds`` and ``masks``
    (:func:`._sandbox.bwrap_argv`), else in a fresh temporary directory on the host.
    ``c_family``: a C or C++ compiler, whose messages are cut to those about the answer."""
    # A few microseconds of local file I/O, kept on the loop so that a cancelled run
    # (its deadline) can never leak the directory or the descriptor.
    tmp = fd = None
    if suffix == ".js" and _ES_MODULE.search(code):
        # node --check (v20) exits 0 on a .js file whose import statement precedes a
        # syntax error: an ES module is checked as one.
        suffix = ".mjs"
    try:
        if sandboxed:
            assert bwrap is not None
            path = f"{SANDBOX_DIR}/answer{suffix}"
            fd = pass_source(code)
            tool = None if command[0] in binds else command[0]
            argv = bwrap_argv(bwrap, (fd, path), tool=tool, binds=binds, masks=masks)
            argv.append("--")
            cwd = None
        else:
            tmp = cwd = tempfile.mkdtemp(prefix="cascade-code-")
            path = os.path.join(tmp, "answer" + suffix)
            _write(path, code)
            argv = []
        argv += (arg.replace("{file}", path) for arg in command)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group, killed as one on timeout
            preexec_fn=functools.partial(_limits, timeout_s),
            pass_fds=() if fd is None else (fd,),
        )
        try:
            async with asyncio.timeout(timeout_s) as limit:
                out, err = await asyncio.gather(_read(proc.stdout), _read(proc.stderr))
                status = await proc.wait()
        except TimeoutError:
            if not limit.expired():
                raise
            return f"compiler timed out after {timeout_s:g}s"
        finally:
            if proc.returncode is None:  # timed out, or the run was cancelled
                _kill_group(proc.pid)
                await proc.wait()
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if status == 0:
        return None
    output = (err or out).decode("utf-8", "replace").replace(path, "<answer>")
    if c_family:
        output = only_answer_lines(output, "<answer>")
    output = _NODE_NOISE.sub("", output).strip()
    if not output:
        how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        output = f"compiler {how}"
    return output if len(output) <= _MAX_REASON else output[:_MAX_REASON] + " ..."


def _limits(timeout_s: float) -> None:
    """In the child, before exec: bound memory, CPU time and output file size."""
    cpu = math.ceil(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_LIMIT, _FILE_LIMIT))


def _write(path: str, code: str) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(code)


async def _read(stream: asyncio.StreamReader | None) -> bytes:
    """Everything ``stream`` sends, keeping the first ``_MAX_OUTPUT`` bytes."""
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < _MAX_OUTPUT:
            kept += chunk[: _MAX_OUTPUT - len(kept)]
    return bytes(kept)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, signal.SIGKILL)
