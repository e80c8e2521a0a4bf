"""Sweeps of one validator parameter: naming and setting it, the cost-accuracy frontier
(a table, a plot), and picking a value from it (``cascade calibrate``).

A parameter is named ``tiers.<tier>.validators.<validator>.<param>``, with the tier and the
validator by 1-based index (as ``--start-tier`` counts) or by name:
``tiers.1.validators.self_consistency.min_agreement``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import msgspec

from ._bounds import lower_bound
from ._config import Config
from ._errors import InputError
from ._eval import EvalSummary, Record, Scoring, evaluate

__all__ = [
    "Param",
    "Report",
    "SweepRow",
    "accuracy_bounds",
    "choose",
    "format_sweep",
    "parse_param",
    "parse_values",
    "plot_frontier",
    "report_calibration",
    "run_report",
    "toml_change",
]


class Param(msgspec.Struct, frozen=True, kw_only=True):
    """A validator parameter named ``tiers.<tier>.validators.<validator>.<param>``."""

    spec: str
    tier: str
    validator: str
    param: str

    def locate(self, config: Config) -> tuple[int, int]:
        """0-based indexes of the tier and of the validator entry in ``config``."""
        t = _find(self.tier, [tier.name for tier in config.tiers], "tier", self.spec)
        names = [str(v.get("name")) for v in config.tiers[t].validators]
        v = _find(self.validator, names, f"validator in tier {config.tiers[t].name!r}", self.spec)
        return t, v

    def current(self, config: Config) -> Any:
        """The value in ``config`` (None when the entry leaves it to its default)."""
        t, v = self.locate(config)
        return config.tiers[t].validators[v].get(self.param)

    def apply(self, config: Config, value: Any) -> Config:
        """``config`` with the parameter set to ``value`` (checked when a Cascade is built)."""
        t, v = self.locate(config)
        tier = config.tiers[t]
        validators = list(tier.validators)
        validators[v] = {**validators[v], self.param: value}
        tiers = list(config.tiers)
        tiers[t] = msgspec.structs.replace(tier, validators=validators)
        return msgspec.structs.replace(config, tiers=tiers)


def _find(ref: str, names: list[str], what: str, spec: str) -> int:
    if ref.isdigit():
        if not 1 <= int(ref) <= len(names):
            raise InputError(f"{spec}: no {what} {ref} (there are {len(names)})", path="--sweep")
        return int(ref) - 1
    found = [i for i, name in enumerate(names) if name == ref]
    if len(found) != 1:
        why = "several" if found else "no"
        raise InputError(f"{spec}: {why} {what} named {ref!r}; use its index", path="--sweep")
    return found[0]


def parse_param(spec: str) -> Param:
    """Parse ``tiers.<tier>.validators.<validator>.<param>`` (a tier name may hold dots)."""
    head, _, param = spec.rpartition(".")
    tier, sep, validator = head.removeprefix("tiers.").rpartition(".validators.")
    if not head.startswith("tiers.") or not (sep and tier and validator and param):
        raise InputError(
            f"expected tiers.<tier>.validators.<validator>.<param>, got {spec!r}", path="--sweep"
        )
    return Param(spec=spec, tier=tier, validator=validator, param=param)


def parse_values(text: str) -> list[Any]:
    """Comma-separated TOML scalars (``0.5,1``, ``true``, ``"a"``); a bare word is a string."""
    values: list[Any] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise InputError(f"empty value in {text!r}", path="--sweep")
        try:
            values.append(tomllib.loads(f"v = {item}")["v"])
        except tomllib.TOMLDecodeError:
            values.append(item)
        except RecursionError:
            raise InputError("a value nested too deeply", path="--sweep") from None
    return values


class SweepRow(msgspec.Struct, kw_only=True):
    """The figures of one swept value."""

    value: Any
    accuracy: float
    exact_accuracy: float
    cost_usd: float
    cost_share: float
    escalation_rate: dict[str, float]
    answered_by: dict[str, int]
    unvalidated: int
    errors: int


class Report(EvalSummary, kw_only=True, omit_defaults=True):
    """``cascade eval``'s output: the config as written, and a sweep's rows."""

    param: str | None = None
    sweep: list[SweepRow] | None = None


def run_report(
    config: Config,
    records: Sequence[Record],
    *,
    scoring: Scoring,
    param: Param | None = None,
    values: Sequence[Any] = (),
    concurrency: int = 32,
    progress: TextIO | None = None,
    as_written: bool = True,
    base_dir: str | os.PathLike[str] | None = None,
) -> Report:
    """Evaluate ``config`` and, with ``param``, each of ``values`` in its place.

    The report's top-level figures are those of ``config`` as written; with
    ``as_written = False`` that run is left out and they are the first value's.
    """
    configs = [("cascade", config)] if as_written or param is None else []
    if param is not None:
        configs += [(f"{param.param}={v}", param.apply(config, v)) for v in values]
    summaries = evaluate(
        configs,
        records,
        scoring=scoring,
        concurrency=concurrency,
        progress=progress,
        base_dir=base_dir,
    )
    report = Report(**msgspec.structs.asdict(summaries[0]))
    if param is not None:
        swept = summaries[1:] if as_written else summaries
        report.param = param.spec
        report.sweep = [
            SweepRow(
                value=value,
                accuracy=s.accuracy,
                exact_accuracy=s.exact_accuracy,
                cost_usd=s.cost_usd,
                cost_share=s.cost_share,
                escalation_rate=s.escalation_rate,
                answered_by=s.answered_by,
                unvalidated=s.unvalidated,
                errors=s.errors,
            )
            for value, s in zip(values, swept, strict=True)
        ]
    return report


def accuracy_bounds(rows: Sequence[SweepRow], requests: int, confidence: float) -> list[float]:
    """Per row, a lower bound on its accuracy over new records that holds with probability
    ``confidence`` for every row at once: one-sided Clopper-Pearson at ``1 - (1 -
    confidence) / len(rows)`` each (Bonferroni), so the row picked among them keeps the
    guarantee. The records are taken as a random sample of the records to come."""
    each = 1.0 - (1.0 - confidence) / max(1, len(rows))
    return [lower_bound(round(r.accuracy * requests), requests, each) for r in rows]


def choose(
    rows: Sequence[SweepRow],
    *,
    target_accuracy: float | None = None,
    budget_usd: float | None = None,
    bounds: Sequence[float] | None = None,
) -> int | None:
    """The index of the cheapest row reaching ``target_accuracy`` (with ``bounds``: whose
    bound reaches it), or of the most accurate row costing at most ``budget_usd`` (ties:
    the more accurate, then the cheaper, then the first); None when no row qualifies."""
    eps = 1e-12  # accuracies are ratios of counts: do not lose 0.75 >= 0.75 to rounding
    if target_accuracy is not None:
        scores = [r.accuracy for r in rows] if bounds is None else list(bounds)
        ok = [i for i, a in enumerate(scores) if a + eps >= target_accuracy]
        return min(ok, key=lambda i: (rows[i].cost_usd, -rows[i].accuracy, i), default=None)
    if budget_usd is None:
        raise ValueError("choose needs target_accuracy or budget_usd")
    ok = [i for i, r in enumerate(rows) if r.cost_usd <= budget_usd + eps]
    return min(ok, key=lambda i: (-rows[i].accuracy, rows[i].cost_usd, i), default=None)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """``value`` as a TOML value, tables inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise ValueError(f"no TOML form for {type(value).__name__}")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def toml_change(config: Config, param: Param, value: Any, *, source: str = "the config") -> str:
    """The TOML that sets ``param`` to ``value``: the tier with its validators entry."""
    t, _ = param.locate(config)
    changed = param.apply(config, value)
    tier = changed.tiers[t]
    entries = "".join(f"    {toml_value(v)},\n" for v in tier.validators)
    old = param.current(config)
    was = "(default)" if old is None else toml_value(old)
    change = f"{was} -> {toml_value(value)}" if old != value else f"{was} (unchanged)"
    return (
        f"# {source}, tier {t + 1} {tier.name!r}: {param.param} = {change}\n"
        f"[[tiers]]\nname = {toml_value(tier.name)}\nvalidators = [\n{entries}]\n"
    )


