"""The ``cascade`` command: ``demo``, ``check FILE``, ``run --config FILE PROMPT``,
``serve --config FILE`` (the HTTP gateway), ``hash-key`` (a gateway key's SHA-256, the
key read from stdin), and ``eval`` / ``calibrate`` over a recorded dataset.

Config files read here resolve a replay provider's relative ``dataset`` path against the
config file's folder (not the current directory). The standard ``OTEL_*`` environment
variables set up trace, metric and log export (``_otel.py``); nothing is exported without
them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import msgspec
import structlog

from . import __version__
from ._answers import ANSWER_TYPES
from ._cli_data import eval_command, train_router_command
from ._cli_serve import LOOPS, access_log_to_stdout, hash_key_command, serve_command
from ._config import ProviderConfig, in_file, load_config
from ._engine import Cascade
from ._errors import CascadeError, ConfigError, InputError, RunError
from ._otel import SDK, configure_from_env
from ._telemetry import ROUTE_EVENT
from ._types import RequestOptions, Result
from ._urls import hide_userinfo

if TYPE_CHECKING:
    from .gateway._log_writer import LineWriter

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
    run.add_argument("prompt", help="the prompt; '-' reads it from stdin (UTF-8, 1 MiB at most)")

    srv = sub.add_parser("serve", help="serve the cascade as an OpenAI-compatible HTTP gateway")
    srv.add_argument("--config", required=True, help="TOML config file (with [gateway])")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    srv.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop: uvloop (the `uvloop` extra: the loop and its sockets in C, less CPU "
        "per request), asyncio, or auto (default: uvloop when installed)",
    )

    sub.add_parser(
        "hash-key",
        help="print the SHA-256 of a gateway key read from stdin, for [gateway.keys] sha256",
    )

    ev = sub.add_parser(
        "eval",
        help="run a dataset through the cascade; accuracy and cost against the top tier alone",
    )
    _dataset_args(ev)
    ev.add_argument(
        "--sweep",
        metavar="NAME=V1,V2,...",
        help="vary a validator parameter, e.g. "
        "tiers.1.validators.self_consistency.min_agreement=0.5,0.75,1",
    )
    ev.add_argument("--plot", metavar="OUT.png", help="draw cost share vs accuracy (matplotlib)")

    cal = sub.add_parser(
        "calibrate",
        help="sweep a validator parameter and pick the value meeting a target or a budget",
    )
    _dataset_args(cal)
    cal.add_argument("--param", required=True, help="tiers.<tier>.validators.<validator>.<param>")
    cal.add_argument("--values", required=True, help="comma-separated TOML values")
    goal = cal.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--target-accuracy", type=float, help="pick the cheapest value reaching it (0-1)"
    )
    goal.add_argument(
        "--budget-usd",
        type=float,
        help="pick the most accurate value whose whole run (eval's cost_usd) costs at most B",
    )
    cal.add_argument(
        "--confidence",
        type=float,
        help="with --target-accuracy: pick only a value whose accuracy on new records is at "
        "least the target with this probability (a one-sided Clopper-Pearson bound, "
        "Bonferroni over the values swept), e.g. 0.95",
    )

    tr = sub.add_parser(
        "train-router",
        help="label a dataset per tier, fit a router (classifier or semantic), report "
        "held-out accuracy and cost",
    )
    _dataset_args(tr, dataset_required=False)
    tr.add_argument("--out", required=True, help="the router file to write (JSON)")
    tr.add_argument("--kind", choices=("classifier", "semantic"), default="classifier")
    tr.add_argument("--test-split", help="report figures on the records of this split (test)")
    tr.add_argument("--records", help="production routing records (JSON lines) to train on")
    tr.add_argument("--outcome-field", help="the records' true/false outcome field")
    tr.add_argument("--text-field", default="prompt", help="the records' prompt field")
    tr.add_argument(
        "--char-ngrams", metavar="LO,HI", help="add character n-grams, e.g. 3,5 (slower)"
    )
    tr.add_argument(
        "--cost-weight",
        type=float,
        help="the policy's cost weight (default: fitted on the training records)",
    )
    tr.add_argument(
        "--table",
        action="store_true",
        help="also fit a bagged plan table (policy 'table'): many clusterings of the "
        "training texts, each cluster's figures per range of tiers averaged per request, "
        "the cost weight chosen by 5-fold cross-validation",
    )
    tr.add_argument(
        "--budget-share",
        type=float,
        help="with --table: the most a request may cost on average, as a share of "
        "--budget-tier alone (default: the whole cascade's own cost)",
    )
    tr.add_argument(
        "--budget-tier", help="with --budget-share: the reference tier (default: the dearest)"
    )
    tr.add_argument(
        "--seed",
        type=int,
        default=0,
        help="with --table: seeds its k-means and folds (default 0; the same seed, the same file)",
    )
    return parser


def _warnings_to_stderr() -> None:
    """Without log export, the library's warnings (Redis lost, a breaker listener that
    failed) go to standard error, never into the command's output. Routing records are not
    written: the command reports its runs itself (``run`` prints a failure's attempts,
    ``eval`` counts errors), and a record per failed run would bury its progress bar."""
    structlog.configure(
        processors=[
            _drop_routing_records,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _drop_routing_records(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if event_dict.get("event") == ROUTE_EVENT:
        raise structlog.DropEvent
    return event_dict


def _dataset_args(p: argparse.ArgumentParser, *, dataset_required: bool = True) -> None:
    p.add_argument("--config", required=True, help="TOML config file")
    p.add_argument("--dataset", required=dataset_required, help="JSONL (or .jsonl.gz) of questions")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument(
        "--extractor",
        default="auto",
        help="final answer of a result with no recorded answer (default auto)",
    )
    p.add_argument(
        "--answer-type",
        choices=ANSWER_TYPES,
        help="how answers are compared with `expected` (default: each record's answer_type "
        "field, else auto); exact-match accuracy is reported beside it",
    )
    p.add_argument(
        "--date-order",
        default="mdy",
        help="numeric dates: mdy (05/01 = May 1st, default), dmy (January 5th), or strict "
        "(an ambiguous one is no answer)",
    )
    p.add_argument("--split", help="only the records whose `split` field is this (train, test)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sdk: SDK | None = None
    writer: LineWriter | None = None
    try:
        if args.command == "hash-key":
            return hash_key_command()
        if args.command != "check":
            sdk = configure_from_env()  # traces, metrics, logs: when OTEL_* variables ask
            if args.command == "serve" and (sdk is None or sdk.logger_provider is None):
                writer = access_log_to_stdout()
            elif sdk is None or sdk.logger_provider is None:
                _warnings_to_stderr()
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
        if args.command in ("eval", "calibrate"):
            return eval_command(args)
        if args.command == "serve":
            return serve_command(args)
        if args.command == "train-router":
            return train_router_command(args)
        return _run(args)
    except (ConfigError, InputError) as exc:
        # one line: "<file>: <path>: <message>" for a config file's errors
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
    finally:
        if sdk is not None:
            sdk.shutdown()  # flush what is still batched
        if writer is not None:
            writer.close()


def _where(p: ProviderConfig) -> str:
    """Where a provider sends its calls, credentials in the URL hidden."""
    return hide_userinfo(p.base_url) if p.base_url else str(p.dataset)


def _check(path: str) -> int:
    # Building checks kinds, API key variables and validators, and resolves relative paths.
    with in_file(path):
        config = Cascade.from_config(path).config
    routes = None
    if config.gateway is not None:
        from .gateway import build_gateway, load_gateway

        # every route's cascade built, as `cascade serve` does, nothing opened: before
        # anything is printed, so that a bad [gateway] table is not preceded by "OK"
        routes = build_gateway(load_gateway(path)).generation.routes
    print(f"{path}: OK, {len(config.tiers)} tiers, on_exhausted = {config.on_exhausted!r}")
    for i, tier in enumerate(config.tiers, 1):
        names = ", ".join(str(v["name"]) for v in tier.validators) or "none"
        print(f"tier {i} {tier.name!r}: validators: {names}")
        for p in tier.providers:
            print(
                f"  {p.name}: {p.kind} {p.model} at {_where(p)} "
                f"(${p.input_cost_per_mtok:g}/${p.output_cost_per_mtok:g} per Mtok in/out, "
                f"timeout {p.timeout_s:g}s{', stream' if p.stream else ''})"
            )
    if routes is not None:
        print(f"gateway: routes {', '.join(repr(r.name) for r in routes)}")
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


MAX_STDIN_PROMPT = 1 << 20
"""``cascade run -`` reads at most this many bytes of prompt from stdin."""


def _prompt(arg: str) -> str:
    """The prompt argument, or with ``-`` the prompt on stdin (without trailing newlines)."""
    if arg != "-":
        return arg
    stdin: BinaryIO | None = getattr(sys.stdin, "buffer", None)  # None: closed (<&-)
    if stdin is None:
        raise InputError("the prompt is '-' but stdin is closed", path="prompt")
    if stdin.isatty():
        print("cascade: reading the prompt from stdin (end it with Ctrl-D)", file=sys.stderr)
    try:
        raw = stdin.read(MAX_STDIN_PROMPT + 1)
    except OSError as exc:
        raise InputError(
            f"cannot read the prompt from stdin: {exc.strerror}", path="prompt"
        ) from None
    if len(raw) > MAX_STDIN_PROMPT:
        raise InputError(f"the prompt on stdin is over {MAX_STDIN_PROMPT} bytes", path="prompt")
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InputError(f"the prompt on stdin is not UTF-8: {exc.reason}", path="prompt") from None
    if not text.strip():
        raise InputError("the prompt on stdin is empty", path="prompt")
    return text


def _run(args: argparse.Namespace) -> int:
    with in_file(args.config):
        cascade = Cascade(load_config(args.config), base_dir=Path(args.config).parent)
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": _prompt(args.prompt)})
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
