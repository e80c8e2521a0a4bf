"""``sql``: the answer must be SQL that parses, of the allowed statement kinds, over known
tables. Parsing is sqlglot's (``pip install sqlglot``, or ``cascade-engine[plugins]``).

The SQL is the answer's ```sql fenced block (else its first bare ``` block, else the whole
answer). ``Result.parsed`` is the SQL as sqlglot writes it back in ``dialect``.

Config::

    validator_paths = ["validators"]         # this folder, relative to the config file

    [[tiers]]
    name = "small"
    validators = [{ name = "sql", dialect = "postgres", allow = ["select"],
                    tables = ["orders", "customers"], require_tables = ["orders"],
                    forbid_star = true }]

Parameters, all optional:

- ``dialect``: sqlglot's dialect name (``postgres``, ``mysql``, ``sqlite``, ``bigquery``...);
  generic SQL by default.
- ``allow``: statement kinds the answer may contain (``select``, ``insert``, ``update``,
  ``delete``, ``merge``, ``create``, ``drop``, ``alter``, ``truncate``). Every statement
  counts, nested ones too (a ``DELETE`` in a ``WITH`` is a delete); statements sqlglot
  cannot parse into a tree (``SHOW ...``) are rejected when ``allow`` is set, as their
  kind can't be checked.
- ``tables``: the tables that exist; a query naming another one (a hallucinated table) is
  rejected. Names of the query's own ``WITH`` tables are always fine.
- ``require_tables``: tables the SQL must read or write.
- ``forbid_star``: reject ``SELECT *`` / ``t.*`` (``COUNT(*)`` is fine).
- ``max_statements``: at most this many statements (``1`` rejects a piggy-backed ``; DROP``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import cascade

if TYPE_CHECKING:
    import sqlglot.errors
    from sqlglot import exp

__all__ = ["SqlValidator"]

_SQL_FENCE = re.compile(r"```[ \t]*[a-z]*sql[ \t]*\r?\n(.*?)```", re.S | re.I)
_BARE_FENCE = re.compile(r"```[ \t]*\r?\n(.*?)```", re.S)
_TOKEN = re.compile(r"<Token token_type: [^,]+, text: (.*?), line: \d+, col: \d+, .*?>", re.S)


def find_sql(text: str) -> str:
    """The SQL in an answer: a ```sql fenced block, else a bare ``` block, else the text."""
    for fence in (_SQL_FENCE, _BARE_FENCE):
        m = fence.search(text)
        if m:
            return m.group(1).strip()
    return text.strip()


@cascade.validator("sql")
class SqlValidator:
    """Accepts an answer whose SQL parses in ``dialect`` and passes the optional checks;
    score 1 or 0. See the module docstring for the parameters."""

    def __init__(
        self,
        *,
        dialect: str | None = None,
        allow: list[str] | None = None,
        tables: list[str] | None = None,
        require_tables: list[str] | None = None,
        forbid_star: bool = False,
        max_statements: int | None = None,
        name: str = "sql",
    ) -> None:
        try:
            import sqlglot
            import sqlglot.errors
            from sqlglot import exp
        except ImportError:
            raise ValueError(
                "the sql validator needs sqlglot: pip install sqlglot (or cascade-engine[plugins])"
            ) from None
        self._sqlglot = sqlglot
        self._exp = exp
        self._kinds: dict[str, type[exp.Expr]] = {
            "select": exp.Query,
            "insert": exp.Insert,
            "update": exp.Update,
            "delete": exp.Delete,
            "merge": exp.Merge,
            "create": exp.Create,
            "drop": exp.Drop,
            "alter": exp.Alter,
            "truncate": exp.TruncateTable,
        }
        if dialect is not None:
            try:
                sqlglot.Dialect.get_or_raise(dialect)
            except ValueError as exc:
                raise ValueError(f"dialect: {exc}") from None
        if allow is not None:
            unknown = [k for k in allow if k.lower() not in self._kinds]
            if unknown or not allow:
                raise ValueError(
                    f"allow: unknown statement kind(s) {unknown} (known: {', '.join(self._kinds)})"
                    if unknown
                    else "allow: name at least one statement kind"
                )
        if max_statements is not None and max_statements < 1:
            raise ValueError("max_statements must be at least 1")
        self.name = name
        self.dialect = dialect
        self.allow = frozenset(k.lower() for k in allow) if allow is not None else None
        self.tables = frozenset(t.lower() for t in tables) if tables is not None else None
        self.require_tables = tuple(t.lower() for t in require_tables or ())
        self.forbid_star = forbid_star
        self.max_statements = max_statements

    def __repr__(self) -> str:
        return f"<SqlValidator {self.name!r} dialect={self.dialect or 'generic'}>"

    async def validate(
        self, completion: cascade.Completion, context: cascade.ValidationContext
    ) -> cascade.Verdict:
        sql = find_sql(completion.text)
        try:
            statements = [s for s in self._sqlglot.parse(sql, read=self.dialect) if s is not None]
        except self._sqlglot.errors.ParseError as exc:
            return self._reject(f"not valid SQL ({self.dialect or 'generic'}): {_describe(exc)}")
        except self._sqlglot.errors.TokenError as exc:
            return self._reject(f"not valid SQL ({self.dialect or 'generic'}): {exc}")
        if not statements:
            return self._reject("no SQL statement found in the answer")
        problem = self._check(statements)
        normalized = ";\n".join(s.sql(dialect=self.dialect) for s in statements)
        if problem:
            return self._reject(problem, parsed=normalized)
        return cascade.Verdict(validator=self.name, passed=True, parsed=normalized)

    def _check(self, statements: list[exp.Expr]) -> str:
        exp = self._exp
        if self.max_statements is not None and len(statements) > self.max_statements:
            return f"{len(statements)} statements, at most {self.max_statements} allowed"
        if self.allow is not None:
            for i, statement in enumerate(statements, 1):
                if isinstance(statement, exp.Command):
                    return f"statement {i} ({statement.name}) is not one sqlglot can check"
                for kind in self._statement_kinds(statement):
                    if kind not in self.allow:
                        return (
                            f"statement {i} contains {kind.upper()}, only "
                            f"{', '.join(sorted(k.upper() for k in self.allow))} allowed"
                        )
        ctes = {c.alias_or_name.lower() for s in statements for c in s.find_all(exp.CTE)}
        used = {
            t.name.lower()
            for s in statements
            for t in s.find_all(exp.Table)
            if t.name and not (t.name.lower() in ctes and not t.db)
        }
        if self.tables is not None:
            unknown = sorted(used - self.tables)
            if unknown:
                return f"unknown table(s) {', '.join(unknown)}"
        missing = [t for t in self.require_tables if t not in used]
        if missing:
            return f"does not use the required table(s) {', '.join(missing)}"
        if self.forbid_star:
            for s in statements:
                for star in s.find_all(exp.Star):
                    if not isinstance(star.parent, exp.Func):
                        return "selects * (name the columns)"
        return ""

    def _statement_kinds(self, statement: exp.Expr) -> list[str]:
        """The kind of the statement and of every data-changing statement inside it."""
        top = next((k for k, cls in self._kinds.items() if isinstance(statement, cls)), None)
        kinds = [top or str(statement.key)]
        for node in statement.walk():
            for kind, cls in self._kinds.items():
                if kind != "select" and isinstance(node, cls) and kind not in kinds:
                    kinds.append(kind)
        return kinds

    def _reject(self, reason: str, *, parsed: Any = None) -> cascade.Verdict:
        return cascade.Verdict(
            validator=self.name, passed=False, score=0.0, reason=reason[:500], parsed=parsed
        )


def _describe(exc: sqlglot.errors.ParseError) -> str:
    """sqlglot's first parse error without its terminal colour codes and token reprs."""
    if not exc.errors:
        return str(exc).split("\n", 1)[0]
    first = exc.errors[0]
    description = _TOKEN.sub(lambda m: repr(m.group(1)), str(first.get("description", "")))
    near = first.get("highlight")
    if near and repr(near) not in description:
        description += f" near {near!r}"
    if first.get("line"):
        description += f" (line {first['line']}, col {first['col']})"
    return description
