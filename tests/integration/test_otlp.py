"""With a collector configured, spans leave through OTLP/HTTP as well (a real HTTP
server on loopback stands in for the collector)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from fleetops.telemetry._lean import LeanTracer
from fleetops.telemetry._tracing import (
    SpanBuffer,
    current_traceparent,
    make_tracer,
    otlp_endpoint_from_env,
    store_rows,
)

RECEIVED: list[bytes] = []


class Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        length = int(self.headers["Content-Length"])
        RECEIVED.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_endpoint_comes_from_the_standard_variables() -> None:
    assert otlp_endpoint_from_env({}) is None
    assert otlp_endpoint_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == (
        "http://c:4318/v1/traces"
    )
    assert (
        otlp_endpoint_from_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x",
            }
        )
        == "http://t:1/x"
    )


def test_spans_reach_the_collector_and_the_built_in_store(collector: str) -> None:
    RECEIVED.clear()
    url = otlp_endpoint_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": collector})
    tracer, buffer, provider = make_tracer(
        "fleetops-test", {"fleetops.cluster": "c"}, otlp_endpoint=url
    )
    assert provider is not None  # the SDK does the exporting
    with tracer.start_as_current_span(
        "invoke_agent classify",
        kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "classify",
            "fleetops.task.id": 7,
        },
    ):
        pass
    provider.shutdown()  # flushes the batch processor
    rows = list(store_rows(buffer.drain()))
    assert [(r[3], r[8], r[10]) for r in rows] == [("invoke_agent classify", 7, "classify")]
    assert RECEIVED, "the collector received nothing"
    request = ExportTraceServiceRequest()
    request.ParseFromString(RECEIVED[0])
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for s in spans] == ["invoke_agent classify"]
    assert spans[0].trace_id.hex() == rows[0][0]
    keys = {kv.key for kv in request.resource_spans[0].resource.attributes}
    assert {"service.name", "fleetops.cluster"} <= keys


def test_without_a_collector_the_lean_tracer_records_the_same_rows() -> None:
    tracer, buffer, provider = make_tracer("fleetops-test", {})
    assert provider is None
    with tracer.start_as_current_span(
        "chat m", kind=SpanKind.CLIENT, attributes={"fleetops.task.id": 3}
    ) as parent:
        child = tracer.start_span("execute_tool search")
        child.end()
    rows = {r[3]: r for r in store_rows(buffer.drain())}
    assert rows["execute_tool search"][2] == rows["chat m"][1]  # parented by the current span
    assert rows["execute_tool search"][0] == rows["chat m"][0]
    assert rows["chat m"][4] == "client" and rows["chat m"][8] == 3
    assert parent.get_span_context().is_valid


def test_the_lean_task_span_reads_the_traceparent_and_formats_like_the_sdk() -> None:
    tracer, buffer, _ = make_tracer("fleetops-test", {})
    assert isinstance(tracer, LeanTracer)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    child = tracer.start_task_span("invoke_agent a", parent, lambda: {"fleetops.task.id": 5})
    child.end()
    for bad in ("garbage", "ff" + parent[2:], parent[:35] + "+" + parent[36:], None):
        tracer.start_task_span("invoke_agent b", bad, dict).end()
    first, *orphans = list(store_rows(buffer.drain()))
    assert first[:5] == (
        "0af7651916cd43dd8448eb211c80319c",
        first[1],
        "b7ad6b7169203331",
        "invoke_agent a",
        "internal",
    )
    assert len(first[1]) == 16 and first[8] == 5 and first[11] == '{"fleetops.task.id":5}'
    # a missing or malformed traceparent starts a new trace instead of failing the task
    assert [o[2] for o in orphans] == [None] * 4
    assert len({o[0] for o in orphans}) == 4


def test_the_span_buffer_asks_for_a_flush_when_full_enough_and_counts_what_it_drops() -> None:
    buffer = SpanBuffer(limit=10, flush_at=4)
    row = (1, 2, None, "s", SpanKind.INTERNAL, 0.0, 1.0, "unset", None, None, None, {})
    for _ in range(3):
        buffer.add(row)
    assert not buffer.due.is_set()
    buffer.add(row)
    assert buffer.due.is_set()
    assert len(buffer.drain()) == 4 and not buffer.due.is_set()
    for _ in range(13):
        buffer.add(row)
    assert buffer.dropped == 3 and len(buffer.drain()) == 10


def test_the_lean_tracer_records_a_few_new_traces_a_second_and_whole_traces_only() -> None:
    tracer, buffer, _ = make_tracer("fleetops-test", {}, roots_per_second=3)
    assert isinstance(tracer, LeanTracer)
    made: list[int] = []

    def attributes() -> dict[str, AttributeValue]:
        made.append(1)
        return {"fleetops.task.id": len(made)}

    roots = [tracer.start_task_span("invoke_agent a", None, attributes) for _ in range(20)]
    recorded = [s for s in roots if s.is_recording()]
    assert len(recorded) == 3  # the bucket holds one second's worth
    assert tracer.roots_skipped == 17
    assert len(made) == 3  # attributes are made for the recorded spans only
    skipped = next(s for s in roots if not s.is_recording())
    # an unrecorded task still passes its trace on, marked "not sampled" ...
    with trace.use_span(skipped):
        child_header = current_traceparent()
        child = tracer.start_span("chat m")  # its own LLM call: not recorded either
    assert child_header is not None and child_header.endswith("-00")
    assert not child.is_recording()
    assert not tracer.start_task_span("invoke_agent b", child_header, dict).is_recording()
    # ... and a recorded one marks it "sampled": its children are recorded whatever the rate
    with trace.use_span(recorded[0]):
        sampled_header = current_traceparent()
    assert sampled_header is not None and sampled_header.endswith("-01")
    assert all(
        tracer.start_task_span("invoke_agent c", sampled_header, dict).is_recording()
        for _ in range(10)
    )
    for span in roots:
        span.end()
    assert len(buffer.drain()) == 3  # only recorded spans reach the store


def test_without_a_rate_every_trace_is_recorded() -> None:
    tracer, buffer, _ = make_tracer("fleetops-test", {})
    assert isinstance(tracer, LeanTracer)
    assert all(tracer.start_task_span("t", None, dict).is_recording() for _ in range(5000))
