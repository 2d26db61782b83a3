"""bitcoind's REST interface (``-rest``, ``src/rest.cpp`` of Core 28): unauthenticated reads under
``/rest/`` in ``.bin``, ``.hex`` or ``.json``, with bitcoind's status codes, content types and
error texts (``text/plain``, ending in CRLF).

Served: ``chaininfo``, ``block`` (and ``block/notxdetails``), ``tx``, ``headers`` (``<hash>?count=N``
and the older ``<count>/<hash>``), ``blockhashbyheight``, ``mempool/info`` and ``mempool/contents``.
Not served (a bare 404, as a bitcoind without that handler): ``getutxos``, ``blockfilter``,
``blockfilterheaders`` and ``deploymentinfo``."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Callable
from urllib.parse import parse_qs

from aiohttp import web

from chains.btc import primitives as p
from devnets.regtest.methods import RpcFailure

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

MAX_REST_HEADERS_RESULTS = 2000
_FORMATS = ("bin", "hex", "json")
_AVAILABLE = ".bin, .hex, .json"
_HASH = re.compile(r"^[0-9a-fA-F]{64}$")

Handler = Callable[["RegtestNode", web.Request, str], web.Response]


def _err(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=(message + "\r\n").encode(), headers={"Content-Type": "text/plain"})


def _ok(fmt: str, data: bytes | str) -> web.Response:
    if fmt == "bin":
        return web.Response(status=200, body=data, headers={"Content-Type": "application/octet-stream"})
    if fmt == "hex":
        return web.Response(status=200, body=(data + "\n").encode(), headers={"Content-Type": "text/plain"})
    return web.Response(status=200, body=(data + "\n").encode(), headers={"Content-Type": "application/json"})


def _json_text(value) -> str:
    from devnets.regtest.rpc import dumps

    return dumps(value)


def parse_data_format(uri_part: str) -> tuple[str, str]:
    """``ParseDataFormat``: drop the query string, then split a known ``.suffix`` off; an unknown or
    missing suffix is format "" with the parameter left whole."""
    param = uri_part[: uri_part.rfind("?")] if "?" in uri_part else uri_part
    dot = param.rfind(".")
    if dot < 0:
        return param, ""
    suffix = param[dot + 1 :]
    if suffix in _FORMATS:
        return param[:dot], suffix
    return param, ""


def _no_format(available: str = _AVAILABLE) -> web.Response:
    return _err(404, f"output format not found (available: {available})")


def _parse_hash(text: str) -> str | None:
    return text.lower() if _HASH.match(text) else None


def _block(node: "RegtestNode", request: web.Request, part: str, verbosity: int) -> web.Response:
    from devnets.regtest.methods.blockchain import getblock

    hash_str, fmt = parse_data_format(part)
    block_hash = _parse_hash(hash_str)
    if block_hash is None:
        return _err(400, f"Invalid hash: {hash_str}")
    found = node.chain.block_raw(block_hash)
    if found is None:
        return _err(404, f"{hash_str} not found")
    raw = found[0]
    if fmt == "bin":
        return _ok(fmt, raw)
    if fmt == "hex":
        return _ok(fmt, raw.hex())
    if fmt == "json":
        return _ok(fmt, _json_text(getblock(node, block_hash, verbosity)))
    return _no_format()


def rest_block(node: "RegtestNode", request: web.Request, part: str) -> web.Response:
    # TxVerbosity::SHOW_DETAILS_AND_PREVOUT: getblock's verbosity 3.
    return _block(node, request, part, 3)


def rest_block_notxdetails(node: "RegtestNode", request: web.Request, part: str) -> web.Response:
    return _block(node, request, part, 1)


def rest_tx(node: "RegtestNode", request: web.Request, part: str) -> web.Response:
    from devnets.regtest.decode import tx_to_json
    from devnets.regtest.methods.common import NETWORK

    hash_str, fmt = parse_data_format(part)
    txid = _parse_hash(hash_str)
    if txid is None:
        return _err(400, f"Invalid hash: {hash_str}")
    tx: p.Tx | None = None
    block_hash: str | None = None
    if txid in node.mempool:
        tx = node.mempool.entries[txid].tx
    else:
        loc = node.chain.store.tx_location(txid)
        if loc is not None:
            block_hash, pos = loc
            height = node.chain.store.height_of(block_hash)
            if height:  # the genesis coinbase is in no index
                tx = p.Block.parse(node.chain.store.raw_at(height)).txs[pos]
    if tx is None:
        return _err(404, f"{hash_str} not found")
    if fmt == "bin":
        return _ok(fmt, tx.serialize())
    if fmt == "hex":
        return _ok(fmt, tx.serialize().hex())
    if fmt == "json":
        return _ok(fmt, _json_text(tx_to_json(tx, NETWORK, include_hex=True, block_hash=block_hash)))
    return _no_format()


def rest_headers(node: "RegtestNode", request: web.Request, part: str) -> web.Response:
    from devnets.regtest.methods.blockchain import header_json

    param, fmt = parse_data_format(part)
    path = param.split("/")
    if len(path) == 2:  # deprecated /rest/headers/<count>/<hash>
        raw_count, hash_str = path
    elif len(path) == 1:
        hash_str = path[0]
        query = request.raw_path.partition("?")[2]
        try:
            values = parse_qs(query, keep_blank_values=True, strict_parsing=False).get("count")
        except ValueError:
            values = None
        raw_count = values[0] if values else "5"
    else:
        return _err(400, "Invalid URI format. Expected /rest/headers/<hash>.<ext>?count=<count>")
    count = int(raw_count) if raw_count.isascii() and raw_count.isdigit() and len(raw_count) < 20 else 0
    if not 1 <= count <= MAX_REST_HEADERS_RESULTS:
        return _err(400, f"Header count is invalid or out of acceptable range (1-{MAX_REST_HEADERS_RESULTS}): {raw_count}")
    block_hash = _parse_hash(hash_str)
    if block_hash is None:
        return _err(400, f"Invalid hash: {hash_str}")
    store = node.chain.store
    height = store.height_of(block_hash)
    heights = [] if height is None else list(range(height, min(height + count, node.chain.height + 1)))
    raws = [store.raw_at(h) for h in heights]
    if fmt == "bin":
        return _ok(fmt, b"".join(r[:80] for r in raws))
    if fmt == "hex":
        return _ok(fmt, b"".join(r[:80] for r in raws).hex())
    if fmt == "json":
        return _ok(fmt, _json_text([header_json(node, p.Block.parse(r), h, True) for r, h in zip(raws, heights)]))
    return _no_format()


def rest_chaininfo(node: "RegtestNode", request: web.Request, part: str) -> web.Response:
    from devnets.regtest.methods.blockchain import getblockchaininfo

    _, fmt = parse_data_format(part)
    if fmt == "json":
        return _ok(fmt, _json_text(getblockchaininfo(node)))
    return _no_format("json")


def rest_mempool(node: "RegtestNode", request: web.Request, part: str) -> web.Response:
    from devnets.regtest.methods.blockchain import getmempoolinfo, getrawmempool

    param, fmt = parse_data_format(part)
    if param not in ("contents", "info"):
        return _err(400, "Invalid URI format. Expected /rest/mempool/<info|contents>.json")
    if fmt != "json":
        return _no_format("json")
    if param == "info":
        return _ok(fmt, _json_text(getmempoolinfo(node)))
    query = parse_qs(request.raw_path.partition("?")[2])
    verbose_text = query.get("verbose", ["true"])[0]
    sequence_text = query.get("mempool_sequence", ["false"])[0]
    if verbose_text not in ("true", "false"):
        return _err(400, 'The "verbose" query parameter must be either "true" or "false".')
    if sequence_text not in ("true", "false"):
        return _err(400, 'The "mempool_sequence" query parameter must be either "true" or "false".')
    verbose, sequence = verbose_text == "true", sequence_text == "true"
    if verbose and sequence:
        return _err(400, 'Verbose results cannot contain mempool sequence values. (hint: set "verbose=false")')
    try:
        return _ok(fmt, _json_text(getrawmempool(node, verbose, sequence)))
    except RpcFailure as failure:
        return _err(400, failure.message)


def rest_blockhash_by_height(node: "RegtestNode", request: web.Request, part: str) -> web.Response:
    height_str, fmt = parse_data_format(part)
    # ParseInt32: optional sign, digits only, within int32.
    height = int(height_str) if re.fullmatch(r"[+-]?[0-9]{1,10}", height_str) else -1
    if not 0 <= height < 2**31:
        printable = "".join(c for c in height_str if c.isascii() and (c.isalnum() or c in " .,;-_/:?@()"))
        return _err(400, f"Invalid height: {printable}")
    if height > node.chain.height:
        return _err(404, "Block height out of range")
    block_hash = node.chain.store.hash_at(height)
    if fmt == "bin":
        return _ok(fmt, bytes.fromhex(block_hash)[::-1])
    if fmt == "hex":
        return _ok(fmt, block_hash)
    if fmt == "json":
        return _ok(fmt, json.dumps({"blockhash": block_hash}, separators=(",", ":")))
    return _no_format()


#: ``uri_prefixes`` in bitcoind's order: the first prefix that matches serves the request.
PREFIXES: list[tuple[str, Handler]] = [
    ("/rest/tx/", rest_tx),
    ("/rest/block/notxdetails/", rest_block_notxdetails),
    ("/rest/block/", rest_block),
    ("/rest/chaininfo", rest_chaininfo),
    ("/rest/mempool/", rest_mempool),
    ("/rest/headers/", rest_headers),
    ("/rest/blockhashbyheight/", rest_blockhash_by_height),
]


def route(uri: str) -> tuple[Handler, str] | None:
    for prefix, handler in PREFIXES:
        if uri.startswith(prefix):
            return handler, uri[len(prefix) :]
    return None
