"""A port of the protocol checks of Bitcoin Core 28's ``test/functional/interface_rpc.py`` (JSON-RPC
1.1/2.0 batches, notifications, HTTP status codes), plus the HTTP routing of ``httpserver.cpp``
(paths, methods) and the REST interface of ``rest.cpp`` (``interface_rest.py``'s expectations)."""

from __future__ import annotations

import base64
import json
from typing import Any, NamedTuple

import aiohttp
import pytest

from chains.btc import primitives as p
from devnets.regtest import RegtestNode

RPC_INVALID_PARAMETER = -8
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_PARSE_ERROR = -32700
ADDRESS = "bcrt1qfdes8c308vmyhjgl9wl7nkdsflfc8fupv5e20k"  # a payout address only


@pytest.fixture
async def node(tmp_path):
    n = RegtestNode(tmp_path / "node", rest=True)
    await n.start()
    yield n
    await n.stop()


class Client:
    def __init__(self, node: RegtestNode) -> None:
        self.base = node.rpc_url
        token = base64.b64encode(":".join(node.rpc_auth).encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    async def send_raw(self, body: bytes, path: str = "/", method: str = "POST", headers: dict | None = None) -> tuple[Any, int]:
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.base + path, data=body, headers=self.headers if headers is None else headers) as r:
                text = await r.read()
                return (json.loads(text) if text else None), r.status

    async def send_json(self, body: Any, path: str = "/") -> tuple[Any, int]:
        return await self.send_raw(json.dumps(body).encode(), path)

    async def get(self, path: str) -> tuple[int, str, bytes]:
        async with aiohttp.ClientSession() as s:
            async with s.get(self.base + path) as r:
                return r.status, r.headers.get("Content-Type", ""), await r.read()


class BatchOptions(NamedTuple):
    version: int | None = None
    notification: bool = False
    request_fields: dict | None = None
    response_fields: dict | None = None


def format_request(options: BatchOptions, idx: int, fields: dict) -> dict:
    fields = dict(fields)
    if options.version == 1:
        fields.update(version="1.1")
    elif options.version == 2:
        fields.update(jsonrpc="2.0")
    if options.notification:
        fields.pop("id", None)
    else:
        fields.update(id=idx)
    fields.update(options.request_fields or {})
    return fields


def format_response(options: BatchOptions, idx: int, fields: dict) -> dict | None:
    if options.version == 2 and options.notification:
        return None
    response: dict[str, Any] = {"id": None if options.notification else idx}
    if options.version == 2:
        response["jsonrpc"] = "2.0"
    else:
        response["result"] = None
        response["error"] = None
    response.update(fields)
    response.update(options.response_fields or {})
    return response


async def check_batch(client: Client, call_options) -> None:
    calls = [
        {"method": "getblockcount"},
        {"method": "invalidmethod"},
        {"method": "getblockhash", "params": [0]},
        {"pizza": "sausage"},
    ]
    results = [
        {"result": 0},
        {"error": {"code": RPC_METHOD_NOT_FOUND, "message": "Method not found"}},
        {"result": p.REGTEST_GENESIS_HASH},
        {"error": {"code": RPC_INVALID_REQUEST, "message": "Missing method"}},
    ]
    request, expected = [], []
    for idx, (call, result) in enumerate(zip(calls, results), 1):
        options = call_options(idx)
        if options is None:
            continue
        request.append(format_request(options, idx, call))
        r = format_response(options, idx, result)
        if r is not None:
            expected.append(r)
    response, status = await client.send_json(request)
    if not expected and request:
        assert (status, response) == (204, None)
    else:
        assert status == 200
        # Key order aside, bitcoind's replies: 1.x carries result and error, 2.0 one of them.
        assert response == expected


