"""The hop's RESP reading (``zajel.cluster.link``): pub/sub messages however the bytes arrive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from hypothesis import given
from hypothesis import strategies as st

from zajel.cluster.link import (
    LinkError,
    Publisher,
    Reader,
    RedisAddress,
    Subscriber,
    command,
    connect,
)


def message(channel: bytes, payload: bytes) -> bytes:
    return command(b"message", channel, payload)


@given(
    payloads=st.lists(st.binary(max_size=64), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=10),
)
def test_messages_come_out_whole_and_in_order_however_the_bytes_are_cut(payloads, cuts):
    stream = b"".join(message(b"zajel:0:node:n@1", payload) for payload in payloads)
    reader = Reader()
    got: list[bytes] = []
    position = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[position : position + cut])
        position += cut
        got += reader.messages()
        if position >= len(stream):
            break
    assert got == payloads


def test_other_replies_are_left_to_the_general_parser():
    reader = Reader()
    confirmation = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
    reader.feed(confirmation + b"-ERR no\r\n" + message(b"c", b"x"))
    assert reader.messages() == []  # a subscribe confirmation first
    assert reader.next() == [b"subscribe", b"c", 1]
    assert isinstance(reader.next(), LinkError)
    assert reader.messages() == [b"x"]


def test_a_url_is_parsed_and_redacted_without_its_password():
    address = RedisAddress.parse("redis://user:p%40ss@example:6380/3")
    assert (address.host, address.port, address.db, address.username) == (
        "example",
        6380,
        3,
        "user",
    )
    assert address.password == "p@ss"
    assert "p@ss" not in address.redacted()
    assert "p@ss" not in repr(address)


async def test_several_publishes_are_one_atomic_step_and_every_reply_is_read(redis):
    """``publish_all_nowait`` sends MULTI, the PUBLISHes and EXEC (docs/cluster.md, "Direct
    relay"): each subscriber gets its message, and the replies (+OK, +QUEUED, the EXEC array)
    are read without failing the link; a channel nobody hears is counted."""
    address = RedisAddress.parse(redis.url)
    got: dict[bytes, list[bytes]] = {b"one": [], b"two": []}

    def collect(channel: bytes) -> Callable[[bytes], Awaitable[None]]:
        async def on_message(payload: bytes) -> None:
            got[channel].append(payload)

        return on_message

    async with trio.open_nursery() as nursery:
        for channel in got:
            subscriber = Subscriber(await connect(address), channel)
            await nursery.start(subscriber.run, collect(channel))
        publisher = Publisher(await connect(address))
        nursery.start_soon(publisher.run)
        publisher.publish_all_nowait([(b"one", b"1a"), (b"two", b"2a"), (b"nobody", b"x")])
        publisher.publish_all_nowait([(b"two", b"2b")])
        publisher.publish_nowait(b"one", b"1b")
        with trio.fail_after(5):
            while len(got[b"one"]) < 2 or len(got[b"two"]) < 2 or publisher.unheard < 1:  # noqa: ASYNC110
                await trio.sleep(0.005)
        assert got == {b"one": [b"1a", b"1b"], b"two": [b"2a", b"2b"]}
        assert (publisher.failed, publisher.unheard, publisher.sent) == (None, 1, 5)
        nursery.cancel_scope.cancel()
