"""Validator plug-ins: the repository's own (sql, pydantic_model) loaded from their folder as
a user's would be, a user's folder, and the ``cascade.validators`` entry-point group for
real (a distribution written to disk and found through importlib.metadata)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cascade
from cascade import Cascade, Completion, ConfigError, Result
from cascade.testing import FakeOpenAIServer
from cascade.validators import ValidationContext, build_validator, registered_validators
from cascade.validators._plugins import load_entry_point_validators, load_validator_folder
from cascade.validators._registry import _REGISTRY

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]
CTX = ValidationContext(messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t")


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    """Tests share a process: drop the validators and plug_* modules a test added."""
    names, modules = set(_REGISTRY), set(sys.modules)
    yield
    for name in set(_REGISTRY) - names:
        del _REGISTRY[name]
    for module in set(sys.modules) - modules:
        if module.startswith("plug_"):
            del sys.modules[module]


@pytest.fixture
def plugins() -> list[str]:
    return load_validator_folder("validators", base_dir=REPO)


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


async def two_tiers(validator: dict[str, Any], first: str, second: str) -> Result:
    """Tier 1 answers ``first``, tier 2 ``second``; both face ``validator``."""
    async with FakeOpenAIServer() as server:
        server.script("m1", first)
        server.script("m2", second)
        cfg = {
            "tiers": [
                tier("small", provider("small-a", server.url, "m1"), validators=[validator]),
                tier("large", provider("large-a", server.url, "m2"), validators=[validator]),
            ]
        }
        async with Cascade.from_dict(cfg) as c:
            return await c.run(messages=USER)


async def verdict_of(spec: dict[str, Any], text: str) -> cascade.Verdict:
    v = build_validator(spec, path="v")
    return await v.validate(Completion(text=text, provider="p", model="m"), CTX)


# --- the repository's plug-ins, through the folder path ----------------------------------


def test_repo_folder_registers_the_plugins(plugins: list[str]) -> None:
    assert plugins == ["pydantic_model", "sql"]  # files in name order
    assert {"pydantic_model", "sql"} <= set(registered_validators())
    assert load_validator_folder(REPO / "validators") == plugins  # absolute path, idempotent


SQL = {
    "name": "sql",
    "dialect": "sqlite",
    "allow": ["select"],
    "tables": ["orders", "customers"],
    "max_statements": 1,
}


@pytest.mark.usefixtures("plugins")
async def test_sql_accepts_and_normalizes() -> None:
    result = await two_tiers(
        SQL, "```sql\nselect id, total from orders where total > 10\n```", "unused"
    )
    assert (result.tier, result.validated) == (1, True)
    assert result.parsed == "SELECT id, total FROM orders WHERE total > 10"


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ("SELECT FROM WHERE", "not valid SQL (sqlite): Expected table name but got 'WHERE'"),
        ("DROP TABLE orders", "statement 1 contains DROP, only SELECT allowed"),
        ("WITH d AS (DELETE FROM orders RETURNING id) SELECT id FROM d", "contains DELETE"),
        ("SELECT id FROM orders; DELETE FROM orders", "2 statements, at most 1 allowed"),
        ("SELECT name FROM ghosts", "unknown table(s) ghosts"),
        ("Sorry, I can't write that query.", "not valid SQL"),
    ],
)
async def test_sql_rejection_escalates(first: str, reason: str) -> None:
    result = await two_tiers(SQL, first, "SELECT c.name FROM customers AS c")
    assert (result.tier, result.validated) == (2, True)
    rejected = result.attempts[0]
    assert rejected.outcome == "rejected"
    assert reason in rejected.verdicts[0].reason
    assert rejected.verdicts[0].score == 0.0
    assert result.parsed == "SELECT c.name FROM customers AS c"


@pytest.mark.usefixtures("plugins")
async def test_sql_options() -> None:
    star = {"name": "sql", "forbid_star": True, "require_tables": ["orders"]}
    assert (await verdict_of(star, "SELECT COUNT(*) FROM orders")).passed
    assert (await verdict_of(star, "SELECT o.* FROM orders AS o")).reason == (
        "selects * (name the columns)"
    )
    assert "required table(s) orders" in (await verdict_of(star, "SELECT 1")).reason
    # a WITH table is the query's own, never an unknown one
    assert (await verdict_of(SQL, "WITH big AS (SELECT id FROM orders) SELECT id FROM big")).passed
    assert "contains PRAGMA" in (await verdict_of(SQL, "PRAGMA table_info(orders)")).reason
    # when kinds are restricted, a statement sqlglot only passes through is not trusted
    only_select = {"name": "sql", "dialect": "postgres", "allow": ["select"]}
    assert "not one sqlglot can check" in (await verdict_of(only_select, "SHOW TABLES")).reason
    assert (await verdict_of({"name": "sql", "dialect": "postgres"}, "SHOW TABLES")).passed
    empty = await verdict_of({"name": "sql", "dialect": "postgres"}, "")
    assert empty.reason == "no SQL statement found in the answer"


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"dialect": "no-such-sql"}, "Unknown dialect"),
        ({"allow": ["selct"]}, "unknown statement kind(s) ['selct']"),
        ({"max_statements": 0}, "at least 1"),
        ({"colour": "red"}, "has no parameter 'colour' (its parameters: dialect,"),
    ],
)
def test_sql_bad_parameters_fail_at_build(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_validator({"name": "sql", **params}, path="tiers[0].validators[0]")
    # an unknown parameter is named by its own path
    where = "tiers[0].validators[0]" + (".colour" if "colour" in params else "")
    assert info.value.path == where and message in info.value.message


FIELDS = {
    "name": "pydantic_model",
    "fields": {"total": "float", "items": "list[str]", "note": "str | None"},
}


@pytest.mark.usefixtures("plugins")
async def test_pydantic_fields_accept_and_reject() -> None:
    result = await two_tiers(
        FIELDS, '{"total": "n/a", "items": ["a"]}', 'Here:\n```json\n{"total": 3, "items": []}\n```'
    )
    assert (result.tier, result.validated) == (2, True)
    reason = result.attempts[0].verdicts[0].reason
    assert reason.startswith("at $.total: Input should be a valid number")
    assert result.parsed == {"total": 3.0, "items": [], "note": None}  # model_dump()

    result = await two_tiers(FIELDS, '{"total": 1.5, "items": [1]}', '{"items": []}')
    assert result.validated is False  # on_exhausted = "best": both rejected
    reasons = [a.verdicts[0].reason for a in result.attempts]
    assert reasons == [
        "at $.items[0]: Input should be a valid string",
        "at $.total: Field required",
    ]


@pytest.mark.usefixtures("plugins")
async def test_pydantic_user_model_by_import_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        {
            "plug_models.py": """
            from pydantic import BaseModel, Field

            class Line(BaseModel):
                sku: str
                price: float = Field(ge=0)

            class Invoice(BaseModel):
                lines: list[Line]
                currency: str = "EUR"
            """
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"name": "pydantic_model", "model": "plug_models:Invoice"}
    result = await two_tiers(
        spec,
        '{"lines": [{"sku": "a", "price": -1}]}',
        '{"lines": [{"sku": "a", "price": 2}]}',
    )
    assert result.tier == 2
    assert result.attempts[0].verdicts[0].reason == (
        "at $.lines[0].price: Input should be greater than or equal to 0"
    )
    assert result.parsed == {"lines": [{"sku": "a", "price": 2.0}], "currency": "EUR"}
    strict = await verdict_of({**spec, "strict": True}, '{"lines": [{"sku": "a", "price": "2"}]}')
    assert strict.reason == "at $.lines[0].price: Input should be a valid number"


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": "plug_nowhere:Model"}, "cannot import 'plug_nowhere:Model'"),
        ({"model": "cascade:Config"}, "not a pydantic BaseModel subclass"),
        ({"model": "no_colon"}, "expected 'package.module:ClassName'"),
        ({"fields": {"a": "complex"}}, "fields.a: unknown type 'complex'"),
        ({"fields": {"_a": "int"}}, "not a field name"),
        ({}, "exactly one of `model`"),
    ],
)
def test_pydantic_bad_parameters_fail_at_build(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_validator({"name": "pydantic_model", **params}, path="tiers[1].validators[0]")
    assert info.value.path == "tiers[1].validators[0]" and message in info.value.message


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize(
    ("name", "library", "params"),
    [("sql", "sqlglot", {}), ("pydantic_model", "pydantic", {"fields": {"a": "int"}})],
)
def test_missing_library_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, name: str, library: str, params: dict[str, Any]
) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # `import library` now fails
    with pytest.raises(ConfigError, match=f"pip install {library}"):
        build_validator({"name": name, **params}, path="v")


def test_removed_registration_comes_back_on_reload(plugins: list[str]) -> None:
    factory = _REGISTRY.pop("sql")
    assert load_validator_folder("validators", base_dir=REPO) == plugins
    assert _REGISTRY["sql"] is factory  # the same class: the file was not imported again


# --- a user's own folder -----------------------------------------------------------------

WORDS = """
    from __future__ import annotations

    import dataclasses
    from pathlib import Path
    from typing import ClassVar

    import cascade

    from ._count import count_words

    with Path(__file__).with_name("imports.log").open("a") as log:
        log.write("imported\\n")


    @cascade.validator("plug_words")
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Words:
        minimum: int
        name: str = "plug_words"
        unit: ClassVar[str] = "words"

        async def validate(self, completion, context):
            n = count_words(completion.text)
            ok = n >= self.minimum
            return cascade.Verdict(
                validator=self.name, passed=ok, reason="" if ok else f"{n} {self.unit}"
            )