async def test_batch_requests(node: RegtestNode) -> None:
    client = Client(node)
    await check_batch(client, lambda idx: None)  # empty batch: 200 []
    await check_batch(client, lambda idx: BatchOptions(version=2))
    await check_batch(client, lambda idx: BatchOptions(version=2, notification=idx < 2))
    await check_batch(client, lambda idx: BatchOptions(version=2, notification=True))  # all notifications: 204
    await check_batch(client, lambda idx: BatchOptions(version=1))
    await check_batch(client, lambda idx: BatchOptions(version=2 if idx % 2 else 1))
    await check_batch(client, lambda idx: BatchOptions())
    await check_batch(client, lambda idx: BatchOptions(notification=True))  # 1.x without id: answered, id null
    await check_batch(client, lambda idx: BatchOptions(request_fields={"jsonrpc": "1.0"}))
    await check_batch(
        client,
        lambda idx: BatchOptions(
            request_fields={"jsonrpc": "2.1"},
            response_fields={"result": None, "error": {"code": RPC_INVALID_REQUEST, "message": "JSON-RPC version not supported"}},
        ),
    )


async def expect_http_rpc_status(
    client: Client, http_status: int, rpc_code: int | None, method: str, params: list, version: int = 1, notification: bool = False
) -> None:
    req = format_request(BatchOptions(version, notification), 0, {"method": method, "params": params})
    response, status = await client.send_json(req)
    if rpc_code is not None:
        assert response["error"]["code"] == rpc_code
    assert status == http_status, (status, response)


async def test_http_status_codes(node: RegtestNode) -> None:
    client = Client(node)
    # JSON-RPC 1.1: errors are HTTP errors too.
    await expect_http_rpc_status(client, 200, None, "getblockhash", [0])
    await expect_http_rpc_status(client, 404, RPC_METHOD_NOT_FOUND, "invalidmethod", [])
    await expect_http_rpc_status(client, 500, RPC_INVALID_PARAMETER, "getblockhash", [42])
    for body in (b"", b"this is bad"):
        response, status = await client.send_raw(body)
        assert (response, status) == ({"id": None, "result": None, "error": {"code": RPC_PARSE_ERROR, "message": "Parse error"}}, 500)
    # JSON-RPC 2.0: RPC errors are no HTTP errors, but a malformed request is.
    await expect_http_rpc_status(client, 200, None, "getblockhash", [0], 2, False)
    await expect_http_rpc_status(client, 200, RPC_METHOD_NOT_FOUND, "invalidmethod", [], 2, False)
    await expect_http_rpc_status(client, 200, RPC_INVALID_PARAMETER, "getblockhash", [42], 2, False)
    response, status = await client.send_json({"jsonrpc": 2, "method": "getblockcount"})
    assert (response, status) == ({"id": None, "result": None, "error": {"code": RPC_INVALID_REQUEST, "message": "jsonrpc field must be a string"}}, 400)
    response, status = await client.send_json({"jsonrpc": "3.0", "method": "getblockcount"})
    assert (response, status) == ({"id": None, "result": None, "error": {"code": RPC_INVALID_REQUEST, "message": "JSON-RPC version not supported"}}, 400)
    # Notifications: "id": null is no notification, 1.x never is; a 2.0 one without id runs, unanswered.
    response, status = await client.send_json({"jsonrpc": "2.0", "id": None, "method": "getblockcount"})
    assert (response, status) == ({"jsonrpc": "2.0", "result": 0, "id": None}, 200)
    await expect_http_rpc_status(client, 200, None, "getblockcount", [], 1)
    await expect_http_rpc_status(client, 200, None, "getblockcount", [], 2, False)
    count = (await client.send_json({"method": "getblockcount", "id": 1}))[0]["result"]
    await expect_http_rpc_status(client, 204, None, "generatetoaddress", [1, ADDRESS], 2, True)
    assert (await client.send_json({"method": "getblockcount", "id": 1}))[0]["result"] == count + 1
    await expect_http_rpc_status(client, 204, None, "invalidmethod", [], 2, True)
    await expect_http_rpc_status(client, 204, None, "getblockhash", [42], 2, True)
    # A request without id (1.x) is answered with "id": null.
    response, status = await client.send_json({"method": "getblockcount"})
    assert (response, status) == ({"result": count + 1, "error": None, "id": None}, 200)
    response, status = await client.send_json({"method": "getblockhash", "params": [10**6]})
    assert (response, status) == ({"result": None, "error": {"code": RPC_INVALID_PARAMETER, "message": "Block height out of range"}, "id": None}, 500)
    # Malformed 2.0 requests are -32600 with HTTP 400 and a 2.0 reply.
    response, status = await client.send_json({"jsonrpc": "2.0", "id": 5})
    assert (response, status) == ({"jsonrpc": "2.0", "error": {"code": RPC_INVALID_REQUEST, "message": "Missing method"}, "id": 5}, 400)
    response, status = await client.send_json({"jsonrpc": "2.0", "id": 5, "method": "getblockcount", "params": 3})
    assert (response, status) == ({"jsonrpc": "2.0", "error": {"code": RPC_INVALID_REQUEST, "message": "Params must be an array or object"}, "id": 5}, 400)
    # Batch items that are no objects: "Invalid Request object", in a 200 batch reply.
    response, status = await client.send_json([1, {"method": "getblockcount", "id": 9}])
    assert status == 200 and response == [
        {"result": None, "error": {"code": RPC_INVALID_REQUEST, "message": "Invalid Request object"}, "id": None},
        {"result": count + 1, "error": None, "id": 9},
    ]
    response, status = await client.send_json("just a string")
    assert (response, status) == ({"result": None, "error": {"code": RPC_PARSE_ERROR, "message": "Top-level object parse error"}, "id": None}, 500)


