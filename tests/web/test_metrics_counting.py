"""What ``zajel.metrics`` counts and how (docs/operations.md, "Metrics"): bounded label values
whatever a client sends, one registry per server, the scrape-time families (``/stats``, the
cluster section), and the handling-time hook of the service runtime."""

from __future__ import annotations

import functools
from typing import Any

import prometheus_client
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from zajel import metrics as metrics_module
from zajel.metrics import HANDLING_SAMPLE, Metrics, Scrape
from zajel.protocol import relay, signaling
from zajel.services._mailbox import run_service


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ('{"type":"offer","target":"ABCDEF","payload":{}}', "offer"),
        ('{"type":"call_hangup","target":"ABCDEF","payload":{}}', "call_hangup"),
        ('{"type":"pair_accept","targetCode":"ABCDEF"}', "pair_response"),
        ('{"type":"channel-subscribe","channelId":"c"}', "channel-subscribe"),
        ('{"type":"ping"}', "ping"),
        ('{"type":"offer","target":"bad"}', "invalid"),
        ("not json", "invalid"),
        ('{"type":"get_relays"}', "other"),  # a /relay type, unknown on /signal
        ('{"type":"' + "x" * 500 + '"}', "other"),
    ],
)
def test_a_frame_received_counts_under_its_type_or_a_bounded_one(frame, kind):
    metrics = Metrics(version="1", process=False)
    metrics.endpoints["signal"].received(signaling.decode(frame))
    assert sample(metrics, "zajel_websocket_messages_in_total", endpoint="signal", type=kind) == 1
    counted = [
        labels
        for family in metrics.registry.collect()
        if family.name == "zajel_websocket_messages_in"
        for labels in (s.labels for s in family.samples if s.value)
    ]
    assert counted == [{"endpoint": "signal", "type": kind}]


def test_relay_frames_count_under_the_relay_types():
    metrics = Metrics(version="1", process=False)
    counters = metrics.endpoints["relay"]
    counters.received(relay.decode('{"type":"heartbeat"}'))
    counters.received(relay.decode('{"type":"offer"}'))
    assert sample(metrics, "zajel_websocket_messages_in_total", endpoint="relay", type="heartbeat")
    assert sample(metrics, "zajel_websocket_messages_in_total", endpoint="relay", type="other") == 1


@pytest.mark.parametrize(
    ("text", "kind", "code"),
    [
        ('{"type":"pong"}', "pong", None),
        ('{"type":"chunk_data","chunkId":"c","data":"x"}', "chunk_data", None),
        ('{"type":"error","code":"rate_limited","message":"m"}', "error", "rate_limited"),
        ('{"type":"error","code":"made_up","message":"m"}', "error", "other"),
        ('{"type":"error","message":"m"}', "error", "other"),
        ('{"type":"whatever"}', "other", None),
        ('{ "type": "pong" }', "other", None),
        ("[]", "other", None),
    ],
)
def test_a_frame_sent_counts_under_its_type_and_an_error_under_its_code(text, kind, code):
    metrics = Metrics(version="1", process=False)
    metrics.endpoints["signal"].sent(text)
    assert sample(metrics, "zajel_websocket_messages_out_total", endpoint="signal", type=kind) == 1
    errors = sum(
        s.value
        for family in metrics.registry.collect()
        if family.name == "zajel_websocket_errors"
        for s in family.samples
    )
    assert errors == (0 if code is None else 1)
    if code is not None:
        assert sample(metrics, "zajel_websocket_errors_total", endpoint="signal", code=code) == 1


@pytest.mark.parametrize(
    ("code", "label"), [(1000, "1000"), (1013, "1013"), (None, "1006"), (4321, "other")]
)
def test_a_close_counts_under_its_code_or_other(code, label):
    metrics = Metrics(version="1", process=False)
    metrics.endpoints["relay"].closed(code)
    assert sample(metrics, "zajel_websocket_closes_total", endpoint="relay", code=label) == 1


def test_every_server_counts_in_its_own_registry():
    first, second = Metrics(version="1", process=False), Metrics(version="1", process=False)
    first.endpoints["signal"].sent('{"type":"pong"}')
    first.refused("http_rate_limit")
    assert sample(first, "zajel_websocket_messages_out_total", endpoint="signal", type="pong") == 1
    assert sample(second, "zajel_websocket_messages_out_total", endpoint="signal", type="pong") == 0
    assert sample(second, "zajel_refusals_total", reason="http_rate_limit") == 0
    names = {family.name for family in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("zajel_") for name in names)