"""
COUNT = """
    def count_words(text):
        return len(text.split())
"""


async def test_user_folder_loads_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write(tmp_path / "mine", {"plug_words.py": WORDS, "_count.py": COUNT})
    assert load_validator_folder("mine", base_dir=tmp_path) == ["plug_words"]
    monkeypatch.chdir(tmp_path)  # relative to the current directory without base_dir
    assert load_validator_folder("mine", config_path="validator_paths[1]") == ["plug_words"]
    assert (folder / "imports.log").read_text() == "imported\n"  # imported once
    assert "_count" not in registered_validators()

    result = await two_tiers({"name": "plug_words", "minimum": 3}, "too short", "three words here")
    assert result.tier == 2
    assert result.attempts[0].verdicts[0].reason == "2 words"


def test_user_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_validator_folder(tmp_path / "absent", config_path="validator_paths[2]")
    assert info.value.path == "validator_paths[2]" and "does not exist" in info.value.message

    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="is not a folder"):
        load_validator_folder("a_file", base_dir=tmp_path)

    broken = write(
        tmp_path / "broken",
        {
            "plug_a_fine.py": """
            import cascade

            @cascade.validator("plug_fine")
            def fine(**params):
                raise ValueError("unused")
            """,
            "plug_b_broken.py": """
            import cascade

            @cascade.validator("plug_partial")
            def partial(**params):
                raise ValueError("unused")

            import plug_no_such_module
            """,
        },
    )
    with pytest.raises(ConfigError) as info:
        load_validator_folder(broken, config_path="validator_paths[0]")
    assert info.value.path == "validator_paths[0]"
    assert "plug_b_broken.py" in info.value.message
    assert "ModuleNotFoundError: No module named 'plug_no_such_module'" in info.value.message
    assert "plug_fine" in registered_validators()  # the file before it loaded
    assert "plug_partial" not in registered_validators()  # the failed file's are undone

    # fixed, the folder loads: the failed file was not marked as loaded
    fixed = (broken / "plug_b_broken.py").read_text().replace("import plug_no_such_module", "")
    (broken / "plug_b_broken.py").write_text(fixed)
    assert load_validator_folder(broken) == ["plug_fine", "plug_partial"]


def test_two_folders_claiming_one_name(tmp_path: Path) -> None:
    plugin = """
        import cascade

        @cascade.validator("plug_twice")
        def twice(**params):
            raise ValueError("unused")
    """
    load_validator_folder(write(tmp_path / "one", {"plug_twice.py": plugin}))
    with pytest.raises(ConfigError, match="'plug_twice' is already registered"):
        load_validator_folder(write(tmp_path / "two", {"plug_twice.py": plugin}))


# --- entry points, through a distribution on sys.path --------------------------------------

EP_FACTORY = """
    import cascade

    with open(__file__ + ".log", "a") as log:
        log.write("imported\\n")


    class MyValidator:  # not decorated: the entry point's name registers it
        def __init__(self, *, word):
            self.name = "plug_ep"
            self.word = word

        async def validate(self, completion, context):
            ok = self.word in completion.text
            return cascade.Verdict(
                validator=self.name, passed=ok, reason="" if ok else f"no {self.word!r}"
            )
