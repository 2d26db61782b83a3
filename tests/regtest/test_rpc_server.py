"""The RPC frame of the embedded node, in-process: cookie auth, help texts, named parameters,
JSON-RPC 2.0 notifications, non-POST requests."""

from __future__ import annotations

import json

import aiohttp
import pytest
from node_helpers import NodeError, Rpc

from devnets.regtest import RegtestNode
from devnets.regtest.methods import REGISTRY


@pytest.fixture
async def node(tmp_path):
    n = RegtestNode(tmp_path / "node")
    await n.start()
    yield n
    await n.stop()


async def test_cookie_auth_like_bitcoind(node: RegtestNode) -> None:
    cookie = (node.datadir / "regtest" / ".cookie").read_text()
    user, _, password = cookie.partition(":")
    assert user == "__cookie__" and len(password) == 64
    assert await Rpc(node.rpc_url, (user, password))("getblockcount") == 0
    await node.stop()
    assert not (node.datadir / "regtest" / ".cookie").exists()


async def test_help_covers_every_method(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    listing = await rpc("help")
    assert "== Blockchain ==" in listing and "getblockhash height" in listing and "setmocktime" not in listing
    for name in REGISTRY:
        text = await rpc("help", name)
        assert text.startswith(name) and "Result:" in text and "Examples:" in text
    # Wrong argument count: bitcoind answers -1 with the method's help text.
    with pytest.raises(NodeError) as err:
        await rpc("getblockhash")
    assert err.value.code == -1 and err.value.message.startswith("getblockhash height\n")


async def test_named_parameters_and_notifications(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    status, text = await rpc.raw(
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "getblockheader", "params": {"blockhash": await rpc("getbestblockhash"), "verbose": False}})
    )
    assert status == 200 and len(json.loads(text)["result"]) == 160
    status, text = await rpc.raw(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "getblockhash", "params": {"heigth": 0}}))
    assert json.loads(text)["error"] == {"code": -8, "message": "Unknown named parameter heigth"}
    status, text = await rpc.raw(json.dumps({"jsonrpc": "2.0", "method": "getblockcount"}))
    assert (status, text) == (204, "")
    async with aiohttp.ClientSession() as s:
        async with s.get(node.rpc_url, headers=rpc.headers) as r:
            assert r.status == 405
    assert await rpc("getblockcount") == 0


async def test_answers_carry_exactly_bitcoinds_content_type(node: RegtestNode) -> None:
    """Clients built on AuthServiceProxy (python-bitcoinrpc, Core's functional-test proxy) refuse
    any other header ("non-JSON HTTP response"), results and errors alike."""
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    async with aiohttp.ClientSession() as http:
        for body in ({"method": "getblockcount", "id": 1}, {"method": "getblockhash", "params": [10**6], "id": 2}, [{"method": "getblockcount", "id": 3}]):
            async with http.post(node.rpc_url, data=json.dumps(body), headers=rpc.headers) as resp:
                assert resp.headers["Content-Type"] == "application/json", (body, resp.headers["Content-Type"])
