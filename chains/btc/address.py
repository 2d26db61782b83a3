"""Addresses: base58check, bech32/bech32m (BIP173/BIP350), and Core's address <-> script rules.

``decode_destination`` follows Bitcoin Core's ``DecodeDestination`` step by step so
that a bad address gets the same error text (and error positions) bitcoind's
``validateaddress`` shows.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from bridge.core.errors import InputError
from chains.btc.primitives import sha256
from chains.btc.script import is_p2pkh, is_p2sh, p2pkh_script, witness_program


class InvalidAddress(InputError):
    """An address that does not decode for the network; ``message`` is bitcoind's reason."""

    def __init__(self, message: str, address: str = "", error_locations: list[int] | None = None) -> None:
        super().__init__(message, address=address, error_locations=list(error_locations or []))
        self.error_locations = list(error_locations or [])


class Network(NamedTuple):
    name: str
    hrp: str
    p2pkh: int
    p2sh: int


NETWORKS: dict[str, Network] = {
    "regtest": Network("regtest", "bcrt", 0x6F, 0xC4),
    "testnet": Network("testnet", "tb", 0x6F, 0xC4),
    "testnet4": Network("testnet4", "tb", 0x6F, 0xC4),
    "signet": Network("signet", "tb", 0x6F, 0xC4),
    "mainnet": Network("mainnet", "bc", 0x00, 0x05),
}
NETWORKS["main"] = NETWORKS["mainnet"]  # bitcoind's chain names
NETWORKS["test"] = NETWORKS["testnet"]


def network(name: str | Network) -> Network:
    if isinstance(name, Network):
        return name
    try:
        return NETWORKS[name]
    except KeyError:
        raise InputError(f"unknown network {name!r}", choices=sorted(NETWORKS)) from None


# --- base58 -------------------------------------------------------------------

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(B58_ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str, max_len: int) -> bytes | None:
    """Core's ``DecodeBase58``: surrounding whitespace allowed, ``None`` on a bad character or overlength."""
    text = text.strip(" \t\n\v\f\r")
    zeros = len(text) - len(text.lstrip("1"))
    n = 0
    for c in text:
        digit = _B58_INDEX.get(c)
        if digit is None:
            return None
        n = n * 58 + digit
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    out = b"\0" * zeros + body
    return out if len(out) <= max_len else None


def b58check_encode(payload: bytes) -> str:
    return b58encode(payload + sha256(sha256(payload))[:4])


def b58check_decode(text: str, max_len: int) -> bytes | None:
    raw = b58decode(text, max_len + 4)
    if raw is None or len(raw) < 4 or sha256(sha256(raw[:-4]))[:4] != raw[-4:]:
        return None
    return raw[:-4]


# --- bech32 / bech32m -----------------------------------------------------------

BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(BECH32_CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
BECH32_MAX_LEN = 90


class Encoding(Enum):
    BECH32 = 1
    BECH32M = 0x2BC830A3


def _polymod(values: list[int], chk: int = 1) -> int:
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_encode(hrp: str, data: list[int], encoding: Encoding) -> str:
    values = _hrp_expand(hrp) + data
    residue = _polymod(values + [0] * 6) ^ encoding.value
    checksum = [(residue >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32_CHARSET[d] for d in data + checksum)


def _check_characters(text: str) -> list[int]:
    """Positions Core's ``CheckCharacters`` objects to: non-printable, or the minority case."""
    errors = []
    lower = upper = False
    for i, c in enumerate(text):
        if "a" <= c <= "z":
            if upper:
                errors.append(i)
            else:
                lower = True
        elif "A" <= c <= "Z":
            if lower:
                errors.append(i)
            else:
                upper = True
        elif not 33 <= ord(c) <= 126:
            errors.append(i)
    return errors


def bech32_decode(text: str) -> tuple[Encoding, str, list[int]] | None:
    """``(encoding, hrp, data without checksum)``, or ``None`` when it is not valid bech32/bech32m."""
    if len(text) > BECH32_MAX_LEN or _check_characters(text):
        return None
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 6 >= len(text):
        return None
    try:
        data = [_CHARSET_REV[c] for c in text[pos + 1 :]]
    except KeyError:
        return None
    hrp = text[:pos]
    residue = _polymod(_hrp_expand(hrp) + data)
    for encoding in Encoding:
        if residue == encoding.value:
            return encoding, hrp, data[:-6]
    return None


def _error_syndromes(length: int) -> dict[int, tuple[int, int]]:
    """For every single-symbol error (position from the end, value), the residue change it causes;
    the checksum is linear over GF(2), so errors combine by XOR."""
    table: dict[int, tuple[int, int]] = {}
    for e in range(1, 32):
        chk = e
        for k in range(length):
            table.setdefault(chk, (k, e))
            chk = _polymod([0], chk)
    return table


def locate_errors(text: str) -> tuple[str, list[int]]:
    """Core's ``bech32::LocateErrors``: the reason a string is not valid bech32, with up to two
    positions of likely mistyped characters."""
    if len(text) > BECH32_MAX_LEN:
        return "Bech32 string too long", list(range(BECH32_MAX_LEN, len(text)))
    bad = _check_characters(text)
    if bad:
        return "Invalid character or mixed case", bad
    pos = text.rfind("1")
    if pos == -1:
        return "Missing separator", []
    if pos == 0 or pos + 6 >= len(text):
        return "Invalid separator position", [pos]
    lowered = text.lower()
    data = []
    for i in range(pos + 1, len(text)):
        value = _CHARSET_REV.get(lowered[i])
        if value is None:
            return "Invalid Base 32 character", [i]
        data.append(value)
    length = len(data)
    syndromes = _error_syndromes(length)
    residue = _polymod(_hrp_expand(lowered[:pos]) + data)
    best: list[int] = []
    best_encoding: Encoding | None = None
    for encoding in Encoding:
        diff = residue ^ encoding.value
        found: list[int] = []
        if diff in syndromes:
            found = [syndromes[diff][0]]
        else:
            for syndrome, (k1, _) in syndromes.items():
                other = syndromes.get(diff ^ syndrome)
                if other is not None and other[0] != k1:
                    found = [k1, other[0]]
                    break
        if found and (not best or len(found) < len(best)):
            best, best_encoding = found, encoding
    locations = sorted(pos + length - k for k in best)
    if best_encoding is Encoding.BECH32M:
        return "Invalid Bech32m checksum", locations
    if best_encoding is Encoding.BECH32:
        return "Invalid Bech32 checksum", locations
    return "Invalid checksum", []


def convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or (acc << (tobits - bits)) & maxv:
        return None
    return out


def encode_segwit_address(hrp: str, version: int, program: bytes) -> str:
    encoding = Encoding.BECH32 if version == 0 else Encoding.BECH32M
    return bech32_encode(hrp, [version] + convertbits(program, 8, 5, True), encoding)  # type: ignore[operator]


# --- scripts <-> addresses --------------------------------------------------------


def script_to_address(script: bytes, net: str | Network = "regtest") -> str | None:
    """The address bitcoind shows for an output script, or ``None`` (P2PK, multisig, OP_RETURN, ...)."""
    params = network(net)
    if is_p2pkh(script):
        return b58check_encode(bytes((params.p2pkh,)) + script[3:23])
    if is_p2sh(script):
        return b58check_encode(bytes((params.p2sh,)) + script[2:22])
    wp = witness_program(script)
    if wp is None:
        return None
    version, program = wp
    if version == 0 and len(program) not in (20, 32):
        return None
    return encode_segwit_address(params.hrp, version, program)


def _witness_script(version: int, program: bytes) -> bytes:
    return bytes((0x50 + version if version else 0, len(program))) + program


def decode_destination(address: str, net: str | Network = "regtest") -> tuple[bytes | None, str, list[int]]:
    """Core's ``DecodeDestination``: ``(script, "", [])`` or ``(None, error, error_locations)``."""
    params = network(net)
    is_bech32 = address[: len(params.hrp)].lower() == params.hrp
    if not is_bech32:
        payload = b58check_decode(address, 21)
        if payload is not None:
            if len(payload) == 21 and payload[0] == params.p2pkh:
                return p2pkh_script(payload[1:]), "", []
            if len(payload) == 21 and payload[0] == params.p2sh:
                return b"\xa9\x14" + payload[1:] + b"\x87", "", []
            if payload[:1] in (bytes((params.p2pkh,)), bytes((params.p2sh,))):
                return None, "Invalid length for Base58 address (P2PKH or P2SH)", []
            return None, "Invalid or unsupported Base58-encoded address.", []
        if b58decode(address, 100) is None:
            return None, "Invalid or unsupported Segwit (Bech32) or Base58 encoding.", []
        return None, "Invalid checksum or length of Base58 address (P2PKH or P2SH)", []
    decoded = bech32_decode(address)
    if decoded is None:
        error, locations = locate_errors(address)
        return None, error, locations
    encoding, hrp, data = decoded
    if not data:
        return None, "Empty Bech32 data section", []
    if hrp != params.hrp:
        return None, (f"Invalid or unsupported prefix for Segwit (Bech32) address (expected {params.hrp}, got {hrp})."), []
    version = data[0]
    if version == 0 and encoding is not Encoding.BECH32:
        return None, "Version 0 witness address must use Bech32 checksum", []
    if version != 0 and encoding is not Encoding.BECH32M:
        return None, "Version 1+ witness address must use Bech32m checksum", []
    program = convertbits(data[1:], 5, 8, False)
    if program is None:
        return None, "Invalid padding in Bech32 data section", []
    prog = bytes(program)
    unit = "byte" if len(prog) == 1 else "bytes"
    if version == 0:
        if len(prog) in (20, 32):
            return _witness_script(0, prog), "", []
        return None, f"Invalid Bech32 v0 address program size ({len(prog)} {unit}), per BIP141", []
    if version == 1 and len(prog) == 32:
        return _witness_script(1, prog), "", []
    if version > 16:
        return None, "Invalid Bech32 address witness version", []
    if not 2 <= len(prog) <= 40:
        return None, f"Invalid Bech32 address program size ({len(prog)} {unit})", []
    return _witness_script(version, prog), "", []


def address_to_script(address: str, net: str | Network = "regtest") -> bytes:
    """The output script an address pays to; raises ``InvalidAddress`` with bitcoind's reason."""
    if not isinstance(address, str):
        raise InvalidAddress("Invalid address", address=repr(address))
    script, error, locations = decode_destination(address, net)
    if script is None:
        raise InvalidAddress(error, address=address, error_locations=locations)
    return script


def is_valid_address(address: str, net: str | Network = "regtest") -> bool:
    return decode_destination(address, net)[0] is not None
