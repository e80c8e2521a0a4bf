"""examples/phoenix/check_trace.py without Phoenix: its arguments, a clean failure when
Phoenix (or Chromium) is missing, and its checks of the span tree on a REST answer shaped
like Phoenix's (``GET /v1/projects/{project}/spans``). The end-to-end run needs Phoenix
and is not part of the suite (see examples/phoenix/README.md)."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).parent.parent / "examples" / "phoenix" / "check_trace.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_names_the_options() -> None:
    done = run("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--phoenix", "--screenshot", "--chromium", "--startup-timeout-s"):
        assert option in done.stdout


def test_missing_phoenix_fails_cleanly(tmp_path: Path) -> None:
    done = run("--phoenix", str(tmp_path / "no-phoenix-here"))
    assert done.returncode == 2
    assert "phoenix executable not found" in done.stderr
    assert "pip install arize-phoenix" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_chromium_fails_before_starting_phoenix(tmp_path: Path) -> None:
    # Any executable passes for phoenix here: Chromium is looked for before it is started.
    done = run(
        "--phoenix", sys.executable, "--screenshot", str(tmp_path / "t.png"),
        "--chromium", str(tmp_path / "no-chromium-here"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "chromium executable not found" in done.stderr
    assert "Phoenix up" not in done.stdout


def test_bad_argument() -> None:
    done = run("--startup-timeout-s", "0")
    assert done.returncode == 2
    assert "--startup-timeout-s" in done.stderr


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_trace", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def phoenix_answer() -> list[dict[str, Any]]:
    """An escalated trace as Phoenix's REST API returns it (newest first)."""

    def span(n: int, name: str, parent: int | None, kind: str, **attrs: Any) -> dict[str, Any]:
        return {
            "name": name,
            "context": {"trace_id": "ab" * 16, "span_id": f"{n:016x}"},
            "span_kind": kind,
            "parent_id": None if parent is None else f"{parent:016x}",
            "start_time": f"2026-01-01T00:00:0{n}+00:00",
            "status_code": "OK",
            "attributes": attrs,
        }

    return [
        span(5, "chat gpt-4o", 4, "LLM", **{"llm.cost.total": 4.75e-05}),
        span(4, "cascade.tier large", 1, "CHAIN", **{"cascade.tier.outcome": "accepted"}),
        span(3, "chat gpt-4o-mini", 2, "LLM", **{"llm.cost.total": 4.05e-06}),
        span(2, "cascade.tier small", 1, "CHAIN", **{"cascade.tier.outcome": "rejected"}),
        span(1, "cascade.run", None, "CHAIN"),
    ]


RESULT = {"cost_usd": 4.75e-05 + 4.05e-06, "tier_name": "large", "model": "gpt-4o"}


def test_the_checks_pass_on_the_escalated_tree(
    script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    spans = phoenix_answer()
    assert script.check(script.show(spans), RESULT) == []
    out = capsys.readouterr().out
    assert (
        "0000000000000003  0000000000000002  chat gpt-4o-mini  (child of cascade.tier small)" in out
    )


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (lambda s: s[4].update(span_kind="UNKNOWN"), "tree"),  # what GenAI alone showed
        (lambda s: s[2].update(parent_id=f"{4:016x}"), "tree"),  # mini under the large tier
        (lambda s: s[4].update(status_code="UNSET"), "cascade.run: status UNSET"),
        (lambda s: s[2]["attributes"].clear(), "chat gpt-4o-mini: no llm.cost.total"),
        (lambda s: s[0]["context"].update(trace_id="cd" * 16), "not one trace"),
    ],
)
def test_the_checks_catch_a_wrong_trace(script: ModuleType, spoil: Any, problem: str) -> None:
    spans = copy.deepcopy(phoenix_answer())
    spoil(spans)
    problems = script.check(script.tree(spans), RESULT)
    assert any(problem in p for p in problems), problems


def test_the_walkthrough_config_turns_openinference_on(script: ModuleType) -> None:
    from cascade import Config

    config = Config.from_toml(script.CONFIG.read_text(), source=str(script.CONFIG))
    assert config.telemetry.semconv == ("gen_ai", "openinference")
    urls = {p.base_url for t in config.tiers for p in t.providers}
    assert urls == {script.CONFIG_URL}  # the URL the script swaps for its fake server's
    assert [(t.name, [p.model for p in t.providers]) for t in config.tiers] == [
        ("small", [script.SMALL]),
        ("large", [script.LARGE]),
    ]
