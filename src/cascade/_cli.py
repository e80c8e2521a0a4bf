"""The ``cascade`` command: ``demo``, ``check FILE``, ``run --config FILE PROMPT``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio
import msgspec

from . import __version__
from ._config import Config, load_config
from ._engine import Cascade
from ._errors import CascadeError, ConfigError, InputError, RunError
from ._types import RequestOptions, Result

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade", description="Run LLM requests through tiers of models, cheap first."
    )
    parser.add_argument("--version", action="version", version=f"cascade {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="simulate a three-tier fleet on loopback (no API keys) and compare costs"
    )
    demo.add_argument("--requests", type=int, default=300, help="tasks to run (default 300)")
    demo.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    demo.add_argument("--seed", type=int, default=7, help="simulation seed")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    check = sub.add_parser("check", help="validate a config file and print its tiers")
    check.add_argument("file")

    run = sub.add_parser("run", help="send one prompt through the cascade")
    run.add_argument("--config", required=True, help="TOML config file")
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    run.add_argument("--system", help="a system message")
    run.add_argument("--max-tokens", type=int)
    run.add_argument("--temperature", type=float)
    run.add_argument("--start-tier", help="tier index (1-based) or name to start at")
    run.add_argument("--max-tier", help="tier index (1-based) or name to stop at")
    run.add_argument("--max-cost-usd", type=float)
    run.add_argument("--deadline-s", type=float)
    run.add_argument("prompt")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            if args.requests < 1 or args.concurrency < 1:
                raise InputError("--requests and --concurrency must be >= 1")
            from ._demo import main_demo  # the demo pulls in the fake servers

            return main_demo(
                requests=args.requests,
                concurrency=args.concurrency,
                seed=args.seed,
                as_json=args.json,
            )
        if args.command == "check":
            return _check(args.file)
        return _run(args)
    except (ConfigError, InputError) as exc:
        print(f"cascade: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"cascade: {type(exc).__name__}: {exc}", file=sys.stderr)
        for a in exc.attempts:
            print(f"  {_attempt_line(a)}", file=sys.stderr)
        return 1
    except CascadeError as exc:
        print(f"cascade: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _check(path: str) -> int:
    config: Config = load_config(path)
    Cascade(config)  # provider kinds, API key variables, validators: all checked here
    print(f"{path}: OK, {len(config.tiers)} tiers, on_exhausted = {config.on_exhausted!r}")
    for i, tier in enumerate(config.tiers, 1):
        names = ", ".join(str(v["name"]) for v in tier.validators) or "none"
        print(f"tier {i} {tier.name!r}: validators: {names}")
        for p in tier.providers:
            print(
                f"  {p.name}: {p.kind} {p.model} at {p.base_url} "
                f"(${p.input_cost_per_mtok:g}/${p.output_cost_per_mtok:g} per Mtok in/out, "
                f"timeout {p.timeout_s:g}s{', stream' if p.stream else ''})"
            )
    return 0


def _tier_arg(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _attempt_line(a: object) -> str:
    from ._types import Attempt

    assert isinstance(a, Attempt)
    detail = a.error or "; ".join(f"{v.validator}: {v.reason}" for v in a.verdicts if not v.passed)
    return (
        f"tier {a.tier} {a.tier_name} / {a.provider} ({a.model}): {a.outcome}"
        f"{' - ' + detail if detail else ''} [${a.cost_usd:.6f}, {a.latency_s * 1000:.0f} ms]"
    )


def _run(args: argparse.Namespace) -> int:
    cascade = Cascade.from_config(args.config)
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})
    options = RequestOptions(max_tokens=args.max_tokens, temperature=args.temperature)

    async def go() -> Result:
        async with cascade:
            return await cascade.run(
                messages=messages,
                options=options,
                start_tier=_tier_arg(args.start_tier),
                max_tier=_tier_arg(args.max_tier),
                max_cost_usd=args.max_cost_usd,
                deadline_s=args.deadline_s,
            )

    result = anyio.run(go)
    if args.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
        return 0
    print(result.text)
    print(
        f"-- tier {result.tier} {result.tier_name} / {result.provider} ({result.model}), "
        f"validated={result.validated}, ${result.cost_usd:.6f}, "
        f"{result.usage.input_tokens}+{result.usage.output_tokens} tokens, "
        f"{result.latency_s * 1000:.0f} ms",
        file=sys.stderr,
    )
    for a in result.attempts:
        print(f"   {_attempt_line(a)}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
