"""Output script descriptors: Core's checksum, a parser for the forms the node's RPCs take, and
``infer_descriptor`` for the ``desc`` fields bitcoind shows.

Supported: ``addr, raw, pk, pkh, wpkh, sh, wsh, multi, sortedmulti, tr(KEY)`` (key path only),
``rawtr, combo`` with hex public keys (an optional ``[fingerprint/path]`` origin is accepted and
ignored).  Extended keys, private keys, ranges and taproot script trees are refused with a
message that says so.
"""

from __future__ import annotations

from bridge.core.errors import InputError
from chains.btc.address import (
    InvalidAddress,
    Network,
    address_to_script,
    b58check_decode,
    network,
    script_to_address,
)
from chains.btc.primitives import hash160, push_int, sha256, tagged_hash
from chains.btc.script import classify, multisig_params, p2pkh_script, witness_program


class InvalidDescriptor(InputError):
    """A descriptor that does not parse or whose checksum is wrong; ``message`` is Core-like."""


#: Longest descriptor parsed: a raw() of a 10,000-byte script (the consensus script size limit)
#: and a 20-key multisig with origins both fit many times over.  Parsing is linear, but an RPC
#: string can be 32 MB and the node answers nothing else while it parses.
MAX_DESCRIPTOR_CHARS = 100_000
#: Longest key expression decoded: an xprv/xpub with origin and path fits; base58 decoding is
#: quadratic in the length, so a longer "key" is refused before it is decoded.
MAX_KEY_CHARS = 1_000
#: BIP173's limit; base58 addresses are shorter still.
MAX_ADDRESS_CHARS = 90


# --- checksum (Core's DescriptorChecksum) --------------------------------------

