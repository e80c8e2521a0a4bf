"""The Router protocol and its registry: the decorator, entry points, and config errors
that name the bad field's path, all raised when the Cascade is built."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cascade
from cascade import Cascade, ConfigError, RouteDecision, RouteRequest
from cascade.routing import (
    FirstOf,
    _registry,
    build_router,
    load_entry_point_routers,
    register_router_kind,
    registered_routers,
)

from .helpers import provider, tier

URL = "http://127.0.0.1:9"  # never called: these tests only build


def config(**extra: Any) -> dict[str, Any]:
    return {
        "tiers": [
            tier("small", provider("small-a", URL, "m1")),
            tier("large", provider("large-a", URL, "m2")),
        ],
        **extra,
    }


@pytest.fixture
def clean_registry() -> Iterator[None]:
    before, paths = dict(_registry._REGISTRY), dict(_registry._PATHS)
    yield
    _registry._REGISTRY.clear()
    _registry._REGISTRY.update(before)
    _registry._PATHS.clear()
    _registry._PATHS.update(paths)


def test_builtin_kinds() -> None:
    assert {"rules", "cost", "llm", "first_of"} <= set(registered_routers())


def test_decorator_registers_a_kind_for_config(clean_registry: None) -> None:
    @cascade.router("always_large")
    class AlwaysLarge:
        def __init__(self, *, tier: int = 2) -> None:
            self.name = "always_large"
            self.tier = tier

        async def route(self, request: RouteRequest) -> RouteDecision:
            return RouteDecision(start_tier=self.tier)

    assert "always_large" in registered_routers()
    c = Cascade.from_dict(config(router={"kind": "always_large", "tier": 2}))
    assert isinstance(c.router, AlwaysLarge) and c.router.tier == 2
    with pytest.raises(ValueError, match="already registered"):
        cascade.router("always_large")(lambda: None)  # type: ignore[arg-type,return-value]
    register_router_kind("always_large", AlwaysLarge, replace=False)  # the same: fine


def test_declared_file_paths_resolve_against_the_config_files_folder(
    clean_registry: None, tmp_path: Path
) -> None:
    @cascade.router("reads_files", paths=("table", "data.file"))
    class ReadsFiles:
        def __init__(self, *, table: str, data: dict[str, Any], other: str = "") -> None:
            self.name, self.table, self.data, self.other = "reads_files", table, data, other

        async def route(self, request: RouteRequest) -> RouteDecision:
            return RouteDecision()

    folder = tmp_path / "conf"
    resolved = _registry.resolve_router_paths(
        {
            "kind": "first_of",
            "routers": [
                {"kind": "reads_files", "table": "t.json", "data": {"file": "sub/d.bin"},
                 "other": "not/a/path"},
                {"kind": "reads_files", "table": "/abs/t.json", "data": {"file": 3}},
                {"kind": "unknown_kind", "table": "t.json"},
            ],
        },
        folder,
    )  # fmt: skip
    first, second, third = resolved["routers"]
    assert first["table"] == str(folder / "t.json")
    assert first["data"] == {"file": str(folder / "sub" / "d.bin")}
    assert first["other"] == "not/a/path"  # not declared: left alone
    assert second["table"] == "/abs/t.json" and second["data"] == {"file": 3}
    assert third == {"kind": "unknown_kind", "table": "t.json"}  # the build will name it
    # through a config file: the router gets the path under the file's folder
    folder.mkdir()
    (folder / "c.toml").write_text(
        textwrap.dedent(
            f"""
            [[tiers]]
            name = "small"
            [[tiers.providers]]
            name = "small-a"
            kind = "openai"
            base_url = "{URL}/v1"
            model = "m1"
            [router]
            kind = "reads_files"
            table = "t.json"
            data = {{ file = "d.bin" }}
            """
        )
    )
    built = Cascade.from_config(folder / "c.toml")
    assert isinstance(built.router, ReadsFiles)
    assert built.router.table == str(folder / "t.json")
    assert built.router.data == {"file": str(folder / "d.bin")}
    # from a mapping, with no file: as given (the working directory's)
    own = Cascade.from_dict(config(router={"kind": "reads_files", "table": "t.json", "data": {}}))
    assert isinstance(own.router, ReadsFiles) and own.router.table == "t.json"


@pytest.mark.parametrize(
    ("table", "path", "message"),
    [
        ({"kind": "nope"}, "router.kind", "unknown router kind 'nope'"),
        ({"kind": 3}, "router.kind", "expected a router kind"),
        ({"kind": "rules"}, "router.rules", "needs 'rules'"),
        ({"kind": "rules", "rules": [], "x": 1}, "router.x", "no parameter 'x'"),
        ({"kind": "rules", "rules": []}, "router.rules", "length >= 1"),
        (
            {"kind": "rules", "rules": [{"keywords": ["a"], "start_tier": 1}, {"start_tier": 2}]},
            "router.rules[1]",
            "a rule needs a condition",
        ),
        (
            {"kind": "rules", "rules": [{"pattern": "(", "start_tier": 2}]},
            "router.rules[0].pattern",
            "bad regular expression",
        ),
        (
            {"kind": "rules", "rules": [{"keywords": ["a"], "start_tier": 3, "max_tier": 2}]},
            "router.rules[0].start_tier",
            "above max_tier",
        ),
        (
            {"kind": "rules", "rules": [{"keywords": ["a"], "start_tier": 0}]},
            "router.rules[0].start_tier",
            ">= 1",
        ),
        (
            {"kind": "rules", "rules": [{"keywords": ["a"], "start_tier": 1, "typo": 1}]},
            "router.rules[0].typo",
            "unknown field",
        ),
        ({"kind": "cost", "share": 0}, "router.share", "> 0"),
        ({"kind": "llm", "provider": "small-a"}, "router.thresholds", "needs 'thresholds'"),
        (
            {"kind": "llm", "provider": "nobody", "thresholds": [3]},
            "router.provider",
            "no provider named 'nobody'",
        ),
        (
            {"kind": "llm", "provider": "small-a", "thresholds": [4, 2]},
            "router.thresholds",
            "increasing order",
        ),
        (
            {"kind": "llm", "provider": "small-a", "thresholds": [6]},
            "router.thresholds[0]",
            "<= 5",
        ),
        ({"kind": "first_of", "routers": []}, "router.routers", "at least one"),
        (
            {"kind": "first_of", "routers": [{"kind": "cost"}, {"kind": "rulez"}]},
            "router.routers[1].kind",
            "unknown router kind 'rulez'",
        ),
        (
            {
                "kind": "first_of",
                "routers": [
                    {"kind": "cost"},
                    {"kind": "rules", "rules": [{"pattern": "[", "start_tier": 2}]},
                ],
            },
            "router.routers[1].rules[0].pattern",
            "bad regular expression",
        ),
        (
            {
                "kind": "first_of",
                "routers": [{"kind": "llm", "provider": "ghost", "thresholds": [3]}],
            },
            "router.routers[0].provider",
            "no provider named 'ghost'",
        ),
    ],
)
def test_config_errors_name_the_path(table: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config(router=table))
    assert info.value.path == path, info.value
    assert message in info.value.message


def test_router_timeout_is_checked() -> None:
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config(router_timeout_s=0))
    assert info.value.path == "router_timeout_s"
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config(), router_timeout_s=-1)
    assert info.value.path == "router_timeout_s"


def test_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cascade.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [[tiers]]
            name = "small"
            [[tiers.providers]]
            name = "small-a"
            kind = "openai"
            base_url = "{URL}"
            model = "m1"

            [router]
            kind = "rules"
            rules = [{{ keywords = ["x"], start_tier = 1, colour = "red" }}]
            """
        )
    )
    with pytest.raises(ConfigError) as info:
        Cascade.from_config(path)
    assert info.value.path == "router.rules[0].colour"
    assert str(path) in str(info.value)


