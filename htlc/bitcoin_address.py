"""Bitcoin addresses <-> output scripts for the networks the bridge talks to.

Written here rather than taken from bitcoinlib because bitcoinlib's ``regtest``
network uses mainnet base58 prefixes (``1…``/``3…``), which Bitcoin Core's
regtest rejects; bech32 (BIP173) and bech32m (BIP350) are a few lines anyway.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bridge.errors import InputError


@dataclass(frozen=True)
class NetworkParams:
    name: str
    hrp: str
    p2pkh_prefix: int
    p2sh_prefix: int


NETWORKS: dict[str, NetworkParams] = {
    "regtest": NetworkParams("regtest", "bcrt", 0x6F, 0xC4),
    "testnet": NetworkParams("testnet", "tb", 0x6F, 0xC4),
    "signet": NetworkParams("signet", "tb", 0x6F, 0xC4),
    "mainnet": NetworkParams("mainnet", "bc", 0x00, 0x05),
}


def network_params(network: str) -> NetworkParams:
    try:
        return NETWORKS[network]
    except KeyError:
        raise InputError(f"unknown Bitcoin network {network!r}; expected one of {', '.join(NETWORKS)}", network=network) from None


# --- bech32 / bech32m ----------------------------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3


def _polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out: list[int] = []
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
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        return None
    return out


def segwit_address(witness_version: int, program: bytes, network: str) -> str:
    hrp = network_params(network).hrp
    data = [witness_version] + (_convertbits(program, 8, 5, True) or [])
    const = _BECH32_CONST if witness_version == 0 else _BECH32M_CONST
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def _decode_segwit(address: str, hrp: str) -> tuple[int, bytes] | None:
    if address.lower() != address and address.upper() != address:
        return None
    address = address.lower()
    pos = address.rfind("1")
    if address[:pos] != hrp or pos + 7 > len(address) or len(address) > 90:
        return None
    if any(c not in _CHARSET for c in address[pos + 1:]):
        return None
    data = [_CHARSET.find(c) for c in address[pos + 1:]]
    const = _polymod(_hrp_expand(hrp) + data)
    if const not in (_BECH32_CONST, _BECH32M_CONST) or not data[:-6]:
        return None
    version = data[0]
    program = _convertbits(data[1:-6], 5, 8, False)
    if program is None or version > 16 or not 2 <= len(program) <= 40:
        return None
    if (version == 0) != (const == _BECH32_CONST):
        return None
    if version == 0 and len(program) not in (20, 32):
        return None
    return version, bytes(program)


# --- base58check -----------------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def base58check(prefix: int, payload: bytes) -> str:
    raw = bytes([prefix]) + payload
    raw += _sha256d(raw)[:4]
    n = int.from_bytes(raw, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def _decode_base58check(address: str) -> bytes | None:
    n = 0
    for c in address:
        i = _B58.find(c)
        if i < 0:
            return None
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    raw = b"\0" * (len(address) - len(address.lstrip("1"))) + body
    if len(raw) < 5 or _sha256d(raw[:-4])[:4] != raw[-4:]:
        return None
    return raw[:-4]


# --- scripts <-> addresses ---------------------------------------------------------


def script_pubkey_to_address(script_pubkey: bytes, network: str) -> str:
    """The address of a standard output script; ``InputError`` for anything without one."""
    params = network_params(network)
    spk = script_pubkey
    if len(spk) == 25 and spk[:3] == b"\x76\xa9\x14" and spk[23:] == b"\x88\xac":
        return base58check(params.p2pkh_prefix, spk[3:23])
    if len(spk) == 23 and spk[:2] == b"\xa9\x14" and spk[22] == 0x87:
        return base58check(params.p2sh_prefix, spk[2:22])
    if 4 <= len(spk) <= 42 and spk[1] == len(spk) - 2 and (spk[0] == 0 or 0x51 <= spk[0] <= 0x60):
        version = 0 if spk[0] == 0 else spk[0] - 0x50
        return segwit_address(version, spk[2:], network)
    raise InputError(f"output script {spk.hex()} has no address form", script_pubkey=spk.hex())


def address_to_script_pubkey(address: str, network: str) -> bytes:
    """The output script paying ``address``; ``InputError`` if it is malformed or for another network."""
    params = network_params(network)
    if address.lower().startswith(params.hrp + "1"):
        decoded = _decode_segwit(address, params.hrp)
        if decoded is None:
            raise InputError(f"{address!r} is not a valid {network} segwit address (bad checksum or program)", address=address)
        version, program = decoded
        return bytes([0 if version == 0 else 0x50 + version, len(program)]) + program
    raw = _decode_base58check(address)
    if raw is not None and len(raw) == 21:
        if raw[0] == params.p2pkh_prefix:
            return b"\x76\xa9\x14" + raw[1:] + b"\x88\xac"
        if raw[0] == params.p2sh_prefix:
            return b"\xa9\x14" + raw[1:] + b"\x87"
    raise InputError(f"{address!r} is not a valid {network} address", address=address, network=network)