_INPUT_CHARSET = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
_INPUT_INDEX = {c: i for i, c in enumerate(_INPUT_CHARSET)}
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_DESC_GEN = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _desc_polymod(symbols: list[int]) -> int:
    chk = 1
    for value in symbols:
        top = chk >> 35
        chk = (chk & 0x7FFFFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _DESC_GEN[i]
    return chk


def descriptor_checksum(desc: str) -> str:
    """The 8-character checksum of ``desc`` (without ``#``); raises on characters outside Core's set."""
    symbols: list[int] = []
    groups: list[int] = []
    for c in desc:
        v = _INPUT_INDEX.get(c)
        if v is None:
            raise InvalidDescriptor("Invalid characters in payload", descriptor=desc)
        symbols.append(v & 31)
        groups.append(v >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    chk = _desc_polymod(symbols + [0] * 8) ^ 1
    return "".join(_CHECKSUM_CHARSET[(chk >> (5 * (7 - i))) & 31] for i in range(8))


def descsum_create(desc: str) -> str:
    return f"{desc}#{descriptor_checksum(desc)}"


def descsum_check(desc: str, require: bool = False) -> str:
    """Verify an optional ``#checksum`` the way Core's ``CheckChecksum`` does; return the bare descriptor."""
    parts = desc.split("#")
    if len(parts) > 2:
        raise InvalidDescriptor("Multiple '#' symbols", descriptor=desc)
    if len(parts) == 1 and require:
        raise InvalidDescriptor("Missing checksum", descriptor=desc)
    if len(parts) == 2 and len(parts[1]) != 8:
        raise InvalidDescriptor(f"Expected 8 character checksum, not {len(parts[1])} characters", descriptor=desc)
    computed = descriptor_checksum(parts[0])
    if len(parts) == 2 and parts[1] != computed:
        raise InvalidDescriptor(f"Provided checksum '{parts[1]}' does not match computed checksum '{computed}'", descriptor=desc)
    return parts[0]


# --- secp256k1 (only what key validation and the taproot tweak need) -------------

_P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_G = (0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798, 0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8)
Point = tuple[int, int] | None


def _point_add(a: Point, b: Point) -> Point:
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % _P == 0:
        return None
    if a == b:
        lam = 3 * a[0] * a[0] * pow(2 * a[1], -1, _P) % _P
    else:
        lam = (b[1] - a[1]) * pow(b[0] - a[0], -1, _P) % _P
    x = (lam * lam - a[0] - b[0]) % _P
    return x, (lam * (a[0] - x) - a[1]) % _P


def _point_mul(k: int, point: Point) -> Point:
    result: Point = None
    addend = point
    while k:
        if k & 1:
            result = _point_add(result, addend)
        addend = _point_add(addend, addend)
        k >>= 1
    return result


def _lift_x(x: int) -> Point:
    """The point with x-coordinate ``x`` and even y (BIP340), or ``None``."""
    if x >= _P:
        return None
    c = (pow(x, 3, _P) + 7) % _P
    y = pow(c, (_P + 1) // 4, _P)
    if y * y % _P != c:
        return None
    return x, y if y % 2 == 0 else _P - y


def pubkey_point(key: bytes) -> Point:
    """Decode a compressed, uncompressed or hybrid SEC key; ``None`` unless it is on the curve."""
    if len(key) == 33 and key[0] in (2, 3):
        point = _lift_x(int.from_bytes(key[1:], "big"))
        if point is None:
            return None
        return point if (point[1] & 1) == (key[0] & 1) else (point[0], _P - point[1])
    if len(key) == 65 and key[0] in (4, 6, 7):
        x, y = int.from_bytes(key[1:33], "big"), int.from_bytes(key[33:], "big")
        if x >= _P or y >= _P or (y * y - x * x * x - 7) % _P:
            return None
        if key[0] in (6, 7) and (y & 1) != (key[0] & 1):
            return None
        return x, y
    return None


def taproot_output_key(internal_xonly: bytes, merkle_root: bytes = b"") -> bytes:
    """BIP341 output key (x-only) for an internal key and an optional script-tree root."""
    point = _lift_x(int.from_bytes(internal_xonly, "big"))
    if point is None:
        raise InvalidDescriptor(f"Pubkey '{internal_xonly.hex()}' is invalid")
    tweak = int.from_bytes(tagged_hash("TapTweak", internal_xonly + merkle_root), "big")
    if tweak >= _N:
        raise InvalidDescriptor("taproot tweak out of range")
    q = _point_add(point, _point_mul(tweak, _G))
    assert q is not None  # the tweak is a hash, so P + tG is never infinity in practice
    return q[0].to_bytes(32, "big")


# --- parsing -----------------------------------------------------------------------


def _split_args(body: str) -> list[str]:
    """Split a function's argument list on top-level commas."""
    args, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(body[start:i])
            start = i + 1
    args.append(body[start:])
    return args


def _call(expr: str) -> tuple[str, str] | None:
    """``name(body)`` -> ``(name, body)`` when the whole expression is one call."""
    open_at = expr.find("(")
    if open_at <= 0 or not expr.endswith(")"):
        return None
    depth = 0
    for i, c in enumerate(expr):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0 and i != len(expr) - 1:
                return None
    return expr[:open_at], expr[open_at + 1 : -1]


def _is_hex(text: str) -> bool:
    return len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text)


def _parse_key(expr: str, ctx: str) -> bytes:
    """A key expression -> serialized public key (33/65 bytes, or 32 x-only bytes only inside tr)."""
    origin_split = expr.split("]")
    if len(origin_split) > 2:
        raise InvalidDescriptor("Multiple ']' characters found for a single pubkey")
    if len(origin_split) == 2:
        origin, expr = origin_split
        if not origin.startswith("["):
            raise InvalidDescriptor(f"Key origin start '[ character expected but not found, got '{origin[0] if origin else ']'}' instead")
        fingerprint = origin[1:].split("/")[0]
        if len(fingerprint) != 8:
            raise InvalidDescriptor(f"Fingerprint is not 4 bytes ({len(fingerprint)} characters instead of 8 characters)")
        if not _is_hex(fingerprint):
            raise InvalidDescriptor(f"Fingerprint '{fingerprint}' is not hex")
    if len(expr) > MAX_KEY_CHARS:
        raise InvalidDescriptor(f"key of {len(expr)} characters is not valid")
    if not _is_hex(expr):
        if "/" in expr or "*" in expr or b58check_decode(expr, 82) is not None:
            raise InvalidDescriptor(
                f"key '{expr}' is not supported by the embedded regtest node: extended keys, "
                "derivation paths and private keys are not implemented (use hex public keys)"
            )
        raise InvalidDescriptor(f"key '{expr}' is not valid")
    key = bytes.fromhex(expr)
    if len(key) == 32 and ctx in ("tr", "rawtr"):
        if _lift_x(int.from_bytes(key, "big")) is None:
            raise InvalidDescriptor(f"Pubkey '{expr}' is invalid")
        return key
    if pubkey_point(key) is None:
        raise InvalidDescriptor(f"Pubkey '{expr}' is invalid")
    if key[0] in (6, 7):
        raise InvalidDescriptor("Hybrid public keys are not allowed")
    if len(key) == 65 and ctx in ("wpkh", "wsh", "tr", "rawtr"):
        raise InvalidDescriptor("Uncompressed keys are not allowed")
    return key


def _multi_script(k: int, keys: list[bytes]) -> bytes:
    return push_int(k) + b"".join(bytes((len(key),)) + key for key in keys) + push_int(len(keys)) + b"\xae"


def _parse_multi(name: str, body: str, ctx: str) -> bytes:
    args = _split_args(body)
    try:
        k = int(args[0])
    except ValueError:
        raise InvalidDescriptor(f"Multi threshold '{args[0]}' is not valid") from None
    keys = [_parse_key(a, ctx) for a in args[1:]]
    if not keys or len(keys) > 20:
        raise InvalidDescriptor(f"Cannot have {len(keys)} keys in multisig; must have between 1 and 20 keys, inclusive")
    if k < 1:
        raise InvalidDescriptor(f"Multisig threshold cannot be {k}, must be at least 1")
    if k > len(keys):
        raise InvalidDescriptor(f"Multisig threshold cannot be larger than the number of keys; threshold is {k} but only {len(keys)} keys specified")
    if ctx == "top" and len(keys) > 3:
        raise InvalidDescriptor(f"Cannot have {len(keys)} pubkeys in bare multisig; only at most 3 pubkeys")
    if name == "sortedmulti":
        keys.sort()
    script = _multi_script(k, keys)
    if ctx == "sh" and len(script) > 520:
        raise InvalidDescriptor(f"P2SH script is too large, {len(script)} bytes is larger than 520 bytes")
    if ctx == "wsh" and len(script) > 3600:
        raise InvalidDescriptor(f"P2WSH script is too large, {len(script)} bytes is larger than 3600 bytes")
    return script


def _p2sh(script: bytes) -> bytes:
    return b"\xa9\x14" + hash160(script) + b"\x87"


def _p2wsh(script: bytes) -> bytes:
    return b"\x00\x20" + sha256(script)


def _p2wpkh(key: bytes) -> bytes:
    return b"\x00\x14" + hash160(key)


def _p2pkh(key: bytes) -> bytes:
    return p2pkh_script(hash160(key))


def _p2pk(key: bytes) -> bytes:
    return bytes((len(key),)) + key + b"\xac"


def _parse(expr: str, ctx: str, net: Network) -> list[bytes]:
    call = _call(expr)
    if call is None:
        raise InvalidDescriptor(f"'{expr}' is not a valid descriptor function")
    name, body = call
    if name == "addr":
        if ctx != "top":
            raise InvalidDescriptor("Can only have addr() at top level")
        try:
            if len(body) > MAX_ADDRESS_CHARS:
                raise InvalidAddress("too long", address=body[:MAX_ADDRESS_CHARS])
            return [address_to_script(body, net)]
        except InvalidAddress:
            raise InvalidDescriptor("Address is not valid") from None
    if name == "raw":
        if ctx != "top":
            raise InvalidDescriptor("Can only have raw() at top level")
        if not _is_hex(body):
            raise InvalidDescriptor("Raw script is not hex")
        return [bytes.fromhex(body)]
    if name == "pk":
        return [_p2pk(_parse_key(body, ctx))]
    if name == "pkh":
        return [_p2pkh(_parse_key(body, ctx))]
    if name == "wpkh":
        if ctx not in ("top", "sh"):
            raise InvalidDescriptor("Can only have wpkh() at top level or inside sh()")
        return [_p2wpkh(_parse_key(body, "wpkh"))]
    if name in ("multi", "sortedmulti"):
        return [_parse_multi(name, body, ctx)]
    if name == "combo":
        if ctx != "top":
            raise InvalidDescriptor("Can only have combo() at top level")
        key = _parse_key(body, ctx)
        scripts = [_p2pk(key), _p2pkh(key)]
        if len(key) == 33:
            scripts += [_p2wpkh(key), _p2sh(_p2wpkh(key))]
        return scripts
    if name == "sh":
        if ctx != "top":
            raise InvalidDescriptor("Can only have sh() at top level")
        inner = _parse(body, "sh", net)[0]
        if len(inner) > 520:
            raise InvalidDescriptor(f"P2SH script is too large, {len(inner)} bytes is larger than 520 bytes")
        return [_p2sh(inner)]
    if name == "wsh":
        if ctx not in ("top", "sh"):
            raise InvalidDescriptor("Can only have wsh() at top level or inside sh()")
        inner = _parse(body, "wsh", net)[0]
        return [_p2wsh(inner)]
    if name in ("tr", "rawtr"):
        if ctx != "top":
            raise InvalidDescriptor(f"Can only have {name}() at top level")
        if "," in body or "{" in body:
            raise InvalidDescriptor("tr() with script paths is not supported by the embedded regtest node (key-path tr(KEY) only)")
        key = _parse_key(body, name)
        xonly = key[1:33] if len(key) == 33 else key
        return [b"\x51\x20" + (taproot_output_key(xonly) if name == "tr" else xonly)]
    raise InvalidDescriptor(f"'{name}(' is not a valid descriptor function" if name else f"'{expr}' is not a valid descriptor function")


def parse_descriptor(desc: str, net: str | Network = "regtest") -> list[bytes]:
    """The output scripts a descriptor stands for (several only for ``combo``).  A ``#checksum``
    is optional and verified when present; errors raise ``InvalidDescriptor``."""
    if not isinstance(desc, str):
        raise InvalidDescriptor("Descriptor must be a string")
    if len(desc) > MAX_DESCRIPTOR_CHARS:
        raise InvalidDescriptor(f"Descriptor of {len(desc)} characters is longer than the embedded regtest node parses ({MAX_DESCRIPTOR_CHARS})")
    bare = descsum_check(desc)
    return _parse(bare, "top", network(net))


# --- inference (Core's InferDescriptor without a signing provider) --------------------


def _infer_key(key: bytes) -> str | None:
    """Core's ``InferPubkey`` accepts any well-sized, non-hybrid key."""
    return key.hex() if key and key[0] in (2, 3, 4) else None


def infer_descriptor(script: bytes, net: str | Network = "regtest") -> str:
    """What bitcoind prints as ``desc`` for an output script (``decodescript``, ``scriptPubKey.desc``)."""
    kind = classify(script)
    inner: str | None = None
    if kind == "pubkey":
        key = _infer_key(script[1:-1])
        inner = f"pk({key})" if key else None
    elif kind == "multisig":
        required, keys = multisig_params(script)  # type: ignore[misc]
        hex_keys = [_infer_key(k) for k in keys]
        if all(hex_keys):
            inner = f"multi({required},{','.join(hex_keys)})"  # type: ignore[arg-type]
    elif kind == "witness_v1_taproot":
        wp = witness_program(script)
        if wp is not None and _lift_x(int.from_bytes(wp[1], "big")) is not None:
            inner = f"rawtr({wp[1].hex()})"
    if inner is None:
        address = script_to_address(script, net)
        inner = f"addr({address})" if address else f"raw({script.hex()})"
    return descsum_create(inner)
