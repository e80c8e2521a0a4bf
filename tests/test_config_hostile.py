"""Configs that used to pass `cascade check` and break at run time, or make it print a
traceback: each is one line on stderr, ``cascade: error: <file>: <path>: <message>``,
exit status 2. The command runs in-process (``main``: an escaping exception fails the
test), and as a subprocess for the configs that printed tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cascade import ConfigError, RetryPolicy
from cascade._cli import main
from cascade._config import Config, load_config

PROVIDER = """
[[tiers]]
name = "t"
{tier}
[[tiers.providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "m"
{provider}
"""
P0 = "tiers[0].providers[0]"
CODE = '{ name = "code_compiles", language = "python"'

# (top-level lines, tier lines, provider lines, the path the error names)
CASES = [
    ("", "", "timeout_s = inf\nstream = true", f"{P0}.timeout_s"),
    ("", "", "timeout_s = -inf", f"{P0}.timeout_s"),
    ("", "", "first_token_timeout_s = nan", f"{P0}.first_token_timeout_s"),
    ("", "", "idle_timeout_s = inf\nstream = true", f"{P0}.idle_timeout_s"),
    ("", "", "connect_timeout_s = inf", f"{P0}.connect_timeout_s"),
    ("", f"validators = [{CODE}, timeout_s = inf }}]", "", "tiers[0].validators[0].timeout_s"),
    ("", f"validators = [{CODE}, timeout_s = nan }}]", "", "tiers[0].validators[0].timeout_s"),
    ("", f"validators = [{CODE}, weight = inf }}]", "", "tiers[0].validators[0].weight"),
    ("", 'variants = [{ name = "a", weight = inf }]', "", "tiers[0].variants[0].weight"),
    ("", "[tiers.hedge]\nafter_s = inf", "", "tiers[0].hedge.after_s"),
    ("", "", 'base_url = "http://[::1"', f"{P0}.base_url"),
    ("", "", 'base_url = "http://"', f"{P0}.base_url"),
    ("", "", 'base_url = "http://127.0.0.1:99999/v1"', f"{P0}.base_url"),
    ("", "", 'base_url = "https://exa mple.com/v1"', f"{P0}.base_url"),
    ("", "", "[tiers.providers.limits]\nrequests_per_minute = inf", f"{P0}.limits.requests_per_minute"),
    ("", "", "[tiers.providers.limits]\ntokens_per_minute = nan", f"{P0}.limits.tokens_per_minute"),
    ("", "", "[tiers.providers.limits]\nrequests_per_minute = 10\nburst_s = inf", f"{P0}.limits.burst_s"),
    ("", "", "input_cost_per_mtok = inf", f"{P0}.input_cost_per_mtok"),
    ("", "", "output_cost_per_mtok = nan", f"{P0}.output_cost_per_mtok"),
    ("max_cost_usd = inf", "", "", "max_cost_usd"),
    ("deadline_s = inf", "", "", "deadline_s"),
    ("", "", "[tiers.providers.breaker]\nreset_timeout_s = inf", f"{P0}.breaker.reset_timeout_s"),
    ("", "", "[tiers.providers.retry]\nattempts = 0", f"{P0}.retry.attempts"),
    ("", "", "[tiers.providers.retry]\nbase_s = 2\nmax_s = 1", f"{P0}.retry.max_s"),
    ("", "", "[tiers.providers.retry]\nmax_s = inf", f"{P0}.retry.max_s"),
    ("", "", "[tiers.providers.retry]\nbase_s = nan", f"{P0}.retry.base_s"),
    ("", "", "[tiers.providers.retry]\nretries = 2", f"{P0}.retry.retries"),
    ("", "", 'kind = "opneai"', f"{P0}.kind"),
    ("", "", 'api_key_env = "CASCADE_TEST_NO_SUCH_KEY"', f"{P0}.api_key_env"),
    ("", 'validators = [{ name = "no_such_validator" }]', "", "tiers[0].validators[0].name"),
    ("", 'validators = [{ name = "code_compiles", language = "cobol" }]', "",
     "tiers[0].validators[0].language"),
    ("", "", "input_cost_per_mtok = 1e308", f"{P0}.input_cost_per_mtok"),
    ("", "", "cache_read_cost_per_mtok = 1e7", f"{P0}.cache_read_cost_per_mtok"),
    ("", "", f'base_url = "http://{"a" * 70000}.example/v1"', f"{P0}.base_url"),
    ("", "", 'base_url = "http://127.0.0.1/v1\\r\\nX-Evil: 1"', f"{P0}.base_url"),
    ("", "", 'base_url = "http://127.0.0.1/v1\\u0000"', f"{P0}.base_url"),
    ("", "", '[tiers.providers.headers]\n"X A:" = "1"', f"{P0}.headers.X A:"),
]  # fmt: skip


def provider_config(top: str, tier: str, provider: str) -> str:
    text = top + "\n" + PROVIDER.format(tier=tier, provider=provider)
    if 'kind = "opneai"' in provider or "base_url =" in provider:  # replace, not repeat
        lines = text.splitlines()
        key = provider.split(" =")[0]
        first = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
        del lines[first]
        text = "\n".join(lines)
    return text


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cascade._cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def check_in_process(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    status = main(["check", str(path)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["cascade", "check", str(path)], status, out, err)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], path: Path, field: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    prefix = f"cascade: error: {path}: {field}: " if field else f"cascade: error: {path}: "
    assert line.startswith(prefix), line
    return line[len(prefix) :]


@pytest.mark.parametrize(("top", "tier", "provider", "field"), CASES)
def test_check_rejects_what_would_break_at_run_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], top: str, tier: str, provider: str,
    field: str,
) -> None:  # fmt: skip
    path = tmp_path / "cascade.toml"
    path.write_text(provider_config(top, tier, provider))
    message = assert_one_line_error(check_in_process(path, capsys), path, field)
    assert message


@pytest.mark.parametrize(
    "provider",
    [
        "[tiers.providers.limits]\nrequests_per_minute = inf",
        "[tiers.providers.limits]\nrequests_per_minute = 10\nburst_s = inf",
    ],
    ids=["requests_per_minute", "burst_s"],
)
def test_check_prints_no_traceback(tmp_path: Path, provider: str) -> None:
    path = tmp_path / "cascade.toml"
    path.write_text(provider_config("", "", provider))
    field = provider.split("\n")[-1].split(" =")[0]
    message = assert_one_line_error(check(path), path, f"{P0}.limits.{field}")
    assert message == "Expected a finite number"


@pytest.mark.parametrize(
    "value",
    [
        "[" * 100_000 + "]" * 100_000,
        "{ a = " * 100_000 + "1" + " }" * 100_000,
        "[" * 100_000,  # deep and unterminated
    ],
    ids=["array", "inline-table", "unterminated"],
)
def test_deeply_nested_toml_is_a_config_error(tmp_path: Path, value: str) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(f"x = {value}\n")
    message = assert_one_line_error(check(path), path, "")
    assert "not valid TOML" in message


def test_a_deep_mapping_is_no_recursion_error() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ConfigError, match="Expected `object`, got `array`"):
        Config.from_dict({"tiers": deep})
    provider = {"name": "p", "kind": "openai", "base_url": "http://h/v1", "model": "m"}
    tier = {"name": "t", "providers": [provider], "validators": [{"name": "v", "x": deep}]}
    Config.from_dict({"tiers": [tier]})  # a validator's parameters are the validator's


def test_infinite_and_nan_floats_are_refused_with_a_readable_message(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(provider_config("", "", "timeout_s = inf"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == f"{P0}.timeout_s"
    assert info.value.source == str(path)
    assert info.value.message == "Expected a finite number"
    assert str(info.value) == f"{path}: {P0}.timeout_s: Expected a finite number"
    path.write_text(provider_config("", "", "timeout_s = 1e300"))  # large is fine
    assert load_config(path).tiers[0].providers[0].timeout_s == 1e300


def test_retry_errors_name_the_whole_path() -> None:
    provider = {"name": "p", "kind": "openai", "base_url": "http://h/v1", "model": "m"}
    data = {
        "tiers": [{"name": "t", "providers": [{**provider, "retry": {"base_s": 3, "max_s": 1}}]}]
    }
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert info.value.path == f"{P0}.retry.max_s"
    with pytest.raises(ConfigError) as info:  # built directly: the field alone
        RetryPolicy(base_s=3, max_s=1)
    assert info.value.path == "max_s"
    with pytest.raises(ConfigError):
        RetryPolicy(max_s=float("inf"))


def test_an_unreadable_file_is_named_once(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    proc = check(path)
    assert proc.returncode == 2
    assert (
        proc.stderr
        == f"cascade: error: {path}: cannot read config file: No such file or directory\n"
    )


def test_run_renders_config_errors_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "cascade.toml"
    path.write_text(provider_config("", "", 'kind = "opneai"'))
    proc = subprocess.run(
        [sys.executable, "-m", "cascade._cli", "run", "--config", str(path), "hi"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    message = assert_one_line_error(proc, path, f"{P0}.kind")
    assert message.startswith("unknown provider kind 'opneai'")


def test_from_config_build_errors_name_the_file(tmp_path: Path) -> None:
    # The library path, not only the CLI: a build error (unknown kind) names the file.
    from cascade import Cascade, ConfigError

    path = tmp_path / "cascade.toml"
    path.write_text(provider_config("", "", 'kind = "opneai"'))
    with pytest.raises(ConfigError) as info:
        Cascade.from_config(path)
    assert info.value.source == str(path)
    assert info.value.path == f"{P0}.kind"


def test_a_deep_sweep_value_is_an_input_error() -> None:
    from cascade import InputError
    from cascade._calibrate import parse_values

    assert parse_values("0.5,[1]") == [0.5, [1]]
    with pytest.raises(InputError) as info:
        parse_values("[" * 100_000)
    assert info.value.path == "--sweep"


def test_check_hides_credentials_in_a_base_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cascade.toml"
    url = "http://user:sk-secret-in-url@127.0.0.1:1/v1"
    path.write_text(provider_config("", "", f'base_url = "{url}"'))
    proc = check_in_process(path, capsys)
    assert proc.returncode == 0, proc.stderr
    assert "sk-secret-in-url" not in proc.stdout
    assert "http://***@127.0.0.1:1/v1" in proc.stdout
    bad = provider_config("", "", 'base_url = "http://user:sk-secret-in-url@127.0.0.1:x/v1"')
    path.write_text(bad)
    proc = check_in_process(path, capsys)
    assert proc.returncode == 2
    assert "sk-secret-in-url" not in proc.stderr


def test_a_config_file_is_read_within_a_bound(tmp_path: Path) -> None:
    from cascade._config import MAX_CONFIG_BYTES

    path = tmp_path / "big.toml"
    path.write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES)
    message = assert_one_line_error(check(path), path, "")
    assert message.startswith(f"config file larger than {MAX_CONFIG_BYTES} bytes")
    if Path("/dev/zero").exists():  # endless: read no further than the bound
        assert_one_line_error(check(Path("/dev/zero")), Path("/dev/zero"), "")


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        (subprocess.DEVNULL, "the prompt on stdin is empty"),
        (b"  \n\n", "the prompt on stdin is empty"),
        ("closed", "stdin is closed"),
    ],
)
def test_run_dash_refuses_an_empty_or_closed_stdin(
    tmp_path: Path, stdin: object, expected: str
) -> None:
    path = tmp_path / "cascade.toml"
    path.write_text(provider_config("", "", ""))
    argv = [sys.executable, "-m", "cascade._cli", "run", "--config", str(path), "-"]
    if stdin == "closed":
        # the shell's <&-: the process starts with no file descriptor 0 at all
        argv = ["sh", "-c", " ".join(f"'{a}'" for a in argv) + " <&-"]
        proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    elif isinstance(stdin, bytes):
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)
    else:
        proc = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=60, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert expected in err
