"""code_compiles: compiles, never executes; over loopback HTTP through a real Cascade."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import cascade
from cascade import Cascade, Completion, ConfigError, Result
from cascade.testing import FakeOpenAIServer, Reply
from cascade.validators import CodeCompilesValidator

from .helpers import USER, provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

CTX = cascade.ValidationContext(
    messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t"
)
needs = {
    tool: pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed")
    for tool in ("node", "gcc", "g++", "bash")
}


def completion(text: str) -> Completion:
    return Completion(text=text, provider="p", model="m")


def fenced(tag: str, code: str) -> str:
    return f"Here is the code:\n```{tag}\n{textwrap.dedent(code).strip()}\n```\nHope it helps."


async def run(server: FakeOpenAIServer, answer: str | Reply, spec: dict[str, Any]) -> Result:
    """One request: tier "small" answers ``answer`` under ``spec``; "large" takes anything."""
    server.reset()
    server.script("small", answer)
    server.script("large", "the large tier's answer")
    cfg = {
        "tiers": [
            tier("small", provider("s", server.url, "small"),
                 validators=[{"name": "code_compiles", **spec}]),
            tier("large", provider("l", server.url, "large")),
        ]
    }  # fmt: skip
    async with Cascade.from_dict(cfg) as cc:
        return await cc.run(messages=USER)


def reason(result: Result) -> str:
    return result.attempts[0].verdicts[0].reason


def script(path: Path, body: str) -> str:
    """An executable Python script at ``path``: a fake "compiler" this test controls."""
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# -- accept and reject, end to end ------------------------------------------------------------

GOOD_BAD = {
    "python": ("def f(x):\n    return x * 2\n", "def f(x)\n    return x\n", "line 3: expected ':'"),
    "javascript": ("const f = (x) => x * 2;\n", "const f = (x) => { x * 2;\n", "SyntaxError"),
    "c": ("int twice(int x) { return 2 * x; }\n", "int twice(int x) { return 2 * ; }\n",
          "<answer>:3:"),
    "cpp": ("#include <vector>\nstd::vector<int> v{1, 2};\n", "class A { int x };\n",
            "<answer>:3:"),
    "bash": ('for i in 1 2; do echo "$i"; done\n', "if true; then echo x\n", "syntax error"),
}  # fmt: skip
TOOLS = {"javascript": "node", "c": "gcc", "cpp": "g++", "bash": "bash"}
LANGS = [
    pytest.param(lang, marks=needs[TOOLS[lang]]) if lang in TOOLS else lang for lang in GOOD_BAD
]


@pytest.mark.parametrize("language", LANGS)
async def test_accepts_code_that_compiles(openai_server: FakeOpenAIServer, language: str) -> None:
    good, _, _ = GOOD_BAD[language]
    result = await run(openai_server, fenced(language, good), {"language": language})
    assert result.tier == 1 and result.validated
    assert result.parsed.strip() == good.strip()  # the code, at its lines of the answer


@pytest.mark.parametrize("language", LANGS)
async def test_rejects_code_that_does_not(openai_server: FakeOpenAIServer, language: str) -> None:
    _, bad, expected = GOOD_BAD[language]
    result = await run(openai_server, fenced(language, bad), {"language": language})
    assert result.tier == 2 and result.attempts[0].outcome == "rejected"
    verdict = result.attempts[0].verdicts[0]
    assert verdict.validator == "code_compiles" and verdict.score == 0.0
    assert expected in verdict.reason
    assert "cascade-code-" not in verdict.reason  # the temp path is shown as <answer>


@needs["node"]
@pytest.mark.parametrize(
    "code",
    [
        'import fs from "fs";\nfunction (\n',  # node 20 passed this as a .js file
        "export const x = 1;\nconst y = ;\n",
        'import { a } from "b";\nclass {\n',
    ],
)
async def test_an_es_module_with_a_syntax_error_is_rejected(code: str) -> None:
    v = CodeCompilesValidator(language="javascript")
    verdict = await v.validate(completion(fenced("javascript", code)), CTX)
    assert not verdict.passed
    assert "SyntaxError" in verdict.reason


@needs["node"]
async def test_an_es_module_that_compiles_is_accepted() -> None:
    v = CodeCompilesValidator(language="javascript")
    code = 'import fs from "fs";\nexport const f = (x) => x * 2;\n'
    verdict = await v.validate(completion(fenced("javascript", code)), CTX)
    assert verdict.passed, verdict.reason


async def test_python_reason_names_the_answer_line() -> None:
    v = CodeCompilesValidator(language="python")
    text = "Intro\n\n```py\nx = 1\nif x:\npass\n```\n"
    verdict = await v.validate(completion(text), CTX)
    assert not verdict.passed
    assert verdict.reason.startswith("IndentationError at line 6: expected an indented block")


# -- never executed ---------------------------------------------------------------------------

SIDE_EFFECTS = {
    "python": 'open({path!r}, "w").write("ran")\n\ndef main() -> None:\n    print("hi")\n',
    "javascript": 'require("fs").writeFileSync({path!r}, "ran");\n',
    "c": '#include <stdio.h>\nint main(void) {{ FILE *f = fopen("{path}", "w"); '
         'fputs("ran", f); return 0; }}\n',
    "bash": "touch {path!r}\necho ran > {path!r}\n",
}  # fmt: skip


@pytest.mark.parametrize("language", [p for p in LANGS if "cpp" not in str(p)])
async def test_compiling_never_executes(
    openai_server: FakeOpenAIServer, tmp_path: Path, language: str
) -> None:
    ran = tmp_path / "ran"
    code = SIDE_EFFECTS[language].format(path=str(ran))
    result = await run(openai_server, fenced(language, code), {"language": language})
    assert result.tier == 1 and result.validated  # it compiles...
    assert not ran.exists()  # ...and was not run


# -- the subprocess's surroundings ------------------------------------------------------------


@needs["gcc"]
async def test_compiler_does_not_inherit_the_environment(
    openai_server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gcc reads C_INCLUDE_PATH from its environment at compile time: with ours inherited,
    # <canary.h> would resolve.
    (tmp_path / "canary.h").write_text("int canary;\n")
    monkeypatch.setenv("C_INCLUDE_PATH", str(tmp_path))
    code = "#include <canary.h>\nint f(void) { return canary; }\n"
    proc = await asyncio.create_subprocess_exec(
        "gcc", "-fsyntax-only", "-x", "c", "-", stdin=asyncio.subprocess.PIPE
    )
    await proc.communicate(code.encode())
    assert proc.returncode == 0  # with the environment, it compiles
    result = await run(openai_server, fenced("c", code), {"language": "c"})
    assert result.tier == 2 and "canary.h" in reason(result)


async def test_subprocess_gets_path_only_a_temp_cwd_and_no_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_CANARY", "s3cret")
    out = tmp_path / "seen.txt"
    compiler = script(
        tmp_path / "dump-env",
        f"""
        import os, sys
        env = open("/proc/self/environ", "rb").read().split(b"\\0")
        with open({str(out)!r}, "w") as f:
            print(sorted(e.decode() for e in env if e), file=f)
            print(os.getcwd(), file=f)
            print(os.readlink("/proc/self/fd/0"), file=f)
            print(repr(open(sys.argv[1]).read()), sys.argv[1], file=f)
    """,
    )
    # on the host ("off"): the scripts here run on this test's Python, outside /usr
    v = CodeCompilesValidator(language="python", command=[compiler, "{file}"], sandbox="off")
    verdict = await v.validate(completion("```python\nprint(1)\n```"), CTX)
    assert verdict.passed, verdict.reason
    env, cwd, stdin, source = out.read_text().splitlines()
    assert env == str([f"PATH={os.environ['PATH']}"])
    assert "s3cret" not in env
    assert Path(cwd).name.startswith("cascade-code-") and not Path(cwd).exists()
    assert stdin == "/dev/null"
    # the fence line is blank, so that line numbers are the answer's
    assert source == f"'\\nprint(1)\\n' {cwd}/answer.py"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def test_timeout_rejects_and_kills_the_process_group(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    compiler = script(
        tmp_path / "slow-cc",
        f"""
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "30"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(30)
    """,
    )
    spec = {"language": "python", "command": [compiler, "{file}"], "timeout_s": 0.5,
            "sandbox": "off"}  # fmt: skip
    result = await run(openai_server, "print(1)", spec)
    assert result.tier == 2 and reason(result) == "compiler timed out after 0.5s"
    for pid in map(int, pids.read_text().split()):
        for _ in range(100):  # the orphaned child is reaped by init, soon
            if not _alive(pid):
                break
            await asyncio.sleep(0.01)
        assert not _alive(pid)


async def test_a_cancelled_check_kills_the_compiler_and_cleans_up(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    compiler = script(
        tmp_path / "slow-cc",
        f"""
        import os, time
        open({str(seen)!r}, "w").write(f"{{os.getpid()}} {{os.getcwd()}}")
        time.sleep(30)
    """,
    )
    v = CodeCompilesValidator(language="python", command=[compiler, "{file}"], sandbox="off")
    check = asyncio.create_task(v.validate(completion("print(1)"), CTX))
    # cancelled once the compiler runs (its interpreter can take over 0.5 s to start on a
    # loaded machine: a fixed timeout then cancelled it before it wrote a thing)
    await eventually(lambda: seen.exists() and bool(seen.read_text()), "the compiler", within_s=30)
    check.cancel()  # as a run's deadline cancels it
    with pytest.raises(asyncio.CancelledError):
        await check
    pid, cwd = seen.read_text().split()
    assert not _alive(int(pid)) and not Path(cwd).exists()
    assert "running 0/4" in repr(v)


async def test_concurrency_is_bounded(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.mkdir()
    compiler = script(
        tmp_path / "slow-ok",
        f"""
        import os, time
        log, me = {str(log)!r}, str(os.getpid())
        start = time.monotonic()
        open(os.path.join(log, "s-" + me), "w").close()
        # Wait (at most 10 s) until another compiler runs beside this one, so that the
        # test does not depend on two of them happening to overlap in time.
        for _ in range(1000):
            names = os.listdir(log)
            if sum(n.startswith("s-") for n in names) - sum(n.startswith("e-") for n in names) >= 2:
                break
            time.sleep(0.01)
        time.sleep(0.05)
        open(os.path.join(log, "t-" + me), "w").write(f"{{start}} {{time.monotonic()}}")
        open(os.path.join(log, "e-" + me), "w").close()
    """,
    )
    v = CodeCompilesValidator(
        language="js", command=[compiler, "{file}"], max_concurrency=2, sandbox="off"
    )
    verdicts = await asyncio.gather(*(v.validate(completion("x;"), CTX) for _ in range(6)))
    assert all(v.passed for v in verdicts)
    events = []
    for f in log.glob("t-*"):
        start, end = map(float, f.read_text().split())
        events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    assert len(events) == 12 and peak == 2
    assert "running 0/2" in repr(v)


# -- configuration ----------------------------------------------------------------------------


def build(spec: dict[str, Any]) -> None:
    Cascade.from_dict({"tiers": [tier("a", provider("a", "http://127.0.0.1:9/v1", "m"),
                                      validators=[{"name": "code_compiles", **spec}])]})  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"language": "c", "command": ["no-such-cc-xyz", "-c", "{file}"]}, "command", "not found"),
        ({"language": "cobol"}, "language", "give `command`"),
        ({"language": ""}, "language", "language name"),
        ({"language": "c", "command": ["gcc", "-fsyntax-only"]}, "command", "{file}"),
        ({"language": "c", "command": "gcc {file}"}, "command", "list"),
        ({"language": "c", "suffix": "../x.c"}, "suffix", "suffix"),
        ({"language": "c", "fence": "c"}, "fence", "fence tags"),
        ({"language": "python", "timeout_s": 0}, "timeout_s", "> 0"),
        ({"language": "python", "timeout_s": True}, "timeout_s", "> 0"),
        ({"language": "python", "max_concurrency": 0}, "max_concurrency", ">= 1"),
        ({"language": "python", "max_concurrency": 1.5}, "max_concurrency", ">= 1"),
    ],
)  # fmt: skip
def test_bad_config_is_a_config_error(spec: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(spec)
    assert info.value.path == f"tiers[0].validators[0].{path}"
    assert message in info.value.message


def test_a_missing_preset_compiler_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nowhere to find gcc
    with pytest.raises(ConfigError, match="'gcc' not found") as info:
        build({"language": "c"})
    assert info.value.path == "tiers[0].validators[0].language"
    build({"language": "python"})  # needs no compiler


# -- finding the code -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec", "passed", "why"),
    [
        ("x = 1\nprint(x)\n", {}, True, ""),  # no fence: the whole answer
        ("Use this:\n```\nx = 1\n```\n", {}, True, ""),  # untagged fence
        ("Use this:\n```\nx = 1\n```\n", {"require_fence": True}, False, "no ```python block"),
        ("```python\nx = (\n```\nand\n```python\n1)\n```\n", {}, True, ""),  # blocks joined
        ("```js\nlet x;\n```\n", {}, False, "no ```python block in the answer (found ```js)"),
        ("```js\nlet x;\n```\n```py3\nx = 1\n```\n", {}, True, ""),
        ("```sage\nx = 1\n```\n", {"fence": ["sage"]}, True, ""),
        ("```python\n\n```\n", {}, False, "the python code is empty"),
        ("  - item:\n    ```python\n    if x:\n        y = 1\n    ```\n", {}, True, ""),  # indented
        ('```python\nimport re\nre.compile("\\d+")\nok = 1 is 1\n```', {}, True, ""),  # warnings
        ("```python\nx = 1\x00\n```", {}, False, "null bytes"),
        ("```python\n" + "x = 1\n" * 2000 + "def f(:\n```", {}, False, "line 2002"),  # thread
        ("```python\n" + "x = 1\n" * 2000 + "```", {}, True, ""),
    ],
)  # fmt: skip
async def test_code_selection(text: str, spec: dict[str, Any], passed: bool, why: str) -> None:
    v = CodeCompilesValidator(language="python", **spec)
    verdict = await v.validate(completion(text), CTX)
    assert verdict.passed is passed, verdict.reason
    assert why in verdict.reason


@pytest.mark.parametrize(
    ("partial", "rejected"),
    [
        ("Sure, here it is:\n", False),
        ("```", False),
        ("```javasc", False),  # the tag is not complete yet
        ("Sure:\n```javascript\n", True),
        ("```js\nconsole.log(1)", True),
        ("```python\nx = 1\n```\n```javascript\n", False),  # the wanted block came first
        ("```\nplain\n```\n```rust\n", True),
        ("```text\n$ run it\n```\n```py\n", False),
        ("```text\n$ run it\n```\n", False),
        ("```bash\npip install requests\n```\n", False),  # shell blocks come before code
        ("```console\n$ pip install requests\n```\n```python\n", False),
        ("```bash\npip install requests\n```\n```java\n", True),
    ],
)
def test_check_partial(partial: str, rejected: bool) -> None:
    v = CodeCompilesValidator(language="python")
    verdict = v.check_partial(partial, CTX)
    assert (verdict is not None) is rejected
    if verdict is not None:
        assert not verdict.passed and "rejected while streaming" in verdict.reason


def test_check_partial_for_a_shell() -> None:
    v = CodeCompilesValidator(language="sh")
    assert v.check_partial("```bash\nls\n", CTX) is None
    assert v.check_partial("```zsh\nls\n", CTX) is None  # a tag of the same language
    verdict = v.check_partial("```python\n", CTX)
    assert verdict is not None and "a ```python block, not bash" in verdict.reason


async def test_wrong_fence_is_rejected_while_streaming(openai_server: FakeOpenAIServer) -> None:
    text = "```javascript\n" + "console.log('a long answer');\n" * 40 + "```\n"
    reply = Reply(text=text, chunk_chars=16, chunk_delay_s=0.002, output_tokens=len(text) // 4)
    openai_server.script("small", reply)
    openai_server.script("large", "```python\nprint(1)\n```")
    spec = {"name": "code_compiles", "language": "python"}
    cfg = {
        "tiers": [
            tier("small", provider("s", openai_server.url, "small", stream=True), validators=[spec]),
            tier("large", provider("l", openai_server.url, "large"), validators=[spec]),
        ]
    }  # fmt: skip
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    first = result.attempts[0]
    assert first.completion is not None and first.completion.finish_reason == "rejected_early"
    assert "```javascript" in first.verdicts[0].reason
    assert first.output_tokens < len(text) // 4
    assert result.tier == 2 and result.validated and result.parsed.strip() == "print(1)"


async def test_included_files_are_not_quoted_in_the_reason() -> None:
    from cascade import Completion
    from cascade.validators import ValidationContext
    from cascade.validators.code import CodeCompilesValidator

    v = CodeCompilesValidator(language="c")
    ctx = ValidationContext(messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t")
    verdict = await v.validate(
        Completion(
            text='```c\n#include "/etc/passwd"\nint main(void){return 0;}\n```',
            provider="p",
            model="m",
        ),
        ctx,
    )
    assert not verdict.passed
    assert "root:x:0:0" not in verdict.reason


async def test_oversized_source_is_rejected_without_compiling() -> None:
    from cascade import Completion
    from cascade.validators import ValidationContext
    from cascade.validators.code import CodeCompilesValidator

    v = CodeCompilesValidator(language="python")
    ctx = ValidationContext(messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t")
    verdict = await v.validate(Completion(text="x = 1\n" * 100_000, provider="p", model="m"), ctx)
    assert not verdict.passed and "too long" in verdict.reason