def test_a_router_object_wins_over_config() -> None:
    class Mine:
        name = "mine"

        async def route(self, request: RouteRequest) -> RouteDecision:
            return RouteDecision()

    mine = Mine()
    c = Cascade.from_dict(config(router={"kind": "cost"}), router=mine)
    assert c.router is mine
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config(), router=object())  # type: ignore[arg-type]
    assert info.value.path == "router"


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: object(), "which has no `name` and async `route(request)`"),
        (lambda: type("R", (), {"name": "", "route": _async_route})(), "non-empty string"),
        (lambda: type("R", (), {"name": "r", "route": lambda self, r: r})(), "not a coroutine"),
        (lambda: (_ for _ in ()).throw(RuntimeError("boom")), "RuntimeError: boom"),
    ],
)
def test_a_bad_factory_is_a_config_error(clean_registry: None, factory: Any, message: str) -> None:
    register_router_kind("bad_one", factory, replace=True)
    with pytest.raises(ConfigError) as info:
        build_router({"kind": "bad_one"})
    assert info.value.path == "router"
    assert message in info.value.message


async def _async_route(self: Any, request: RouteRequest) -> RouteDecision:
    return RouteDecision()


def test_first_of_takes_router_objects() -> None:
    inner = build_router({"kind": "cost"})
    both = FirstOf(routers=[inner, {"kind": "cost", "name": "cost2"}])
    assert [r.name for r in both.routers] == ["cost", "cost2"]
    assert "cost, cost2" in repr(both)


# -- entry points (a minimal installed distribution on sys.path) -------------------------

EP_FACTORY = """
from cascade import RouteDecision

class Plugged:
    def __init__(self, *, tier=2):
        self.name = "plugged"
        self.tier = tier

    async def route(self, request):
        return RouteDecision(start_tier=self.tier)
"""


def install(site: Path, monkeypatch: pytest.MonkeyPatch, entry_points: str, module: str) -> None:
    (site / "plug_route_mod.py").write_text(textwrap.dedent(module))
    info = site / "plug_route-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plug-route\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[cascade.routers]\n{textwrap.dedent(entry_points)}")
    monkeypatch.syspath_prepend(str(site))


def test_entry_point_kind_is_found_at_build(
    clean_registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_registry, "_loaded_entry_points", {})
    install(tmp_path, monkeypatch, "plugged = plug_route_mod:Plugged\n", EP_FACTORY)
    assert "plugged" not in _registry._REGISTRY
    c = Cascade.from_dict(config(router={"kind": "plugged", "tier": 1}))
    assert c.router is not None and c.router.name == "plugged"
    assert "plugged" in load_entry_point_routers()


def test_broken_entry_point_is_a_config_error(
    clean_registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_registry, "_loaded_entry_points", {})
    install(tmp_path, monkeypatch, "broken = plug_route_mod:Missing\n", EP_FACTORY)
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config(router={"kind": "not_there"}))
    assert info.value.path == "entry_points.broken"
    assert "router entry point 'broken'" in info.value.message
