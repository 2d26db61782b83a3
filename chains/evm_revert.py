"""Reading revert data: ``Error(string)``, ``Panic(uint256)``, and custom errors.

Custom errors are named when the caller passes the contract ABI; otherwise the
4-byte selector and the raw arguments are kept so nothing is lost.
"""

from __future__ import annotations

from typing import Any, Iterable

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import function_signature_to_4byte_selector

ERROR_STRING_SELECTOR = "0x08c379a0"  # Error(string)
PANIC_SELECTOR = "0x4e487b71"  # Panic(uint256)


def _abi_type(param: dict[str, Any]) -> str:
    kind = param["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in param.get("components", [])) + ")" + kind[len("tuple") :]
    return kind


def custom_errors(abi: Iterable[dict[str, Any]]) -> dict[str, tuple[str, list[str]]]:
    """``{selector: (name, [arg types])}`` for the ``error`` entries of an ABI."""
    found: dict[str, tuple[str, list[str]]] = {}
    for item in abi:
        if item.get("type") != "error":
            continue
        types = [_abi_type(p) for p in item.get("inputs", [])]
        selector = "0x" + function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})").hex()
        found[selector] = (item["name"], types)
    return found


def decode_revert(data: str | None, abi: Iterable[dict[str, Any]] = ()) -> tuple[str, tuple[Any, ...]] | None:
    """``(name, args)`` for revert data, or ``None`` when it cannot be read."""
    if not data or len(data) < 10:
        return None
    selector, body = data[:10].lower(), bytes.fromhex(data[10:])
    known = {ERROR_STRING_SELECTOR: ("Error", ["string"]), PANIC_SELECTOR: ("Panic", ["uint256"])}
    known.update(custom_errors(abi))
    if selector not in known:
        return None
    name, types = known[selector]
    try:
        return name, tuple(abi_decode(types, body))
    except (DecodingError, ValueError, OverflowError):
        return None


def describe_revert(data: str | None, abi: Iterable[dict[str, Any]] = ()) -> str:
    """A one-line human reason: ``Error: msg``, ``Panic(0x11)``, ``Name(args)`` or the selector."""
    if not data or data == "0x":
        return "reverted without data"
    decoded = decode_revert(data, abi)
    if decoded is None:
        return f"custom error {data[:10]}" + (f" with {(len(data) - 10) // 2} bytes of arguments" if len(data) > 10 else "")
    name, args = decoded
    if name == "Error":
        return f"Error: {args[0]}"
    if name == "Panic":
        return f"Panic({args[0]:#x})"
    return f"{name}({', '.join(repr(a) for a in args)})"