"""
EP_MODULE = """
    import cascade

    @cascade.validator("plug_ep_mod_a")
    def a(**params):
        raise ValueError("unused")

    @cascade.validator("plug_ep_mod_b")
    def b(**params):
        raise ValueError("unused")
"""


def install(
    site: Path, monkeypatch: pytest.MonkeyPatch, entry_points: str, modules: dict[str, str]
) -> None:
    """A minimal installed distribution: a .dist-info with METADATA and entry_points.txt,
    and its modules beside it, on sys.path."""
    write(site, modules)
    write(
        site / "plug_dist-0.1.dist-info",
        {
            "METADATA": "Metadata-Version: 2.1\nName: plug-dist\nVersion: 0.1\n",
            "entry_points.txt": f"[cascade.validators]\n{textwrap.dedent(entry_points)}",
        },
    )
    monkeypatch.syspath_prepend(str(site))


async def test_entry_points_register_factories_and_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        tmp_path,
        monkeypatch,
        """
        plug_ep = plug_ep_plugin:MyValidator
        plug_ep_mod = plug_ep_module
        """,
        {"plug_ep_plugin.py": EP_FACTORY, "plug_ep_module.py": EP_MODULE},
    )
    assert "plug_ep" not in registered_validators()
    names = load_entry_point_validators()
    assert {"plug_ep", "plug_ep_mod_a", "plug_ep_mod_b"} <= set(names)
    assert {"plug_ep", "plug_ep_mod_a", "plug_ep_mod_b"} <= set(registered_validators())
    assert load_entry_point_validators() == names  # idempotent
    assert Path(tmp_path / "plug_ep_plugin.py.log").read_text() == "imported\n"

    result = await two_tiers({"name": "plug_ep", "word": "magic"}, "plain", "magic words")
    assert result.tier == 2
    assert result.attempts[0].verdicts[0].reason == "no 'magic'"


@pytest.mark.parametrize(
    ("entry", "module", "message"),
    [
        ("plug_ep_missing_module:Thing", None, "No module named 'plug_ep_missing_module'"),
        ("plug_ep_raises", "raise RuntimeError('boom at import')", "RuntimeError: boom"),
        ("plug_ep_consts:VALUE", "VALUE = 3", "int is neither a module nor a validator factory"),
    ],
)
def test_broken_entry_point_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, module: str | None, message: str
) -> None:
    modules = {f"{entry.split(':')[0]}.py": module} if module else {}
    install(tmp_path, monkeypatch, f"plug_broken = {entry}\n", modules)
    with pytest.raises(ConfigError) as info:
        load_entry_point_validators()
    assert info.value.path == "entry_points.plug_broken"
    assert "validator entry point 'plug_broken'" in info.value.message
    assert message in info.value.message


def test_entry_point_to_a_self_registered_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the module registers the class itself under another name: not registered twice
    plugin = """
        import cascade

        @cascade.validator("plug_self_named")
        class Named:
            def __init__(self, **params):
                raise ValueError("unused")
    """
    install(tmp_path, monkeypatch, "plug_alias = plug_self:Named\n", {"plug_self.py": plugin})
    assert "plug_self_named" in load_entry_point_validators()
    assert "plug_alias" not in registered_validators()


# --- through the engine: validator_paths in config, entry points on an unknown name -------


async def test_config_validator_paths_load_at_build(tmp_path: Path) -> None:
    write(tmp_path / "checks", {"plug_words.py": WORDS, "_count.py": COUNT})
    async with FakeOpenAIServer() as server:
        server.script("m1", "too short")
        server.script("m2", "SELECT id FROM orders")
        (tmp_path / "cascade.toml").write_text(
            f"""
            validator_paths = ["checks", "{REPO / "validators"}"]
            [[tiers]]
            name = "small"
            validators = [{{ name = "plug_words", minimum = 3 }}]
            providers = [{{ name = "a", kind = "openai", base_url = "{server.url}", model = "m1" }}]
            [[tiers]]
            name = "large"
            validators = [{{ name = "sql", allow = ["select"] }}]
            providers = [{{ name = "b", kind = "openai", base_url = "{server.url}", model = "m2" }}]
            """.replace("\n            ", "\n")
        )
        async with Cascade.from_config(tmp_path / "cascade.toml") as c:  # relative to the file
            result = await c.run(messages=USER)
    assert (result.tier, result.parsed) == (2, "SELECT id FROM orders")
    cfg = {
        "validator_paths": ["checks", "nowhere"],
        "tiers": [tier("a", provider("a", "http://127.0.0.1:9/v1", "m"))],
    }
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg, base_dir=tmp_path)
    assert info.value.path == "validator_paths[1]"


async def test_unknown_name_loads_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        tmp_path,
        monkeypatch,
        "plug_ep_late = plug_ep_late:MyValidator\n",
        {"plug_ep_late.py": EP_FACTORY},
    )
    result = await two_tiers({"name": "plug_ep_late", "word": "magic"}, "plain", "magic words")
    assert result.tier == 2 and result.attempts[0].verdicts[0].reason == "no 'magic'"
