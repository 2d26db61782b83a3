"""The RPC method table: each method declares its arguments like bitcoind's ``RPCHelpMan`` so
argument binding, type errors and ``help`` texts come out the way bitcoind writes them."""

from __future__ import annotations

import contextvars
import inspect
import time
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable

from chains.btc.rpc_errors import RPC_INVALID_PARAMETER, RPC_MISC_ERROR, RPC_TYPE_ERROR

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode


class RpcFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# JSON type names as UniValue spells them in type errors.
def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# Accepted JSON types per RPCArg type (RPCArg::MatchesType).
_ACCEPTS = {
    "numeric": ("number",),
    "string": ("string",),
    "hex": ("string",),
    "boolean": ("bool",),
    "json object": ("object",),
    "json array": ("array",),
    "amount": ("number", "string"),
    "range": ("number", "array"),
    "string or numeric": ("number", "string"),
    "any": ("null", "bool", "number", "string", "array", "object"),
}
_EXPECTED_NAME = {
    "numeric": "number",
    "string": "string",
    "hex": "string",
    "boolean": "bool",
    "json object": "object",
    "json array": "array",
    "amount": "number",
    "range": "number",
    "string or numeric": "number",
}


@dataclass
class Arg:
    name: str
    type: str  # a key of _ACCEPTS; also shown in help
    doc: str
    default: Any = inspect.Parameter.empty  # empty: required
    default_doc: str | None = None
    shown_type: str | None = None  # what help prints when the check is looser than the documented type

    @property
    def optional(self) -> bool:
        return self.default is not inspect.Parameter.empty


@dataclass
class Method:
    name: str
    category: str
    description: str
    args: list[Arg]
    result: str
    examples: list[str]
    fn: Callable[..., Any]
    aliases: list[str] = field(default_factory=list)

    def usage(self) -> str:
        parts = []
        opened = 0
        for arg in self.args:
            shown = f'"{arg.name}"' if arg.type in ("string", "hex") else arg.name
            if arg.optional:
                parts.append(f"( {shown}")
                opened += 1
            else:
                parts.append(shown)
        line = " ".join([self.name, *parts]) + (" )" * opened)
        return line

    def help_text(self) -> str:
        out = [self.usage(), "", self.description.strip(), ""]
        if self.args:
            out.append("Arguments:")
            for i, arg in enumerate(self.args, 1):
                if arg.optional:
                    need = f"optional, default={arg.default_doc if arg.default_doc is not None else json.dumps(arg.default)}"
                else:
                    need = "required"
                out.append(f"{i}. {arg.name:<21} ({arg.shown_type or arg.type}, {need}) {arg.doc}")
            out.append("")
        out.append("Result:")
        out.append(self.result.strip())
        out.append("")
        out.append("Examples:")
        for ex in self.examples:
            out.append(f"> bitcoin-cli {self.name} {ex}".rstrip())
        out.append(
            f'> curl --user myusername --data-binary \'{{"jsonrpc": "2.0", "id": "curltest", "method": "{self.name}", "params": []}}\' '
            "-H 'content-type: application/json' http://127.0.0.1:18443/"
        )
        return "\n".join(out) + "\n"


REGISTRY: dict[str, Method] = {}

#: The URI of the JSON-RPC request being served (``/`` or ``/wallet/<name>``): wallet RPCs read the
#: wallet name from it as bitcoind's ``GetWalletNameFromJSONRPCRequest`` does.
REQUEST_URI: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_URI", default="/")


def rpc(name: str, category: str, description: str, args: list[Arg] | None = None, result: str = "", examples: list[str] | None = None):
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY[name] = Method(name, category, description, args or [], result, examples or [""], fn)
        return fn

    return wrap


def _bind(method: Method, params: list | dict) -> list[Any]:
    if isinstance(params, dict):
        positional: list[Any] = []
        names = [a.name for a in method.args]
        extra = dict(params)
        if "args" in extra and isinstance(extra["args"], list):
            positional = list(extra.pop("args"))
        for key in extra:
            if key not in names:
                raise RpcFailure(RPC_INVALID_PARAMETER, f"Unknown named parameter {key}")
        values = positional + [None] * (len(names) - len(positional))
        for key, value in extra.items():
            idx = names.index(key)
            if idx < len(positional):
                raise RpcFailure(RPC_INVALID_PARAMETER, f"Parameter {key} specified twice both as positional and named argument")
            values[idx] = value
        while values and values[-1] is None:
            values.pop()
        params = values
    required = sum(1 for a in method.args if not a.optional)
    if len(params) < required or len(params) > len(method.args):
        raise RpcFailure(RPC_MISC_ERROR, method.help_text())
    mismatches = []
    for i, arg in enumerate(method.args[: len(params)]):
        value = params[i]
        if value is None and arg.optional:
            continue
        got = json_type(value)
        if got not in _ACCEPTS[arg.type]:
            mismatches.append(f'    "Position {i + 1} ({arg.name})": "JSON value of type {got} is not of expected type {_EXPECTED_NAME[arg.type]}"')
    if mismatches:
        raise RpcFailure(RPC_TYPE_ERROR, "Wrong type passed:\n{\n" + ",\n".join(mismatches) + "\n}")
    values = []
    for i, arg in enumerate(method.args):
        value = params[i] if i < len(params) else None
        values.append(arg.default if value is None and arg.optional else value)
    return values


async def call_method(node: "RegtestNode", name: str, params: list | dict) -> Any:
    method = REGISTRY[name]
    values = _bind(method, params)
    token = object()
    node.active_commands[token] = (name, time.monotonic())
    try:
        result = method.fn(node, *values)
        if inspect.isawaitable(result):
            result = await result
        return result
    finally:
        node.active_commands.pop(token, None)


# Each method module registers its methods on import.
from devnets.regtest.methods import blockchain, control, mining, rawtransactions, rawtx_build, util, wallet  # noqa: E402,F401
from devnets.regtest.methods import chainstats, mempool_pkg, template, txoutproof  # noqa: E402,F401
from devnets.regtest.methods import psbt  # noqa: E402,F401
