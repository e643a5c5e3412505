"""The JSON-RPC peer on its own: error codes, ids, notifications, batches and call timeouts."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.helpers import wait_for
from waystation.cloud.jsonrpc import JsonRpcPeer, RpcClosed, RpcError, RpcTimeout
from waystation.cloud.link import MAX_REASON_LENGTH, cloud_reason


class Wire:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, raw: str) -> None:
        self.sent.append(orjson.loads(raw))


async def echo(params: Any) -> Any:
    return params


async def broken(params: Any) -> Any:
    raise ValueError("secret details stay in the log")


def make_peer(plain: list[dict[str, Any]] | None = None) -> tuple[JsonRpcPeer, Wire]:
    wire = Wire()
    peer = JsonRpcPeer(
        wire.send,
        {"echo": echo, "broken": broken},
        timeout=0.2,
        on_plain=(plain.append if plain is not None else None),
    )
    return peer, wire


@pytest.mark.parametrize(
    ("frame", "code", "answer_id"),
    [
        ("{nope", -32700, None),
        ('{"jsonrpc":"1.0","id":1,"method":"echo"}', -32600, 1),
        ('{"jsonrpc":"2.0","id":2}', -32600, 2),
        ('{"jsonrpc":"2.0","id":3,"method":"missing"}', -32601, 3),
        ('{"jsonrpc":"2.0","id":4,"method":"echo","params":5}', -32602, 4),
        ('{"jsonrpc":"2.0","id":"five","method":"broken"}', -32603, "five"),
        ("[]", -32600, None),
    ],
)
async def test_errors_have_the_spec_codes(frame: str, code: int, answer_id: Any) -> None:
    peer, wire = make_peer()
    await peer.feed(frame)
    await wait_for(lambda: wire.sent, message="an answer")
    (answer,) = wire.sent
    assert answer["jsonrpc"] == "2.0" and answer["id"] == answer_id and answer["error"]["code"] == code
    assert "secret" not in str(answer)


async def test_requests_notifications_and_batches() -> None:
    plain: list[dict[str, Any]] = []
    peer, wire = make_peer(plain)
    await peer.feed('{"jsonrpc":"2.0","id":7,"method":"echo","params":{"a":1}}')
    await peer.feed('{"jsonrpc":"2.0","method":"echo","params":{"quiet":true}}')  # notification: no answer
    await peer.feed('{"type":"station_renamed","name":"x"}')
    await peer.feed(
        '[{"jsonrpc":"2.0","id":8,"method":"echo","params":[1]},{"jsonrpc":"2.0","method":"echo"},1]'
    )
    await wait_for(lambda: len(wire.sent) == 2, message="two answers")
    await asyncio.sleep(0.05)
    assert wire.sent[0] == {"jsonrpc": "2.0", "id": 7, "result": {"a": 1}}
    batch = wire.sent[1]
    assert batch[0] == {"jsonrpc": "2.0", "id": 8, "result": [1]} and batch[1]["error"]["code"] == -32600
    assert len(batch) == 2 and len(wire.sent) == 2
    assert plain == [{"type": "station_renamed", "name": "x"}]


async def test_calls_match_answers_by_id_and_time_out() -> None:
    peer, wire = make_peer()
    first = asyncio.create_task(peer.call("a", {"n": 1}))
    second = asyncio.create_task(peer.call("b"))
    await wait_for(lambda: len(wire.sent) == 2)
    id_a, id_b = wire.sent[0]["id"], wire.sent[1]["id"]
    assert id_a != id_b and "params" not in wire.sent[1]
    await peer.feed(
        orjson.dumps(
            {"jsonrpc": "2.0", "id": id_b, "error": {"code": -32000, "message": "no", "data": {"code": "X"}}}
        )
    )
    await peer.feed(orjson.dumps({"jsonrpc": "2.0", "id": id_a, "result": 42}))
    assert await first == 42
    with pytest.raises(RpcError) as info:
        await second
    assert info.value.code == -32000 and info.value.data == {"code": "X"}
    with pytest.raises(RpcTimeout):
        await peer.call("never")
    # A late answer to an expired call is ignored, as is one with a strange id.
    await peer.feed(orjson.dumps({"jsonrpc": "2.0", "id": wire.sent[-1]["id"], "result": 1}))
    await peer.feed('{"jsonrpc":"2.0","id":[1],"result":1}')
    pending = asyncio.create_task(peer.call("c", within=5))
    await wait_for(lambda: len(wire.sent) == 4)
    peer.close()
    with pytest.raises(RpcClosed):
        await pending


async def test_requests_beyond_the_slots_are_answered_busy_at_once() -> None:
    release = asyncio.Event()

    async def slow(params: Any) -> Any:
        await release.wait()
        return "done"

    wire = Wire()
    peer = JsonRpcPeer(wire.send, {"slow": slow, "echo": echo}, timeout=1.0, max_concurrent=2)
    await peer.feed('{"jsonrpc":"2.0","id":1,"method":"slow"}')
    await peer.feed('{"jsonrpc":"2.0","id":2,"method":"slow"}')
    # Both slots are taken: feed() answers at once instead of waiting (it must keep reading the socket).
    await asyncio.wait_for(peer.feed('{"jsonrpc":"2.0","id":3,"method":"echo"}'), 0.5)
    await asyncio.wait_for(peer.feed('[{"jsonrpc":"2.0","id":4,"method":"echo"}]'), 0.5)
    await peer.feed('{"jsonrpc":"2.0","method":"echo"}')  # a notification: dropped, never answered
    assert wire.sent[0]["id"] == 3 and wire.sent[0]["error"]["code"] == -32000
    assert wire.sent[0]["error"]["message"] == "busy"
    assert wire.sent[1] == [wire.sent[0] | {"id": 4}] and len(wire.sent) == 2
    assert peer.busy == 3
    release.set()
    await wait_for(lambda: len(wire.sent) == 4, message="the slow ones finish")
    await peer.feed('{"jsonrpc":"2.0","id":5,"method":"echo","params":[5]}')  # a slot is free again
    await wait_for(lambda: len(wire.sent) == 5)
    assert wire.sent[4] == {"jsonrpc": "2.0", "id": 5, "result": [5]}


async def test_close_before_requests_start_leaves_no_unawaited_coroutines() -> None:
    peer, wire = make_peer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await peer.feed('{"jsonrpc":"2.0","id":1,"method":"echo"}')
        await peer.feed('[{"jsonrpc":"2.0","id":2,"method":"echo"}]')
        peer.close()  # the tasks have not run a single step yet
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert wire.sent == []


async def test_a_call_on_a_dead_socket_raises_rpc_closed() -> None:
    async def dead(raw: str) -> None:
        raise ConnectionClosed(None, None)

    peer = JsonRpcPeer(dead, {}, timeout=1.0)
    with pytest.raises(RpcClosed):
        await peer.call("cloud.echo")


def test_cloud_reasons_are_bounded_single_lines() -> None:
    assert cloud_reason({"reason": "x" * 10_000}) == "x" * (MAX_REASON_LENGTH - 1) + "…"
    assert cloud_reason({"reason": "bad\ntoken\r\n  here"}) == "bad token here"
    assert cloud_reason({"reason": {"nested": 1}}) == cloud_reason({}) == "no reason"