def format_sweep(param: str, rows: Sequence[SweepRow], mark: int | None = None) -> str:
    """The frontier as a table (``mark``: the row to star)."""
    name = param.rpartition(".")[2]
    width = max(len(name), *(len(str(row.value)) for row in rows))
    lines = [f"  {name:<{width}}  accuracy     exact  cost_usd     cost share  answered by"]
    for i, row in enumerate(rows):
        answered = ", ".join(f"{k} {v}" for k, v in row.answered_by.items())
        lines.append(
            f"{'*' if i == mark else ' '} {row.value!s:<{width}}  {row.accuracy:>8.1%}  "
            f"{row.exact_accuracy:>8.1%}  ${row.cost_usd:<11.4f} {row.cost_share:>10.1%}  "
            f"{answered}"
        )
    return "\n".join(lines)


def report_calibration(
    report: Report,
    config: Config,
    param: Param,
    *,
    target_accuracy: float | None,
    budget_usd: float | None,
    source: str,
    as_json: bool,
    confidence: float | None = None,
) -> int:
    """Pick a value from a sweep and print it with the TOML change and the figures;
    return the exit code (1 when no value qualifies)."""
    assert report.sweep is not None
    rows = report.sweep
    bounds = None if confidence is None else accuracy_bounds(rows, report.requests, confidence)
    pick = choose(rows, target_accuracy=target_accuracy, budget_usd=budget_usd, bounds=bounds)
    goal = (
        f"accuracy >= {target_accuracy:.1%}"
        if target_accuracy is not None
        else f"cost <= ${budget_usd:g}"
    )
    if confidence is not None:
        goal += (
            f" with probability {confidence:g} (on new records like these "
            f"{report.requests}: a one-sided Clopper-Pearson bound over {len(rows)} values)"
        )
    snippet = None if pick is None else toml_change(config, param, rows[pick].value, source=source)
    top = list(report.answered_by)[-1]
    if as_json:
        out = {
            "param": param.spec,
            "goal": goal,
            "found": pick is not None,
            "previous": param.current(config),
            **({} if pick is None else msgspec.structs.asdict(rows[pick])),
            "baseline_cost_usd": report.baseline_cost_usd,
            "baseline_accuracy": report.baseline_accuracy,
            "toml": snippet,
            "sweep": rows,
            **({} if bounds is None else {"confidence": confidence, "lower_bounds": bounds}),
        }
        sys.stdout.write(msgspec.json.encode(out).decode() + "\n")
    else:
        print(format_sweep(param.spec, rows, mark=pick))
        if bounds is not None:
            print(
                f"\naccuracy at least, with probability {confidence:g} for all at once: "
                + ", ".join(f"{r.value}: {b:.1%}" for r, b in zip(rows, bounds, strict=True))
            )
        print(
            f"\nalways-{top}: accuracy {report.baseline_accuracy:.1%}, "
            f"cost ${report.baseline_cost_usd:.4f}"
        )
    if pick is None:
        print(f"cascade: no value of {param.param} gives {goal}", file=sys.stderr)
        return 1
    if not as_json:
        row = rows[pick]
        if bounds is not None:
            print(
                f"{param.param} = {toml_value(row.value)}: accuracy >= {bounds[pick]:.1%} ", end=""
            )
            print(f"with probability {confidence:g} (measured {row.accuracy:.1%})")
        print(
            f"{param.param} = {toml_value(row.value)}: accuracy {row.accuracy:.1%}, cost "
            f"${row.cost_usd:.4f} ({row.cost_share:.1%} of always-{top}); {goal}\n"
        )
        print(snippet, end="")
    return 0


