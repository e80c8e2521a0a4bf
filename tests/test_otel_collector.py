"""otel-collector.yaml and the Jaeger example: they parse, and every name a pipeline uses
is defined (the checks the Collector makes when it starts)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent
COLLECTOR = ROOT / "otel-collector.yaml"
COMPOSE = ROOT / "examples" / "jaeger" / "compose.yaml"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_pipelines_reference_defined_components() -> None:
    config = load(COLLECTOR)
    service = config["service"]
    pipelines = service["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        assert pipeline["receivers"] and pipeline["exporters"], name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name}: {kind} {component!r} is not defined"
    for extension in service.get("extensions", []):
        assert extension in config["extensions"]


def test_otlp_in_on_both_ports_and_traces_out_to_jaeger() -> None:
    config = load(COLLECTOR)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    traces = config["service"]["pipelines"]["traces"]
    assert "batch" in traces["processors"]
    assert {"otlp/jaeger", "debug"} <= set(traces["exporters"])
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    # Every signal the CLI can export has a pipeline taking OTLP in (else the Collector
    # refuses it and the exporter logs an error per batch).
    assert set(config["service"]["pipelines"]) == {"traces", "metrics", "logs"}
    for pipeline in config["service"]["pipelines"].values():
        assert pipeline["receivers"] == ["otlp"]


def test_compose_starts_the_collector_with_this_file_and_jaeger() -> None:
    compose = load(COMPOSE)
    services = compose["services"]
    assert "jaeger" in services["jaeger"]["image"]
    collector = services["otel-collector"]
    assert "opentelemetry-collector" in collector["image"]
    mounts = [v.split(":")[0] for v in collector["volumes"]]
    assert any((COMPOSE.parent / m).resolve() == COLLECTOR.resolve() for m in mounts)
    ports = {p.split(":")[0] for p in collector["ports"]}
    assert {"4317", "4318"} <= ports
    assert any(p.startswith("16686:") for p in services["jaeger"]["ports"])


def test_the_walkthroughs_name_only_real_attributes_and_events() -> None:
    """Every span, attribute, event and metric name the Jaeger and Phoenix walkthroughs and
    the README mention, quoted or not, is one cascade's code uses (a renamed attribute must
    not leave stale docs)."""
    from cascade._telemetry import ROUTE_EVENT
    from cascade._telemetry import _semconv as sc

    used: set[str] = set()
    for path in (ROOT / "src" / "cascade").rglob("*.py"):
        if path.name != "_semconv.py":
            used |= set(re.findall(r"\bsc\.([A-Z][A-Z0-9_]+)", path.read_text()))
    known = {getattr(sc, n) for n in used if isinstance(getattr(sc, n, None), str)}
    known.add(ROUTE_EVENT)
    assert len(known) > 40  # the scan found the constants
    python_names = {  # the API and the test servers, not telemetry
        "cascade.add_trace_ids",
        "cascade.router",
        "cascade.routers",
        "cascade.testing",
        "cascade.validator",
        "cascade.validators",
        "server.request_count",
        "server.respond",
        "server.script",
        "server.url",
    }
    name = re.compile(r"(?<![\w./-])((?:cascade|gen_ai|server|error)\.[a-z_]+(?:\.[a-z_]+)*)")
    docs = [ROOT / "examples" / name / "README.md" for name in ("jaeger", "phoenix")]
    for doc in (*docs, ROOT / "README.md"):
        names = set(name.findall(doc.read_text()))
        unknown = {
            n
            for n in names - known - python_names
            if not n.startswith(sc.CASCADE_METADATA_PREFIX)
            and n != sc.CASCADE_METADATA_PREFIX.rstrip(".")
        }
        assert not unknown, f"{doc.name} names what cascade never emits: {sorted(unknown)}"
        assert len(names & known) > 5  # the check saw the names
