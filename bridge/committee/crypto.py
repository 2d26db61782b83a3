"""The two primitives of attested messages on their fast paths: keccak-256 in C and secp256k1
recoverable signatures through libsecp256k1 (coincurve), with the strict recovery rules of the
bridge contract's verifier (``bridge.committee.messages`` builds on these).

keccak-256 calls pycryptodome's C implementation directly through ctypes: the library object
``Crypto.Hash.keccak`` builds per call costs about as much as the hashing itself.  If that
library ever stops answering as expected, it falls back to ``Crypto.Hash.keccak``.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

import coincurve
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT
from Crypto.Hash import keccak as _pycryptodome_keccak

from bridge.core.errors import InputError

#: The order of secp256k1's group, and the largest ``s`` a signature may carry (EIP-2).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
SIGNATURE_LENGTH = 65
ZERO_ADDRESS = bytes(20)
_EMPTY_KECCAK = bytes.fromhex("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")


class Refused(InputError):
    """Input the committee code refuses.  ``reason`` is a short, stable phrase naming the rule."""

    def __init__(self, reason: str, **details: object) -> None:
        super().__init__(f"{type(self).__name__}: {reason}", reason=reason, **details)
        self.reason = reason


class SignatureRefused(Refused):
    """A signature that is malformed, not canonical, or recovers no usable address."""


# --- keccak-256 ------------------------------------------------------------------------------


def _slow_keccak256(data: bytes) -> bytes:
    return _pycryptodome_keccak.new(digest_bits=256, data=data).digest()


def _bind_keccak256() -> Callable[[bytes], bytes]:
    try:
        raw = ctypes.CDLL(_pycryptodome_keccak._raw_keccak_lib._name)
        init, destroy, reset, absorb, digest = raw.keccak_init, raw.keccak_destroy, raw.keccak_reset, raw.keccak_absorb, raw.keccak_digest
    except (AttributeError, OSError):
        return _slow_keccak256
    init.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_ubyte]
    destroy.argtypes = reset.argtypes = [ctypes.c_void_p]
    absorb.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    digest.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_ubyte]
    for fn in (init, destroy, reset, absorb, digest):
        fn.restype = ctypes.c_int

    class _State:
        """One keccak state per thread (the C state is not shareable), freed with the thread."""

        def __init__(self) -> None:
            self.ptr = ctypes.c_void_p()
            if init(ctypes.byref(self.ptr), 64, 24):  # capacity 512 bits, 24 rounds: keccak-256
                raise MemoryError("keccak_init failed")
            self.out = ctypes.create_string_buffer(32)

        def __del__(self) -> None:
            destroy(self.ptr)

    local = threading.local()

    def keccak256(data: bytes) -> bytes:
        try:
            state = local.state
        except AttributeError:
            state = local.state = _State()
        ptr, out = state.ptr, state.out
        if reset(ptr) or absorb(ptr, data, len(data)) or digest(ptr, out, 32, 0x01):  # 0x01: keccak padding
            return _slow_keccak256(data)
        return out.raw

    try:
        if keccak256(b"") != _EMPTY_KECCAK or keccak256(b"abc" * 100) != _slow_keccak256(b"abc" * 100):
            return _slow_keccak256
    except (OSError, MemoryError, ctypes.ArgumentError):
        return _slow_keccak256
    return keccak256


#: keccak-256 of ``data`` (bytes), as Ethereum uses it.
keccak256: Callable[[bytes], bytes] = _bind_keccak256()


# --- secp256k1 ---------------------------------------------------------------------------------


def private_key(key: bytes | coincurve.PrivateKey) -> coincurve.PrivateKey:
    """A signing key from its 32 bytes (kept as a ``coincurve.PrivateKey`` by callers that sign often)."""
    if isinstance(key, coincurve.PrivateKey):
        return key
    if type(key) is not bytes or len(key) != 32:
        raise InputError("a private key is 32 bytes")
    try:
        return coincurve.PrivateKey(key)
    except ValueError as exc:
        raise InputError("not a valid secp256k1 private key") from exc


def address_of(key: bytes | coincurve.PrivateKey) -> bytes:
    """The 20-byte Ethereum address of a private key."""
    return keccak256(private_key(key).public_key.format(compressed=False)[1:])[12:]


def sign(digest: bytes, key: bytes | coincurve.PrivateKey) -> bytes:
    """Sign a 32-byte digest: 65 bytes ``r || s || v``, ``v`` in {27, 28}, low ``s`` (libsecp256k1
    always signs with low ``s``).  No hashing here: the digest is signed as it is."""
    if type(digest) is not bytes or len(digest) != 32:
        raise SignatureRefused("digest: not 32 bytes")
    sig = private_key(key).sign_recoverable(digest, hasher=None)
    if sig[64] > 1 or int.from_bytes(sig[32:64], "big") > SECP256K1_HALF_N:  # r beyond n: about 2^-127
        raise SignatureRefused("signature not expressible with v 27 or 28")
    return sig[:64] + bytes((27 + sig[64],))


def check_signature(sig: object) -> None:
    """The shape rules of a signature, before any curve arithmetic: exactly 65 bytes, ``v`` 27 or
    28, ``0 < r < n``, ``0 < s <= n/2``.  Raises ``SignatureRefused``."""
    if type(sig) is not bytes:
        raise SignatureRefused("signature: not bytes")
    if len(sig) < SIGNATURE_LENGTH:
        raise SignatureRefused("signature: short")
    if len(sig) > SIGNATURE_LENGTH:
        raise SignatureRefused("signature: trailing bytes")
    if sig[64] not in (27, 28):
        raise SignatureRefused("v not 27 or 28")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    if not 0 < r < SECP256K1_N:
        raise SignatureRefused("r out of range")
    if s == 0:
        raise SignatureRefused("s zero")
    if s > SECP256K1_HALF_N:
        raise SignatureRefused("high s")


def recover(digest: bytes, sig: bytes) -> bytes:
    """The 20-byte address that signed ``digest``, strictly: a signature breaking a rule of
    ``check_signature``, one from which no key recovers, or one recovering the zero address is
    refused (``SignatureRefused`` with its ``reason``)."""
    if type(digest) is not bytes or len(digest) != 32:
        raise SignatureRefused("digest: not 32 bytes")
    check_signature(sig)
    ctx = GLOBAL_CONTEXT.ctx
    rsig = ffi.new("secp256k1_ecdsa_recoverable_signature *")
    pub = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, rsig, sig[:64], sig[64] - 27):
        raise SignatureRefused("recovery failed")
    if not lib.secp256k1_ecdsa_recover(ctx, pub, rsig, digest):
        raise SignatureRefused("recovery failed")
    out = ffi.new("unsigned char[65]")
    out_len = ffi.new("size_t *", 65)
    lib.secp256k1_ec_pubkey_serialize(ctx, out, out_len, pub, lib.SECP256K1_EC_UNCOMPRESSED)
    address = keccak256(ffi.buffer(out, 65)[1:])[12:]
    if address == ZERO_ADDRESS:
        raise SignatureRefused("recovered the zero address")
    return address
