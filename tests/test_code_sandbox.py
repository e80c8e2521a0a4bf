"""code_compiles cannot make a compiler quote a file the answer names: a canary file's
text never reaches a verdict, a span or the CLI, in the bwrap sandbox and without it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

import cascade
from cascade import Cascade, Completion, ConfigError
from cascade.testing import FakeOpenAIServer
from cascade.validators import CodeCompilesValidator
from cascade.validators._sandbox import bwrap_argv, c_include_problem, pass_source

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

CTX = cascade.ValidationContext(
    messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t"
)
TOOLS = {"javascript": "node", "c": "gcc", "cpp": "g++", "bash": "bash"}
HAS_BWRAP = shutil.which("bwrap") is not None
MODES = [
    pytest.param("bwrap", marks=pytest.mark.skipif(not HAS_BWRAP, reason="no bwrap")),
    "off",
]
# Each token a compiler would quote from a file it read as C.
SECRET = ("sk_canary_7f3a9c", "leaked_canary_b81e", "CANARY_KEY_ID")

# Every way each language's code can name a file ({path}: the canary's absolute path).
C_INCLUDES = [
    '#include "{path}"',
    "#include <{path}>",
    '#define F "{path}"\n#include F',
    '%:include "{path}"',
    '#inc\\\nlude "{path}"',
    '/* a */ # /* b */ include "{path}"',
    '/* a\n */ #include "{path}"',
    '#include_next "{path}"',
    '#embed "{path}"',
    '#include "../../../../../../../../..{path}"',
    '#pragma GCC dependency "{path}"\n#include "{path}"',
    'int x =\n#include "{path}"\n;',
]
READS = {
    "c": C_INCLUDES,
    "cpp": [*C_INCLUDES, 'auto s = R"(x)";\n#include "{path}"'],
    "javascript": [
        'import x from "{path}";',
        'const x = require("{path}");',
        'import("{path}");',
        'import x from "{path}" with {{ type: "json" }};',
    ],
    "bash": ["source {path}", ". {path}", "x=$(< {path})", "echo $(cat {path})"],
    "python": ['print(open("{path}").read())', 'exec(open("{path}").read())'],
}
CASES = [
    pytest.param(lang, i, marks=pytest.mark.skipif(
        lang in TOOLS and shutil.which(TOOLS[lang]) is None, reason=f"no {TOOLS.get(lang)}"))
    for lang, codes in READS.items()
    for i in range(len(codes))
]  # fmt: skip


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A readable file holding a fake secret, as a project's ``.env`` would."""
    project = tmp_path / "project"
    project.mkdir()
    path = project / ".env"
    path.write_text(f"{SECRET[2]} = {SECRET[0]};\nint {SECRET[1]} = {SECRET[0]} + 1;\n")
    return path


def answer(language: str, index: int, path: Path) -> str:
    code = READS[language][index].format(path=path)
    # A C function first: valid C, a syntax error in the others (node --check passes a .js
    # file with an import in it whatever follows; not so when the error comes first).
    return f"Here you go:\n```{language}\nint main(void) {{ return 0; }}\n{code}\n```\n"


def leaks(text: str) -> list[str]:
    return [s for s in SECRET if s in text]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("language", "index"), CASES)
async def test_no_verdict_quotes_a_file_the_code_names(
    canary: Path, mode: str, language: str, index: int
) -> None:
    v = CodeCompilesValidator(language=language, sandbox=mode)  # type: ignore[arg-type]
    text = answer(language, index, canary)
    verdict = await v.validate(Completion(text=text, provider="p", model="m"), CTX)
    assert leaks(verdict.reason) == [], verdict.reason
    assert f"sandbox {mode}" in repr(v) or language == "python"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("language", ["c", "cpp"])
async def test_no_span_event_quotes_a_file_the_code_names(
    openai_server: FakeOpenAIServer, canary: Path, mode: str, language: str
) -> None:
    if shutil.which(TOOLS[language]) is None:
        pytest.skip(f"no {TOOLS[language]}")
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    spec = {"name": "code_compiles", "language": language, "sandbox": mode}
    cfg = {
        "tiers": [
            tier("small", provider("s", openai_server.url, "small"), validators=[spec]),
            tier("large", provider("l", openai_server.url, "large")),
        ]
    }
    async with Cascade.from_dict(cfg, tracer_provider=tracer_provider) as cc:
        for index in range(len(READS[language])):
            openai_server.reset()
            openai_server.script("small", answer(language, index, canary))
            openai_server.script("large", "fine")
            result = await cc.run(messages=USER)
            assert result.tier == 2  # every one of them rejected
    tracer_provider.shutdown()
    spans = exporter.get_finished_spans()
    events = [e for s in spans for e in s.events if e.name == "cascade.validation"]
    assert len(events) == len(READS[language])
    dump = json.dumps([s.to_json() for s in spans])
    assert leaks(dump) == []


