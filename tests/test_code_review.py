"""code_compiles under a hostile review: Python's compile() off the loop and under
``timeout_s``, C/C++ directives hidden from the fallback check, oracles on file existence,
huge answers rejected before they are searched, and no /usr/local or /usr/src in the
sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import cascade
from cascade import Completion
from cascade.validators import CodeCompilesValidator
from cascade.validators._pycheck import check
from cascade.validators._sandbox import c_include_problem

pytestmark = pytest.mark.anyio

CTX = cascade.ValidationContext(
    messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t"
)
HAS_BWRAP = shutil.which("bwrap") is not None
HAS_GCC = shutil.which("gcc") is not None
needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="no bwrap")
needs_gcc = pytest.mark.skipif(not HAS_GCC, reason="no gcc")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "off"]
KEY = "sk_live_canary_5d0e1f"


def completion(text: str) -> Completion:
    return Completion(text=text, provider="p", model="m")


async def validate_counting_ticks(
    v: CodeCompilesValidator, text: str
) -> tuple[cascade.Verdict, int]:
    """The verdict, and how often a concurrent task got the loop meanwhile."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = ticks
    try:
        verdict = await v.validate(completion(text), CTX)
        counted = ticks - start  # before the ticker is woken to stop
    finally:
        stop.set()
        await task
    return verdict, counted


# -- Python: compile() in a killable child ------------------------------------------------

# compile() is quadratic in lambdas: ~9 s in-process for this (180k characters).
SLOW_PYTHON = "lambda: 1\n" * 18_000


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.timeout(30)
async def test_a_slow_python_compile_times_out_and_leaves_the_loop_free(mode: str) -> None:
    v = CodeCompilesValidator(language="python", timeout_s=1, sandbox=mode)  # type: ignore[arg-type]
    verdict, ticks = await validate_counting_ticks(v, SLOW_PYTHON)
    assert not verdict.passed
    assert verdict.reason == "compiler timed out after 1s"
    assert ticks >= 50  # the loop ran other tasks while the child compiled
    assert f"sandbox {mode}" in repr(v)