async def test_paths_and_http_methods(node: RegtestNode) -> None:
    client = Client(node)
    body = json.dumps({"method": "getblockcount", "id": 1}).encode()
    assert (await client.send_raw(body, "/wallet/w1"))[1] == 200
    # Wallet RPCs on a wallet path: the wallet does not exist.
    response, status = await client.send_raw(json.dumps({"method": "getbalance", "id": 1}).encode(), "/wallet/w1")
    assert status == 500 and response["error"] == {"code": -18, "message": "Requested wallet does not exist or is not loaded"}
    # "/" matches exactly; other paths have no handler: a bare 404 (auth is not even looked at).
    for path in ("/foo", "/?x=1", "/wallet", "//", "/rest/getutxos/checkmempool.json"):
        async with aiohttp.ClientSession() as s:
            async with s.post(client.base + path, data=body, headers=client.headers) as r:
                assert r.status == 404, path
                if r.status == 404:
                    assert await r.read() == b""
    # GET and other HTTP methods on the JSON-RPC paths: 405 with bitcoind's text.
    for method in ("GET", "PUT", "HEAD", "OPTIONS"):
        async with aiohttp.ClientSession() as s:
            async with s.request(method, client.base + "/", headers=client.headers) as r:
                assert r.status == 405
                if method != "HEAD":
                    assert await r.text() == "JSONRPC server handles only POST requests"
    async with aiohttp.ClientSession() as s:
        async with s.request("DELETE", client.base + "/", headers=client.headers) as r:
            assert r.status == 405 and await r.read() == b""
        # No Authorization header: 401 at once, with the realm.
        async with s.post(client.base + "/", data=body) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="jsonrpc"'


async def test_rest_off_is_404(tmp_path) -> None:
    n = RegtestNode(tmp_path / "plain")
    await n.start()
    try:
        status, _, body = await Client(n).get("/rest/chaininfo.json")
        assert (status, body) == (404, b"")
    finally:
        await n.stop()


