"""Control and network RPCs, ``help``, and bitcoind's answers for wallet RPCs with no wallet loaded."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from chains.btc.rpc_errors import (
    RPC_INVALID_PARAMETER,
)
from devnets.regtest.methods import (
    REGISTRY,
    Arg,
    RpcFailure,
    rpc,
)
from devnets.regtest.methods.common import INT64, int_arg

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

VERSION = 280000
SUBVERSION = "/Satoshi:28.0.0(embedded-kernel)/"


@rpc(
    "help",
    "Control",
    "List all commands, or get help for a specified command.",
    [Arg("command", "string", "The command to get help on", None, default_doc="all commands")],
    result='"str"    (string) The help text',
    examples=[""],
)
def help_(node: "RegtestNode", command: str | None) -> str:
    if command:
        method = REGISTRY.get(command)
        if method is None:
            return f"help: unknown command: {command}"
        return method.help_text().rstrip("\n")
    lines: list[str] = []
    for category in sorted({m.category for m in REGISTRY.values()} - {"Hidden"}):
        if lines:
            lines.append("")
        lines.append(f"== {category} ==")
        lines.extend(m.usage() for m in sorted(REGISTRY.values(), key=lambda m: m.name) if m.category == category)
    return "\n".join(lines)


@rpc("stop", "Control", "Request a graceful shutdown of Bitcoin Core.", result="\"str\"    (string) A string with the content 'Bitcoin Core stopping'")
def stop(node: "RegtestNode") -> str:
    node.request_stop()
    return "Bitcoin Core stopping"


@rpc(
    "getrpcinfo",
    "Control",
    "Returns details of the RPC server.",
    result=(
        "{                          (json object)\n"
        '  "active_commands" : [     (json array) All active commands\n'
        "    {                      (json object) Information about an active command\n"
        '      "method" : "str",     (string) The name of the RPC command\n'
        '      "duration" : n       (numeric) The running time in microseconds\n'
        "    },\n"
        "    ...\n"
        "  ],\n"
        '  "logpath" : "str"        (string) The complete file path to the debug log\n'
        "}"
    ),
)
def getrpcinfo(node: "RegtestNode") -> dict:
    now = time.monotonic()
    active = [{"method": name, "duration": int((now - started) * 1_000_000)} for name, started in list(node.active_commands.values())]
    return {"active_commands": active, "logpath": str(node.netdir / "debug.log")}


@rpc("uptime", "Control", "Returns the total uptime of the server.", result="n    (numeric) The number of seconds that the server has been running")
def uptime(node: "RegtestNode") -> int:
    return int(time.time() - node.started_at)


@rpc(
    "setmocktime",
    "Hidden",
    "Set the local time to given timestamp (-regtest only)",
    [Arg("timestamp", "numeric", "UNIX epoch time\nPass 0 to go back to using the system time.")],
    result="null    (json null)",
)
def setmocktime(node: "RegtestNode", timestamp: Any) -> None:
    t = int_arg(timestamp, INT64)
    if t < 0:
        raise RpcFailure(RPC_INVALID_PARAMETER, f"Mocktime cannot be negative: {t}.")
    node.set_mocktime(t)


@rpc(
    "getnetworkinfo",
    "Network",
    "Returns an object containing various state info regarding P2P networking.",
    result='{\n  "version" : n,  (numeric) the server version\n  ...\n}',
)
def getnetworkinfo(node: "RegtestNode") -> dict[str, Any]:
    from devnets.regtest.decode import amount_to_btc

    return {
        "version": VERSION,
        "subversion": SUBVERSION,
        "protocolversion": 70016,
        "localservices": "0000000000000c09",
        "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
        "localrelay": True,
        "timeoffset": 0,
        "networkactive": True,
        "connections": 0,
        "connections_in": 0,
        "connections_out": 0,
        # GetNetworksInfo of a bitcoind 28 with default settings: no proxy, no -onion/-i2psam/
        # -cjdnsreachable, so only IPv4 and IPv6 are reachable.
        "networks": [
            {"name": name, "limited": not reachable, "reachable": reachable, "proxy": "", "proxy_randomize_credentials": False}
            for name, reachable in (("ipv4", True), ("ipv6", True), ("onion", False), ("i2p", False), ("cjdns", False))
        ],
        "relayfee": amount_to_btc(1000),
        "incrementalfee": amount_to_btc(1000),
        "localaddresses": [],
        "warnings": [],
    }


@rpc("getconnectioncount", "Network", "Returns the number of connections to other nodes.", result="n    (numeric) The connection count")
def getconnectioncount(node: "RegtestNode") -> int:
    return 0


@rpc("getpeerinfo", "Network", "Returns data about each connected network peer as a json array of objects.", result="[ ]")
def getpeerinfo(node: "RegtestNode") -> list:
    return []


@rpc("ping", "Network", "Requests that a ping be sent to all other nodes, to measure ping time.", result="null    (json null)")
def ping(node: "RegtestNode") -> None:
    return None


@rpc("listwallets", "Wallet", "Returns a list of currently loaded wallets.", result="[ ]")
def listwallets(node: "RegtestNode") -> list:
    return []