# Long sources (checked in the child) whose message must be what compile() in-process says.
PAD = "x = 1\n" * 300
PYTHON_ERRORS = [
    PAD + "def f(:\n",
    PAD + "if x:\npass\n",
    PAD + "x = (\n",
    PAD + "x = 'caf\u00e9\n",
    PAD + "x = 1\x00\n",
    PAD + "x = '\ud800'\n",
    PAD + "x = " + "(" * 300 + ")" * 300 + "\n",
    PAD + "x = " + "-" * 5000 + "1\n",
    PAD + 'ok = 1 is 1\nr = "\\d"\n',  # warnings only: compiles
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source", PYTHON_ERRORS)
async def test_the_child_says_what_compile_says(mode: str, source: str) -> None:
    assert len(source) > 1024  # past the in-process size
    v = CodeCompilesValidator(language="python", sandbox=mode)  # type: ignore[arg-type]
    verdict = await v.validate(completion(source), CTX)
    expected = check(source)
    assert verdict.passed is (expected is None)
    assert verdict.reason == (expected or "")


async def test_a_short_python_source_compiles_in_process() -> None:
    v = CodeCompilesValidator(language="python", sandbox="off")
    verdict = await v.validate(completion("```python\nx = 1\nif x:\n  y = (\n```"), CTX)
    assert verdict.reason == "SyntaxError at line 4: '(' was never closed: 'y = ('"
    assert "sandbox off" in repr(v)  # no child ran: the mode is what was asked


def fake_bwrap(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``bwrap`` first on PATH that fails as one without user namespaces does."""
    folder.mkdir()
    script = folder / "bwrap"
    script.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                      "exit 1\n")  # fmt: skip
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


async def test_python_falls_back_to_an_isolated_child_without_a_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bwrap(tmp_path / "bin", monkeypatch)
    v = CodeCompilesValidator(language="python")
    with capture_logs() as logs:
        verdict = await v.validate(completion(PAD + "def f(:\n"), CTX)
    assert verdict.reason == "SyntaxError at line 301: invalid syntax: 'def f(:'"
    assert "sandbox off" in repr(v)
    [entry] = [e for e in logs if e["event"] == "code_compiles sandbox"]
    assert entry["mode"] == "off"


# -- C without a sandbox: what hides or spells a directive --------------------------------


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A project header holding a fake key, as C a compiler would quote."""
    project = tmp_path / "project"
    project.mkdir()
    path = project / "config.h"
    path.write_text(f'#define API_KEY "{KEY}"\nint {KEY}_id;\n')
    return path


# Each reads {path} (the canary) and quotes it through an <answer>: line, or tells
# whether it exists.
C_BYPASSES = [
    '\0#include "{path}"\n_Static_assert(0, API_KEY);',
    'int a;\n\0#include "{path}"\n_Static_assert(0, API_KEY);',
    '\ufeff#include "{path}"\n_Static_assert(0, API_KEY);',
    '\0 \0#\0include "{path}"\nvoid f(void) {{ {key}_id(); }}',
    '\u00a0#include "{path}"\n_Static_assert(0, API_KEY);',
    '\x1a#include "{path}"\n_Static_assert(0, API_KEY);',
]
C_ORACLES = [
    '#if __has_include("{path}")\n#error present\n#endif',
    "#if __has_include(<{path}>)\n#error present\n#endif",
    '#if __has_include_next("{path}")\n#error present\n#endif',
    '#define C(a, b) a##b\n#if C(__has_, include)("{path}")\n#error present\n#endif',
    '#define C(a, b) a%:%:b\n#if C(__has_, include)("{path}")\n#error present\n#endif',
    '#define H __has_include\n#if H("{path}")\n#error present\n#endif',
    '#if __has_inc\\\nlude("{path}")\n#error present\n#endif',
    '#pragma GCC dependency "{path}"',
    '#define S(x) #x\n_Pragma(S(GCC dependency "{path}"))',
]


@needs_gcc
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("code", C_BYPASSES)
async def test_nothing_hides_an_include_from_the_check(canary: Path, mode: str, code: str) -> None:
    v = CodeCompilesValidator(language="c", sandbox=mode)  # type: ignore[arg-type]
    verdict = await v.validate(completion(code.format(path=canary, key=KEY)), CTX)
    assert not verdict.passed
    assert KEY not in verdict.reason


@needs_gcc
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("code", C_ORACLES)
async def test_no_verdict_tells_whether_a_file_exists(canary: Path, mode: str, code: str) -> None:
    v = CodeCompilesValidator(language="c", sandbox=mode)  # type: ignore[arg-type]
    missing = canary.with_name("missing.h")
    there = await v.validate(completion(code.format(path=canary)), CTX)
    absent = await v.validate(completion(code.format(path=missing)), CTX)
    assert there.passed == absent.passed
    assert there.reason.replace(str(canary), "P") == absent.reason.replace(str(missing), "P")
    assert "present" not in there.reason


REFUSED = [
    ("\0#include <stdio.h>", "U+0000"),
    ("\ufeffint x;", "U+FEFF"),
    ("int x;\u2028#include <stdio.h>", "U+2028"),
    ("\u3000#include <stdio.h>", "a character before #"),
    ('#if __has_include("x.h")\n#endif', "__has_include may only name a system header"),
    ("#if __has_include(</etc/passwd>)\n#endif", "__has_include may only name"),
    ("#ifdef __has_include\n#endif", "__has_include may only name"),
    ("#if __has_embed(<stdio.h>)\n#endif", "__has_embed may only name"),
    ("#define CAT(a, b) a ## b", "## is not allowed"),
    ("#define CAT(a, b) a %:%: b", "%:%: is not allowed"),
    ('#define P _Pragma("once")', "_Pragma is not allowed"),
    ('#pragma GCC dependency "x.h"', "#pragma GCC dependency"),
    ('#pragma GCC pch_preprocess "x.h"', "#pragma GCC pch_preprocess"),
    ('#pragma include_alias("a.h", "b.h")', "#pragma include_alias"),
]
ALLOWED = [
    "#if __has_include(<stdio.h>)\n#include <stdio.h>\n#endif",
    "#if __has_include( /* x */ <sys/types.h> )\n#endif",
    '#pragma once\n#pragma pack(1)\n#pragma GCC diagnostic ignored "-Wall"',
    '#pragma omp parallel for\n#pragma STDC FP_CONTRACT ON\n#pragma message "hi"',
    "/* caf\u00e9 \u2014 \u4f60\u597d */\nint x; // \u00fcber\n\f#include <stdio.h>",
    'const char *s = "\u00e9t\u00e9";',
]


@pytest.mark.parametrize(("code", "why"), REFUSED)
def test_hiding_and_spelling_are_refused(code: str, why: str) -> None:
    problem = c_include_problem(code)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize("code", ALLOWED)
def test_plain_code_still_passes(code: str) -> None:
    assert c_include_problem(code) is None


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "code",
    [
        "#include <a>" + " " * 40 + "x",  # was exponential
        "/**/" * 50_000,  # was quadratic (and worse)
        "*/ /* */" * 25_000,
        "#include <a> " + "/* */" * 30_000 + "x",
    ],
    ids=["spaces-after-header", "empty-comments", "comment-ends", "comments-after-header"],
)
def test_the_directive_check_is_linear(code: str) -> None:
    c_include_problem(code)


# -- answers too long to search ---------------------------------------------------------


async def test_a_huge_answer_is_rejected_before_its_fences_are_found() -> None:
    v = CodeCompilesValidator(language="python")
    text = "```python\nx = 1\n```\n" * 400_000  # 7.6 MiB of small fences
    verdict = await v.validate(completion(text), CTX)
    assert not verdict.passed
    assert verdict.reason == f"answer too long to look for code ({len(text)} characters)"


async def test_a_long_answer_is_searched_off_the_loop() -> None:
    v = CodeCompilesValidator(language="python")
    text = "```js\nx = 1\n```\n" * 24_000  # 384k characters, no Python in it
    verdict, ticks = await validate_counting_ticks(v, text)
    assert verdict.reason == "no ```python block in the answer (found ```js)"
    assert ticks >= 1  # on the loop, nothing else would have run before the verdict


# -- the sandbox sees no /usr/local or /usr/src -------------------------------------------


@needs_bwrap
async def test_the_sandbox_binds_only_what_compilers_need_of_usr() -> None:
    look = "ls -A /usr; exit 3"
    v = CodeCompilesValidator(language="sh", command=["bash", "-c", look, "{file}"])
    verdict = await v.validate(completion("echo hi"), CTX)
    seen = set(verdict.reason.splitlines())
    assert "bin" in seen
    assert "lib" in seen
    assert seen.isdisjoint({"local", "src", "share", "games", "etc"})


@contextlib.contextmanager
def usr_canary(folder: str) -> Iterator[Path]:
    """A project header under ``folder`` (``/usr/src``, ``/usr/local``), removed after."""
    base = Path(folder) / f"cascade-test-{uuid.uuid4().hex[:8]}"
    try:
        base.mkdir(parents=False)
    except OSError as exc:
        pytest.skip(f"{folder} not writable: {exc.strerror}")
    try:
        path = base / "config.h"
        path.write_text(f'#define API_KEY "{KEY}"\n')
        yield path
    finally:
        shutil.rmtree(base, ignore_errors=True)


@needs_bwrap
@needs_gcc
@pytest.mark.parametrize("folder", ["/usr/src", "/usr/local"])
async def test_a_project_under_usr_is_not_readable_in_the_sandbox(folder: str) -> None:
    with usr_canary(folder) as path:
        v = CodeCompilesValidator(language="c", sandbox="bwrap")
        code = f'#include "{path}"\n_Static_assert(0, API_KEY);\n'
        verdict = await v.validate(completion(code), CTX)
    assert not verdict.passed
    assert KEY not in verdict.reason
    assert "No such file" in verdict.reason


TOOLCHAIN = {
    "c": ('#include <stdio.h>\nint main(void) { puts("hi"); }', "int main( {"),
    "cpp": ("#include <vector>\nint main() { std::vector<int> v; }", "int main( {"),
    "javascript": ("const x = [1].map((a) => a + 1);", "const = ;"),
    "bash": ("for i in 1 2; do echo $i; done", "for do done fi"),
    "python": ("import os\n" + "x = 1\n" * 300, "x = 1\n" * 300 + "def (:"),
}


@needs_bwrap
@pytest.mark.parametrize("language", list(TOOLCHAIN))
async def test_compilers_still_work_in_the_narrower_sandbox(language: str) -> None:
    tool = {"c": "gcc", "cpp": "g++", "javascript": "node", "bash": "bash"}.get(language)
    if tool is not None and shutil.which(tool) is None:
        pytest.skip(f"no {tool}")
    v = CodeCompilesValidator(language=language, sandbox="bwrap")
    good, bad = TOOLCHAIN[language]
    verdict = await v.validate(completion(good), CTX)
    assert verdict.passed, verdict.reason
    verdict = await v.validate(completion(bad), CTX)
    assert not verdict.passed
    assert not verdict.reason.startswith("sandbox failed")