async def test_rest_interface(node: RegtestNode) -> None:
    client = Client(node)
    rpc_body = {"method": "generatetoaddress", "params": [3, ADDRESS], "id": 1}
    hashes = (await client.send_json(rpc_body))[0]["result"]
    tip = hashes[-1]

    status, ctype, body = await client.get("/rest/chaininfo.json")
    info = json.loads(body)
    assert (status, ctype) == (200, "application/json") and info["blocks"] == 3 and info["bestblockhash"] == tip
    status, ctype, body = await client.get("/rest/chaininfo.bin")
    assert (status, ctype, body) == (404, "text/plain", b"output format not found (available: json)\r\n")

    # Blocks: bin, hex, json (full transactions with prevouts), notxdetails.
    raw_hex = (await client.send_json({"method": "getblock", "params": [tip, 0], "id": 1}))[0]["result"]
    status, ctype, body = await client.get(f"/rest/block/{tip}.bin")
    assert (status, ctype, body.hex()) == (200, "application/octet-stream", raw_hex)
    status, ctype, body = await client.get(f"/rest/block/{tip}.hex")
    assert (status, ctype, body) == (200, "text/plain", (raw_hex + "\n").encode())
    status, ctype, body = await client.get(f"/rest/block/{tip}.json")
    block = json.loads(body)
    assert ctype == "application/json" and block["hash"] == tip and isinstance(block["tx"][0], dict)
    status, _, body = await client.get(f"/rest/block/notxdetails/{tip}.json")
    assert json.loads(body)["tx"] == [block["tx"][0]["txid"]]
    status, ctype, body = await client.get(f"/rest/block/{tip}")
    assert (status, body) == (404, b"output format not found (available: .bin, .hex, .json)\r\n")
    status, _, body = await client.get("/rest/block/abcd.json")
    assert (status, body) == (400, b"Invalid hash: abcd\r\n")
    missing = "11" * 32
    status, _, body = await client.get(f"/rest/block/{missing}.json")
    assert (status, body) == (404, f"{missing} not found\r\n".encode())

    # Transactions (tx index always on): the coinbase of the tip.
    coinbase = block["tx"][0]["txid"]
    status, ctype, body = await client.get(f"/rest/tx/{coinbase}.json")
    tx = json.loads(body)
    assert status == 200 and tx["txid"] == coinbase and tx["blockhash"] == tip and list(tx)[-2:] == ["blockhash", "hex"]
    status, _, body = await client.get(f"/rest/tx/{coinbase}.hex")
    assert body.decode().strip() == tx["hex"]
    status, _, body = await client.get(f"/rest/tx/{missing}.hex")
    assert (status, body) == (404, f"{missing} not found\r\n".encode())

    # Headers: new form with ?count, the deprecated <count>/<hash> form, bounds.
    first = hashes[0]
    status, _, body = await client.get(f"/rest/headers/{first}.bin?count=2")
    assert status == 200 and len(body) == 160 and p.hash256(body[80:])[::-1].hex() == hashes[1]
    status, _, body = await client.get(f"/rest/headers/{first}.json")
    assert [h["hash"] for h in json.loads(body)] == hashes  # default count 5, stops at the tip
    status, _, body = await client.get(f"/rest/headers/1/{first}.hex")
    assert status == 200 and body == (bytes.fromhex(raw_hex)[:0].hex() + body.decode().strip() + "\n").encode() and len(body.strip()) == 160
    status, _, body = await client.get(f"/rest/headers/{first}.json?count=0")
    assert (status, body) == (400, b"Header count is invalid or out of acceptable range (1-2000): 0\r\n")
    status, _, body = await client.get(f"/rest/headers/{first}.json?count=2001")
    assert status == 400
    status, _, body = await client.get(f"/rest/headers/a/b/{first}.json")
    assert (status, body) == (400, b"Invalid URI format. Expected /rest/headers/<hash>.<ext>?count=<count>\r\n")
    status, _, body = await client.get(f"/rest/headers/{missing}.json")
    assert (status, body) == (200, b"[]\n")

    # Block hash by height.
    status, ctype, body = await client.get("/rest/blockhashbyheight/2.json")
    assert (status, ctype, json.loads(body)) == (200, "application/json", {"blockhash": hashes[1]})
    status, _, body = await client.get("/rest/blockhashbyheight/2.bin")
    assert body[::-1].hex() == hashes[1]
    status, _, body = await client.get("/rest/blockhashbyheight/0.hex")
    assert body == (p.REGTEST_GENESIS_HASH + "\n").encode()
    status, _, body = await client.get("/rest/blockhashbyheight/4.hex")
    assert (status, body) == (404, b"Block height out of range\r\n")
    status, _, body = await client.get("/rest/blockhashbyheight/-1.hex")
    assert (status, body) == (400, b"Invalid height: -1\r\n")
    status, _, body = await client.get("/rest/blockhashbyheight/abc.hex")
    assert (status, body) == (400, b"Invalid height: abc\r\n")

    # Mempool.
    status, _, body = await client.get("/rest/mempool/info.json")
    assert status == 200 and json.loads(body)["size"] == 0
    status, _, body = await client.get("/rest/mempool/contents.json?verbose=false")
    assert (status, json.loads(body)) == (200, [])
    status, _, body = await client.get("/rest/mempool/other.json")
    assert (status, body) == (400, b"Invalid URI format. Expected /rest/mempool/<info|contents>.json\r\n")