def check_plot_available() -> None:
    """Fail before any run when ``--plot`` cannot be honoured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(
            "--plot needs matplotlib: pip install 'cascade-engine[plot]'", path="--plot"
        ) from None


def plot_frontier(report: Report, out: str) -> None:
    """Draw the cost-accuracy frontier (cost share on x, accuracy on y, each point labelled
    by its value) and the always-top-tier baseline to an image file."""
    from matplotlib.figure import Figure  # optional dependency: imported only to plot

    rows = report.sweep or [
        SweepRow(
            value="config",
            accuracy=report.accuracy,
            exact_accuracy=report.exact_accuracy,
            cost_usd=report.cost_usd,
            cost_share=report.cost_share,
            escalation_rate=report.escalation_rate,
            answered_by=report.answered_by,
            unvalidated=report.unvalidated,
            errors=report.errors,
        )
    ]
    top = list(report.answered_by)[-1]
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    ordered = sorted(rows, key=lambda row: row.cost_share)
    xs = [r.cost_share * 100 for r in ordered]
    ax.plot(xs, [r.accuracy * 100 for r in ordered], "o-", label="cascade")
    for row in rows:
        ax.annotate(
            str(row.value),
            (row.cost_share * 100, row.accuracy * 100),
            textcoords="offset points",
            xytext=(5, 5),
        )
    base = report.baseline_accuracy * 100
    ax.axhline(base, color="grey", linestyle="--", linewidth=1)
    ax.plot([100], [base], "s", color="grey", label=f"always {top}")
    ax.set_xlabel(f"cost, % of always-{top}")
    ax.set_ylabel("accuracy, %")
    ax.set_title(report.param or "cost vs accuracy", fontsize="medium")
    ax.grid(visible=True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(out, dpi=120)