async def test_a_scrape_reads_stats_and_every_integer_of_the_cluster_hop():
    metrics = Metrics(version="1", process=False)
    status: dict[str, Any] = {
        "node": "n1",
        "nodes": 2,
        "degraded": False,
        "owners": {"signaling": "n1", "relay": "n2"},
        "per_node": {},
        "hop": {"messages_out": 5, "a_key_added_later": 7, "latency_ms": {"p50": 1.5, "p99": None}},
    }
    sections = {"chunks": {"cachedChunks": 2, "cacheHits": 3}, "new": {"someNumber": 4}}

    async def source() -> Scrape:
        return Scrape(sections, ["relay"], status)

    metrics.scrape_from(source)
    families = {
        family.name: family
        for family in text_string_to_metric_families((await metrics.exposition()).decode())
    }
    assert all(family.documentation for family in families.values())

    def only(name: str) -> Any:
        (value,) = families[name].samples
        return value

    assert only("zajel_up").value == 0
    assert only("zajel_chunks_cached_chunks").value == 2
    assert families["zajel_chunks_cache_hits"].type == "counter"
    assert only("zajel_chunks_cache_hits").name == "zajel_chunks_cache_hits_total"
    assert only("zajel_new_some_number").value == 4
    assert only("zajel_cluster_nodes").value == 2
    assert {s.labels["service"]: s.value for s in families["zajel_cluster_owned"].samples} == {
        "signaling": 1,
        "relay": 0,
    }
    assert only("zajel_cluster_hop_messages_out").value == 5
    assert only("zajel_cluster_hop_a_key_added_later").name.endswith("_total")
    assert only("zajel_cluster_hop_latency_p50_seconds").value == 0.0015
    assert "zajel_cluster_hop_latency_p99_seconds" not in families


class Echo:
    name = "echo"

    def handle(self, request: Any, now: float) -> Any:
        return request

    def next_deadline(self) -> float:
        return float("inf")

    def expire(self, now: float) -> None:
        pass


async def inbox_depths(metrics: Metrics) -> dict[str, float]:
    text = (await metrics.exposition()).decode()
    (family,) = (
        family
        for family in text_string_to_metric_families(text)
        if family.name == "zajel_service_inbox_depth"
    )
    return {s.labels["service"]: s.value for s in family.samples}


async def test_a_service_times_one_request_in_sixteen_and_reports_its_inbox_depth():
    metrics = Metrics(version="1", process=False)
    send, receive = trio.open_memory_channel[Any](64)
    for number in range(3 * HANDLING_SAMPLE):
        send.send_nowait(_envelope(number))
    assert await inbox_depths(metrics) == {}
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_service, Echo(), receive, metrics=metrics))
        assert list(await inbox_depths(metrics)) == ["echo"]
        await send.aclose()
    assert sample(metrics, "zajel_service_handling_seconds_count", service="echo") == 3
    assert await inbox_depths(metrics) == {}


async def test_a_durable_service_times_every_request_and_reports_its_inbox_depth():
    """The durable services (servers, attestation) are few and slow requests: each is timed."""
    from tests.services.test_durable import Names
    from zajel.services._durable import run_durable_service
    from zajel.storage import MemoryStore

    metrics = Metrics(version="1", process=False)
    send, receive = trio.open_memory_channel[Any](64)
    async with trio.open_nursery() as nursery:
        start = functools.partial(run_durable_service, Names(), MemoryStore(), receive)
        await nursery.start(functools.partial(start, metrics=metrics))
        assert list(await inbox_depths(metrics)) == ["names"]
        for number in range(5):
            reply_send, reply_receive = trio.open_memory_channel[Any](1)
            send.send_nowait(_envelope(("add", f"n{number}"), reply_send))
            assert await reply_receive.receive() == ("ok", ("add", f"n{number}"))
        await send.aclose()
    assert sample(metrics, "zajel_service_handling_seconds_count", service="names") == 5
    assert await inbox_depths(metrics) == {}


def _envelope(request: Any, reply: Any = None) -> Any:
    from zajel.services import Envelope

    return Envelope(request, reply)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n", b"200"),
        (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", b"200"),
        (b"GET /stats HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET /metrics\r\n\r\n", b"400"),  # no version
        (b"GET /metrics SPDY/3\r\n\r\n", b"400"),
        (b"\x00\xff garbage \r\n\r\n", b"400"),
        (b"G" * (metrics_module.HEAD_MAX + 100), b"400"),  # no end of head within the bound
    ],
)
async def test_the_metrics_listener_answers_every_request_line_with_a_status(request_bytes, status):
    """``METRICS_BIND``'s own responder (docs/operations.md, "Metrics"): one answer per
    connection, whatever the client sends first."""
    client, server = trio.testing.memory_stream_pair()
    metrics = Metrics(version="test", process=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(metrics_module._answer, metrics, server)
        await client.send_all(request_bytes)
        answer = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in answer:
                answer += await client.receive_some()
    assert answer.split(b" ", 2)[1] == status
    assert b"connection: close" in answer


async def test_the_metrics_listener_gives_up_on_a_client_that_ends_before_its_head():
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                metrics_module._answer, Metrics(version="test", process=False), server
            )
            await client.send_all(b"GET /metr")
            await client.send_eof()
    # The reader ended (the nursery is done) with nothing written: after the close, the client
    # reads the end of the stream and no answer before it.
    await server.aclose()
    with trio.fail_after(5):
        assert await client.receive_some() == b""
