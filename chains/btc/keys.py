"""Private keys the way Bitcoin Core handles them: WIF (``EncodeSecret``/``DecodeSecret``) for every
chain name of Core's key_io vectors, ECDSA signatures as ``CKey::Sign`` makes them (RFC6979 nonces,
low S, ground to a low R, so they equal bitcoind's byte for byte), and BIP137-style message
signatures (``MessageSign``/``MessageVerify``).  libsecp256k1 through coincurve."""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

from coincurve import PrivateKey, PublicKey
from coincurve._libsecp256k1 import ffi

from bridge.core.errors import InputError
from chains.btc.address import Network, b58check_decode, b58check_encode, network
from chains.btc.primitives import hash160, hash256, ser_compact_size

_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
MESSAGE_MAGIC = b"Bitcoin Signed Message:\n"


class InvalidKey(InputError):
    """Not a private key for the network."""


class Secret(NamedTuple):
    secret: bytes  # 32 bytes, 0 < k < n
    compressed: bool

    @property
    def pubkey(self) -> bytes:
        return PrivateKey(self.secret).public_key.format(compressed=self.compressed)


def wif_prefix(net: str | Network) -> int:
    """``SECRET_KEY`` base58 prefix: 128 on main, 239 on test, testnet4, signet and regtest."""
    return 0x80 if network(net).hrp == "bc" else 0xEF


def encode_wif(secret: bytes, compressed: bool = True, net: str | Network = "regtest") -> str:
    return b58check_encode(bytes((wif_prefix(net),)) + secret + (b"\x01" if compressed else b""))


def decode_wif(text: str, net: str | Network = "regtest") -> Secret:
    """``DecodeSecret``: base58check of prefix + 32 bytes (+ 0x01 for a compressed key), in range."""
    data = b58check_decode(text, 34) if len(text) <= 60 else None
    if data is None or not data or data[0] != wif_prefix(net):
        raise InvalidKey("Invalid private key")
    body = data[1:]
    if len(body) == 33 and body[32] == 1:
        secret, compressed = body[:32], True
    elif len(body) == 32:
        secret, compressed = body, False
    else:
        raise InvalidKey("Invalid private key")
    if not 0 < int.from_bytes(secret, "big") < _ORDER:
        raise InvalidKey("Invalid private key")
    return Secret(secret, compressed)


def is_valid_pubkey(data: bytes) -> bool:
    """``CPubKey::IsFullyValid``: a point on the curve, compressed or not (hybrid keys parse too)."""
    if len(data) not in (33, 65):
        return False
    try:
        PublicKey(data)
    except (ValueError, TypeError):
        return False
    return True


def _der_r(der: bytes) -> int:
    rlen = der[3]
    return int.from_bytes(der[4 : 4 + rlen], "big")


def sign_ecdsa(secret: bytes, digest: bytes) -> bytes:
    """``CKey::Sign(hash, sig, grind=true)``: DER, low S, the first RFC6979 nonce (extra entropy = a
    little-endian counter) whose R has its top bit clear."""
    key = PrivateKey(secret)
    der = key.sign(digest, hasher=None)
    counter = 0
    while _der_r(der) >= 1 << 255:
        counter += 1
        extra = ffi.new("unsigned char[32]", counter.to_bytes(4, "little") + bytes(28))
        der = key.sign(digest, hasher=None, custom_nonce=(ffi.NULL, extra))
    return der


def message_hash(message: str | bytes) -> bytes:
    data = message.encode() if isinstance(message, str) else message
    return hash256(ser_compact_size(len(MESSAGE_MAGIC)) + MESSAGE_MAGIC + ser_compact_size(len(data)) + data)


def sign_message(key: Secret, message: str | bytes) -> str:
    """``MessageSign``: base64 of the 65-byte compact recoverable signature (header 27 + recid, +4
    for a compressed key)."""
    sig = PrivateKey(key.secret).sign_recoverable(message_hash(message), hasher=None)
    header = 27 + sig[64] + (4 if key.compressed else 0)
    return base64.b64encode(bytes((header,)) + sig[:64]).decode()


class MalformedSignature(InputError):
    """Not base64."""


def recover_message_pubkey(signature_b64: str, message: str | bytes) -> bytes | None:
    """The public key (as serialized by the signer) that made the signature, or None when none
    can be recovered; ``MalformedSignature`` if the text is no strict base64."""
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedSignature("Malformed base64 encoding") from None
    if len(sig) != 65 or not 27 <= sig[0] <= 34:
        return None
    recid = (sig[0] - 27) & 3
    compressed = sig[0] >= 31
    try:
        pub = PublicKey.from_signature_and_message(sig[1:] + bytes((recid,)), message_hash(message), hasher=None)
    except (ValueError, TypeError):
        return None
    return pub.format(compressed=compressed)


def pubkey_hash(pubkey: bytes) -> bytes:
    return hash160(pubkey)