async def _cli_run(config: Path) -> subprocess.CompletedProcess[str]:
    import anyio

    argv = [sys.executable, "-m", "cascade._cli", "run", "--config", str(config), "hi"]
    result = await anyio.run_process(argv, check=False)
    return subprocess.CompletedProcess(
        argv, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("language", ["c", "cpp", "javascript", "bash", "python"])
async def test_the_cli_prints_no_file_the_code_names(
    openai_server: FakeOpenAIServer, canary: Path, tmp_path: Path, mode: str, language: str
) -> None:
    if language in TOOLS and shutil.which(TOOLS[language]) is None:
        pytest.skip(f"no {TOOLS[language]}")
    # a tier per way of naming the file: one run tries them all, and prints each reason
    config = tmp_path / "cascade.toml"
    spec = f'{{ name = "code_compiles", language = "{language}", sandbox = "{mode}" }}'
    with config.open("w") as f:
        for index in range(len(READS[language])):
            f.write(
                textwrap.dedent(f"""
                [[tiers]]
                name = "t{index}"
                validators = [{spec}]
                [[tiers.providers]]
                name = "p{index}"
                kind = "openai"
                base_url = "{openai_server.url}"
                model = "m{index}"
                """)
            )
            openai_server.script(f"m{index}", answer(language, index, canary))
    proc = await _cli_run(config)
    assert proc.returncode == 0, proc.stderr
    for index in range(len(READS[language])):
        assert f"tier {index + 1} t{index} / p{index} (m{index}): rejected - code_compiles:" in (
            proc.stderr
        )
    assert leaks(proc.stderr) == []
    assert leaks(proc.stdout) == []  # the answer itself: the path, not the file


async def test_the_old_leak_is_what_these_tests_catch(canary: Path) -> None:
    """Without the sandbox and the include check, gcc quotes the file (the defect)."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    proc = await asyncio.create_subprocess_exec(
        "gcc", "-fsyntax-only", "-fno-diagnostics-show-caret", "-x", "c", "-",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate(f'#include "{canary}"\n'.encode())
    assert leaks(err.decode()) != []


# -- without a sandbox: which directives pass ---------------------------------------------

ALLOWED = [
    "#include <stdio.h>\nint main(void) { return 0; }",
    "#include <sys/types.h> // sizes\n#include <linux/limits.h> /* PATH_MAX */",
    "#  include\t<c++/12/vector>",
    "#pragma once\n#define X(a) #a\n#if defined(X)\n#elif 1\n#else\n#endif\n#undef X",
    "#error stop\n#warning careful\n#line 10\n#\n#ifdef A\n#endif",
    '// we include "config.h" elsewhere\nint include = 1; /* #include "x" */',
    'const char *s = "#include \\"x\\"";',
    "#define LONG /* a comment\n   over two lines */ 1",
]
REFUSED = [
    ('#include "local.h"', "names a file"),
    ("#include </etc/passwd>", "names a file"),
    ("#include <../secret.h>", "names a file"),
    ("#include <a/../../b.h>", "names a file"),
    ("#define H <stdio.h>\n#include H", "names a file"),
    ("#include <stdio.h> extra", "names a file"),
    ('??=include "x"', "names a file"),
    ('#include_next "x"', "#include_next is not allowed"),
    ('#import "x"', "#import is not allowed"),
    ('#embed "x"', "#embed is not allowed"),
    ('# 1 "x"', "not a plain name"),
    ('# /*\n*/ include "x"', "not a plain name"),
    ('#incl\\  \nude "x"', "names a file"),
    ('int a;\r#include "x"', "names a file"),
    ('/* a\n  still */ %: include "x"', "names a file"),
]


@pytest.mark.parametrize("code", ALLOWED)
def test_directives_that_read_no_file_pass(code: str) -> None:
    assert c_include_problem(code) is None


@pytest.mark.parametrize(("code", "why"), REFUSED)
def test_directives_that_may_read_a_file_are_refused(code: str, why: str) -> None:
    problem = c_include_problem(code)
    assert problem is not None
    assert why in problem


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
async def test_without_a_sandbox_system_headers_still_compile() -> None:
    v = CodeCompilesValidator(language="c", sandbox="off")
    code = "#include <stdio.h>\n#include <string.h>\nint main(void) { puts(strchr(\"ab\", 'b')); }"
    verdict = await v.validate(Completion(text=f"```c\n{code}\n```", provider="p", model="m"), CTX)
    assert verdict.passed, verdict.reason
    verdict = await v.validate(
        Completion(text='```c\n#include "mine.h"\n```', provider="p", model="m"), CTX
    )
    assert not verdict.passed
    assert verdict.reason.startswith('line 2: #include "mine.h" names a file')


# -- choosing the mode --------------------------------------------------------------------


def fake_bwrap(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``bwrap`` first on PATH that fails as one without user namespaces does."""
    folder.mkdir()
    script = folder / "bwrap"
    script.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                      "exit 1\n")  # fmt: skip
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
async def test_auto_falls_back_when_bwrap_cannot_start(
    tmp_path: Path, canary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bwrap(tmp_path / "bin", monkeypatch)
    v = CodeCompilesValidator(language="c")
    assert "sandbox auto" in repr(v)
    with capture_logs() as logs:
        for _ in range(2):
            text = answer("c", 0, canary)
            verdict = await v.validate(Completion(text=text, provider="p", model="m"), CTX)
            assert "names a file" in verdict.reason  # refused, not compiled
    assert "sandbox off" in repr(v)
    [entry] = [e for e in logs if e["event"] == "code_compiles sandbox"]  # logged once
    assert entry["mode"] == "off" and entry["log_level"] == "warning"
    assert "No permissions" in entry["why"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
async def test_bwrap_mode_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bwrap(tmp_path / "bin", monkeypatch)
    v = CodeCompilesValidator(language="c", sandbox="bwrap")
    good = Completion(text="```c\nint x;\n```", provider="p", model="m")
    verdict = await v.validate(good, CTX)
    assert not verdict.passed
    assert verdict.reason.startswith("sandbox failed to start: bwrap: No permissions")


def test_bwrap_mode_needs_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    (tmp_path / "gcc").symlink_to(gcc)
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = {"name": "code_compiles", "language": "c", "sandbox": "bwrap"}
    with pytest.raises(ConfigError, match="bwrap") as info:
        Cascade.from_dict({"tiers": [tier("a", provider("a", "http://127.0.0.1:9/v1", "m"),
                                          validators=[spec])]})  # fmt: skip
    assert info.value.path == "tiers[0].validators[0].sandbox"
    with pytest.raises(ConfigError, match="'auto', 'bwrap' or 'off'"):
        CodeCompilesValidator(language="c", sandbox="on")  # type: ignore[arg-type]
    # Python needs no compiler on PATH, but its child check runs in the sandbox too.
    with pytest.raises(ConfigError, match="bwrap"):
        CodeCompilesValidator(language="python", sandbox="bwrap")
    CodeCompilesValidator(language="python", sandbox="auto")


# -- inside the sandbox -------------------------------------------------------------------

needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="no bwrap")


@needs_bwrap
async def test_the_sandbox_sees_system_dirs_and_the_source_only(
    canary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_CANARY", "s3cret")
    look = f"{{ ls -A /; ls -A /etc; ls -A /tmp; env; cat {canary}; cat $0; }} 2>&1; exit 3"
    v = CodeCompilesValidator(language="sh", command=["bash", "-c", look, "{file}"])
    verdict = await v.validate(Completion(text="echo hi", provider="p", model="m"), CTX)
    assert not verdict.passed
    out = verdict.reason.splitlines()
    top = out[: out.index("alternatives")]
    assert set(top) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev",
                        "tmp"}  # fmt: skip
    assert {"usr", "etc", "tmp", "dev"} <= set(top)
    assert "answer.sh" in out  # /tmp: the source alone
    env = {line.split("=", 1)[0] for line in out if "=" in line}
    assert "PATH" in env and "CASCADE_CANARY" not in env and "HOME" not in env
    assert "echo hi" in out  # it reads the source
    assert leaks(verdict.reason) == []  # not the project's files
    assert "s3cret" not in verdict.reason


@needs_bwrap
async def test_a_sandboxed_compiler_is_killed_on_timeout() -> None:
    marker = f"31.{uuid.uuid4().int % 10**6}"
    v = CodeCompilesValidator(
        language="sh", command=["bash", "-c", f"sleep {marker}; true", "{file}"], timeout_s=0.5
    )
    verdict = await v.validate(Completion(text="echo hi", provider="p", model="m"), CTX)
    assert verdict.reason == "compiler timed out after 0.5s"
    for _ in range(200):  # the sandbox's processes are gone, soon
        if not _running(marker):
            break
        await asyncio.sleep(0.01)
    assert not _running(marker)


def _running(marker: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            return True
    return False


@needs_bwrap
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("gcc") is None,
    reason="needs root (to become nobody), setpriv and gcc",
)
def test_the_sandbox_starts_for_an_unprivileged_user(canary: Path) -> None:
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    fd = pass_source(f'#include "{canary}"\nint main(void) {{ return 0; }}\n')
    try:
        argv = [*bwrap_argv(bwrap, (fd, "/tmp/answer.c")), "--", "gcc", "-fsyntax-only",
                "-x", "c", "/tmp/answer.c"]  # fmt: skip
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
            pass_fds=(fd,), capture_output=True, text=True, timeout=30,
            env={"PATH": os.environ["PATH"]}, check=False,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert proc.returncode == 1
    assert "No such file or directory" in proc.stderr, proc.stderr  # the sandbox ran gcc
    assert leaks(proc.stderr) == []
