"""Committee messages, their EIP-712 digests, committees and quorum verification, attestation
bundles.  ``../shared/DESIGN.md``, "Attested messages and the committee"; issue 14.

The format is shared, byte for byte, with the bridge contract's verifier; it never changes here:

    EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
        name "CollateralBridge", version "1"
    Message(uint8 version,uint8 kind,uint64 sourceChainId,bytes32 sourceTx,uint32 sourceIndex,
            uint64 destChainId,address account,address asset,uint256 amount,uint64 nonce,
            uint64 expiry,bytes32 payloadHash)

    message id  = keccak256("\\x19\\x01" || domainSeparator || hashStruct(message))
    committee   = (epoch uint64, signers address[] ascending, threshold uint8),
                  packed as epoch (8 bytes) || threshold (1) || signers (20 each), the bytes the
                  contract takes, and hashed as keccak256 of those bytes; M >= ceil(2N/3)
    signature   = r || s || v (65 bytes), v in {27, 28}, s <= n/2

A message acts only strictly before its ``expiry`` (unix seconds): refused when ``now >= expiry``,
as the contract (``block.timestamp >= expiry`` reverts) and the HTLC contract.  Beyond the
widths: version 1, a known kind, a nonzero expiry; DEPOSIT_CREDIT, RELEASE and PAYOUT_DONE carry
a nonzero amount, account and source tx; ROTATION and SNAPSHOT_ROOT a nonzero payload hash.
Addresses and hashes are raw ``bytes`` (20 and 32); every integer field is range-checked for its
Solidity type.  Every refusal is a ``Refused`` (an ``InputError``) whose
``reason`` names the rule.

Longer than the house's ~400 lines on purpose: this module is the whole wire format the contract
shares (message, domain, committee, quorum rules, bundle bytes), kept in one place so that a
reader checks it against the Solidity verifier in one file.  The primitives are in ``crypto.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import ClassVar

from eth_utils import to_checksum_address

from bridge.committee.crypto import (
    ZERO_ADDRESS,
    Refused,
    SignatureRefused,
    address_of,
    check_signature,
    keccak256,
    recover,
    sign,
)

__all__ = [
    "BTC_ASSET",
    "ETH_ASSET",
    "Bundle",
    "BundleRefused",
    "Committee",
    "CommitteeRefused",
    "Domain",
    "Kind",
    "Message",
    "MessageRefused",
    "QuorumRefused",
    "Refused",
    "SignatureRefused",
    "address_of",
    "bitcoin_source",
    "decode_bundle",
    "decode_message",
    "digest",
    "encode_bundle",
    "encode_message",
    "evm_source",
    "pack_committee",
    "recover",
    "sign",
    "typed_data",
    "verify_quorum",
]

MESSAGE_VERSION = 1
DOMAIN_NAME = "CollateralBridge"
DOMAIN_VERSION = "1"
MESSAGE_TYPE = (
    "Message(uint8 version,uint8 kind,uint64 sourceChainId,bytes32 sourceTx,uint32 sourceIndex,uint64 destChainId,"
    "address account,address asset,uint256 amount,uint64 nonce,uint64 expiry,bytes32 payloadHash)"
)
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
MESSAGE_TYPEHASH = keccak256(MESSAGE_TYPE.encode())
DOMAIN_TYPEHASH = keccak256(DOMAIN_TYPE.encode())
ZERO32 = bytes(32)
#: The asset of ETH is the zero address; of BTC, the last 20 bytes of keccak256("BTC").
ETH_ASSET = ZERO_ADDRESS
BTC_ASSET = keccak256(b"BTC")[12:]
#: Signer indices are uint8: a committee has at most 256 members.
MAX_SIGNERS = 256


class MessageRefused(Refused):
    """A message breaking a rule of the format or of the kinds."""


class CommitteeRefused(Refused):
    """A committee that is malformed or whose threshold is below ceil(2N/3)."""


class QuorumRefused(Refused):
    """Signatures that do not make a quorum of the committee for this message."""


class BundleRefused(Refused):
    """Bytes that are not the canonical encoding of an attestation bundle."""


class Kind(IntEnum):
    DEPOSIT_CREDIT = 1
    RELEASE = 2
    PAYOUT_DONE = 3
    PRICE_REPORT = 4
    ROTATION = 5
    UNPAUSE = 6
    SNAPSHOT_ROOT = 7


#: Kinds that move value: their amount, account and source reference are never zero.
VALUE_KINDS = frozenset({Kind.DEPOSIT_CREDIT, Kind.RELEASE, Kind.PAYOUT_DONE})
#: Kinds whose payload hash is what they act on (the next committee's hash, a snapshot root).
PAYLOAD_KINDS = frozenset({Kind.ROTATION, Kind.SNAPSHOT_ROOT})


def _uint(error: type[Refused], name: str, value: object, bits: int) -> None:
    if type(value) is not int and not isinstance(value, Kind):
        raise error(f"{name}: not an integer")
    if not 0 <= value < 1 << bits:
        raise error(f"{name}: not a uint{bits}")


def _bytes(error: type[Refused], name: str, value: object, size: int) -> None:
    if type(value) is not bytes or len(value) != size:
        raise error(f"{name}: not {size} bytes")


@dataclass(frozen=True)
class Message:
    """One attested message (field order and widths as in the EIP-712 type)."""

    version: int
    kind: int
    source_chain_id: int
    source_tx: bytes
    source_index: int
    dest_chain_id: int
    account: bytes
    asset: bytes
    amount: int
    nonce: int
    expiry: int
    payload_hash: bytes

    def __post_init__(self) -> None:
        self.check()
        object.__setattr__(self, "kind", Kind(self.kind))

    def check(self) -> None:
        """Every rule of the format; ``MessageRefused`` naming the first one broken."""
        _uint(MessageRefused, "version", self.version, 8)
        if self.version != MESSAGE_VERSION:
            raise MessageRefused("version: unknown")
        _uint(MessageRefused, "kind", self.kind, 8)
        if self.kind not in Kind._value2member_map_:
            raise MessageRefused("kind: unknown")
        _uint(MessageRefused, "source_chain_id", self.source_chain_id, 64)
        _bytes(MessageRefused, "source_tx", self.source_tx, 32)
        _uint(MessageRefused, "source_index", self.source_index, 32)
        _uint(MessageRefused, "dest_chain_id", self.dest_chain_id, 64)
        _bytes(MessageRefused, "account", self.account, 20)
        _bytes(MessageRefused, "asset", self.asset, 20)
        _uint(MessageRefused, "amount", self.amount, 256)
        _uint(MessageRefused, "nonce", self.nonce, 64)
        _uint(MessageRefused, "expiry", self.expiry, 64)
        _bytes(MessageRefused, "payload_hash", self.payload_hash, 32)
        if self.expiry == 0:
            raise MessageRefused("expiry: zero (every message expires)")
        if self.kind in VALUE_KINDS:
            if self.amount == 0:
                raise MessageRefused("amount: zero")
            if self.account == ZERO_ADDRESS:
                raise MessageRefused("account: zero address")
            if self.source_tx == ZERO32:
                raise MessageRefused("source_tx: zero")
        if self.kind in PAYLOAD_KINDS and self.payload_hash == ZERO32:
            raise MessageRefused("payload_hash: zero")

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct(message)``: every field is a static type, one 32-byte word each."""
        return keccak256(
            b"".join(
                (
                    MESSAGE_TYPEHASH,
                    self.version.to_bytes(32, "big"),
                    self.kind.to_bytes(32, "big"),
                    self.source_chain_id.to_bytes(32, "big"),
                    self.source_tx,
                    self.source_index.to_bytes(32, "big"),
                    self.dest_chain_id.to_bytes(32, "big"),
                    bytes(12) + self.account,
                    bytes(12) + self.asset,
                    self.amount.to_bytes(32, "big"),
                    self.nonce.to_bytes(32, "big"),
                    self.expiry.to_bytes(32, "big"),
                    self.payload_hash,
                )
            )
        )

    def as_tuple(self) -> tuple[object, ...]:
        """The contract's ``Message`` tuple (checksummed addresses), e.g. for ``contract.py``'s binding."""
        return tuple(self.as_eip712().values())

    def as_eip712(self) -> dict[str, object]:
        """The message as EIP-712 JSON values (the names of the Solidity struct)."""
        return {
            "version": self.version,
            "kind": int(self.kind),
            "sourceChainId": self.source_chain_id,
            "sourceTx": self.source_tx,
            "sourceIndex": self.source_index,
            "destChainId": self.dest_chain_id,
            "account": to_checksum_address(self.account),
            "asset": to_checksum_address(self.asset),
            "amount": self.amount,
            "nonce": self.nonce,
            "expiry": self.expiry,
            "payloadHash": self.payload_hash,
        }


def bitcoin_source(txid: str, vout: int) -> tuple[bytes, int]:
    """``(source_tx, source_index)`` of a Bitcoin output: the txid's bytes in display order."""
    if type(txid) is not str or len(txid) != 64:
        raise MessageRefused("txid: not 64 hex digits")
    try:
        raw = bytes.fromhex(txid)
    except ValueError as exc:
        raise MessageRefused("txid: not 64 hex digits") from exc
    _uint(MessageRefused, "vout", vout, 32)
    return raw, vout


def evm_source(tx_hash: str, log_index: int) -> tuple[bytes, int]:
    """``(source_tx, source_index)`` of an EVM log: its transaction's hash and its log index."""
    if type(tx_hash) is not str or len(tx_hash) != 66 or not tx_hash.startswith("0x"):
        raise MessageRefused("tx_hash: not 0x and 64 hex digits")
    try:
        raw = bytes.fromhex(tx_hash[2:])
    except ValueError as exc:
        raise MessageRefused("tx_hash: not 0x and 64 hex digits") from exc
    _uint(MessageRefused, "log_index", log_index, 32)
    return raw, log_index


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain: the bridge contract and the chain it lives on."""

    chain_id: int
    verifying_contract: bytes
    name: ClassVar[str] = DOMAIN_NAME
    version: ClassVar[str] = DOMAIN_VERSION

    def __post_init__(self) -> None:
        _uint(MessageRefused, "chain_id", self.chain_id, 256)
        if self.chain_id == 0:
            raise MessageRefused("chain_id: zero")
        _bytes(MessageRefused, "verifying_contract", self.verifying_contract, 20)
        if self.verifying_contract == ZERO_ADDRESS:
            raise MessageRefused("verifying_contract: zero address")

    @cached_property
    def separator(self) -> bytes:
        return keccak256(
            DOMAIN_TYPEHASH
            + keccak256(DOMAIN_NAME.encode())
            + keccak256(DOMAIN_VERSION.encode())
            + self.chain_id.to_bytes(32, "big")
            + bytes(12)
            + self.verifying_contract
        )

    def as_eip712(self) -> dict[str, object]:
        return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": self.chain_id, "verifyingContract": to_checksum_address(self.verifying_contract)}


def digest(domain: Domain, message: Message) -> bytes:
    """The message id: the EIP-712 digest of ``message`` under ``domain``."""
    return keccak256(b"\x19\x01" + domain.separator + message.struct_hash())


def typed_data(domain: Domain, message: Message) -> dict[str, object]:
    """The full EIP-712 typed data (as ``eth_account.messages.encode_typed_data(full_message=)``,
    wallets and ``eth_signTypedData_v4`` take it)."""

    def fields(type_string: str) -> list[dict[str, str]]:
        inner = type_string[type_string.index("(") + 1 : -1]
        return [dict(zip(("type", "name"), f.split(" "))) for f in inner.split(",")]

    return {
        "types": {"EIP712Domain": fields(DOMAIN_TYPE), "Message": fields(MESSAGE_TYPE)},
        "primaryType": "Message",
        "domain": domain.as_eip712(),
        "message": message.as_eip712(),
    }


@dataclass(frozen=True)
class Committee:
    """One epoch's committee: signer addresses strictly ascending, threshold M >= ceil(2N/3)."""

    epoch: int
    signers: tuple[bytes, ...]
    threshold: int

    def __post_init__(self) -> None:
        _uint(CommitteeRefused, "epoch", self.epoch, 64)
        if not isinstance(self.signers, (tuple, list)):
            raise CommitteeRefused("signers: not a sequence")
        object.__setattr__(self, "signers", tuple(self.signers))
        n = len(self.signers)
        if not 1 <= n <= MAX_SIGNERS:
            raise CommitteeRefused("signers: not 1 to 256")
        previous = b""
        for signer in self.signers:
            _bytes(CommitteeRefused, "signer", signer, 20)
            if signer == ZERO_ADDRESS:
                raise CommitteeRefused("signer: zero address")
            if signer == previous:
                raise CommitteeRefused("signers: duplicate")
            if signer < previous:
                raise CommitteeRefused("signers: not ascending")
            previous = signer
        _uint(CommitteeRefused, "threshold", self.threshold, 8)
        if self.threshold > n:
            raise CommitteeRefused("threshold: above the number of signers")
        if self.threshold < self.min_threshold(n):
            raise CommitteeRefused("threshold: below ceil(2N/3)")

    @staticmethod
    def min_threshold(n: int) -> int:
        """ceil(2N/3), the smallest quorum a committee of N may have."""
        return -(-2 * n // 3)

    @cached_property
    def packed(self) -> bytes:
        """``epoch (8 bytes, big-endian) || threshold (1) || signers (20 each)``, as the contract takes it."""
        return pack_committee(self.epoch, self.signers, self.threshold)

    @cached_property
    def hash(self) -> bytes:
        """keccak256(packed): the contract's stored committee hash and a ROTATION's payload."""
        return keccak256(self.packed)

    @cached_property
    def members(self) -> frozenset[bytes]:
        return frozenset(self.signers)

    @classmethod
    def unpack(cls, packed: bytes) -> "Committee":
        """The committee of its packed bytes (as a ``Rotated`` event carries them), strictly."""
        if not isinstance(packed, (bytes, bytearray)) or len(packed) < 9 or (len(packed) - 9) % 20:
            raise CommitteeRefused("packed committee: not 9 + 20 N bytes")
        packed = bytes(packed)
        return cls(int.from_bytes(packed[:8], "big"), tuple(packed[i : i + 20] for i in range(9, len(packed), 20)), packed[8])


def pack_committee(epoch: int, signers: Sequence[bytes], threshold: int) -> bytes:
    """A committee's packed bytes (``Committee.packed``), also for a set the rules would refuse."""
    return epoch.to_bytes(8, "big") + bytes([threshold]) + b"".join(bytes(s) for s in signers)


def verify_quorum(domain: Domain, message: Message, committee: Committee, indices: Sequence[int], signatures: Sequence[bytes], now: int) -> bytes:
    """Check that ``signatures`` (one per ascending signer index into ``committee.signers``) make
    a quorum for ``message`` under ``domain`` at unix time ``now``; return the message id.

    Cheap rules first (the message, its expiry, the list's shape, the count), then one recovery
    per signature.  Raises ``MessageRefused``, ``QuorumRefused`` or ``SignatureRefused``."""
    if not isinstance(message, Message) or not isinstance(committee, Committee) or not isinstance(domain, Domain):
        raise QuorumRefused("not a Domain, Message and Committee")
    message.check()
    if type(now) is not int:
        raise QuorumRefused("now: not an integer")
    if now >= message.expiry:
        raise QuorumRefused("expired")
    if len(indices) == 0 or len(signatures) == 0:
        raise QuorumRefused("empty")
    if len(indices) != len(signatures):
        raise QuorumRefused("count mismatch")
    n, previous = len(committee.signers), -1
    for index in indices:
        if type(index) is not int:
            raise QuorumRefused("index: not an integer")
        if index == previous:
            raise QuorumRefused("duplicate index")
        if index < previous:
            raise QuorumRefused("unsorted indices")
        if not 0 <= index < n:
            raise QuorumRefused("index outside the set")
        previous = index
    if len(indices) < committee.threshold:
        raise QuorumRefused("below quorum")
    message_id = digest(domain, message)
    if message_id == ZERO32:
        raise QuorumRefused("zero id")
    for index, sig in zip(indices, signatures):
        try:
            signer = recover(message_id, sig)
        except SignatureRefused as exc:
            raise SignatureRefused(exc.reason, index=index) from exc
        if signer != committee.signers[index]:
            raise QuorumRefused("signer outside the set" if signer not in committee.members else "signer does not match its index", index=index)
    return message_id


# --- attestation bundles ------------------------------------------------------------------------

BUNDLE_FORMAT = 1
#: version, kind, sourceChainId, sourceTx, sourceIndex, destChainId, account, asset, amount,
#: nonce, expiry, payloadHash: fixed widths, big-endian.
_MESSAGE = struct.Struct(">BBQ32sIQ20s20s32sQQ32s")
_HEAD = struct.Struct(">B")
_COMMITTEE_HEAD = struct.Struct(">QBH")  # epoch, threshold, N
_COUNT = struct.Struct(">H")
MESSAGE_LENGTH = _MESSAGE.size


@dataclass(frozen=True)
class Bundle:
    """A message, the committee, ascending signer indices and one signature per index.  Built only
    well-formed (shapes, ordering, canonical signatures); whether it is a quorum, unexpired, for
    this domain is ``verify``'s question."""

    message: Message
    committee: Committee
    indices: tuple[int, ...]
    signatures: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.message, Message) or not isinstance(self.committee, Committee):
            raise BundleRefused("not a Message and a Committee")
        object.__setattr__(self, "indices", tuple(self.indices))
        object.__setattr__(self, "signatures", tuple(self.signatures))
        if not self.indices:
            raise BundleRefused("empty")
        if len(self.indices) != len(self.signatures):
            raise BundleRefused("count mismatch")
        previous = -1
        for index in self.indices:
            if type(index) is not int or not previous < index < len(self.committee.signers):
                raise BundleRefused("indices: not ascending within the set")
            previous = index
        for sig in self.signatures:
            try:
                check_signature(sig)
            except SignatureRefused as exc:
                raise BundleRefused(exc.reason) from exc

    def verify(self, domain: Domain, committee_hash: bytes, now: int) -> bytes:
        """``verify_quorum`` against the committee whose hash is on record: the set the bundle
        carries is taken only if it hashes to ``committee_hash`` (a caller-supplied set is never
        trusted for itself)."""
        if self.committee.hash != committee_hash:
            raise QuorumRefused("committee does not match the stored hash")
        return verify_quorum(domain, self.message, self.committee, self.indices, self.signatures, now)


def encode_bundle(bundle: Bundle) -> bytes:
    """The canonical bytes: format byte, message (174 bytes), committee (epoch, M, N, N
    addresses), K, K indices, K signatures of 65 bytes."""
    m, c = bundle.message, bundle.committee
    return b"".join(
        (
            _HEAD.pack(BUNDLE_FORMAT),
            encode_message(m),
            _COMMITTEE_HEAD.pack(c.epoch, c.threshold, len(c.signers)),
            *c.signers,
            _COUNT.pack(len(bundle.indices)),
            bytes(bundle.indices),
            *bundle.signatures,
        )
    )


def encode_message(message: Message) -> bytes:
    """The canonical bytes of one message: the message part of a bundle (``MESSAGE_LENGTH`` bytes,
    fixed widths, big-endian), e.g. as the attestation store keeps it."""
    m = message
    return _MESSAGE.pack(
        m.version,
        m.kind,
        m.source_chain_id,
        m.source_tx,
        m.source_index,
        m.dest_chain_id,
        m.account,
        m.asset,
        m.amount.to_bytes(32, "big"),
        m.nonce,
        m.expiry,
        m.payload_hash,
    )


def decode_message(data: bytes) -> Message:
    """The message of canonical bytes, strictly: any other length, or a field the rules refuse, is
    a ``MessageRefused`` naming it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageRefused("message: not bytes")
    data = bytes(data)
    if len(data) != _MESSAGE.size:
        raise MessageRefused(f"message: not {_MESSAGE.size} bytes")
    fields = list(_MESSAGE.unpack(data))
    fields[8] = int.from_bytes(fields[8], "big")
    return Message(*fields)


def decode_bundle(data: bytes) -> Bundle:
    """The bundle of canonical bytes, strictly: a wrong format byte, a short read, trailing
    bytes, or any field the types refuse is a ``BundleRefused`` naming it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BundleRefused("not bytes")
    view = memoryview(bytes(data))
    pos = 0

    def take(size: int, what: str) -> bytes:
        nonlocal pos
        if len(view) - pos < size:
            raise BundleRefused(f"short: {what}")
        chunk = bytes(view[pos : pos + size])
        pos += size
        return chunk

    (fmt,) = _HEAD.unpack(take(_HEAD.size, "format"))
    if fmt != BUNDLE_FORMAT:
        raise BundleRefused("format: unknown")
    fields = list(_MESSAGE.unpack(take(_MESSAGE.size, "message")))
    fields[8] = int.from_bytes(fields[8], "big")
    epoch, threshold, n = _COMMITTEE_HEAD.unpack(take(_COMMITTEE_HEAD.size, "committee"))
    if not 1 <= n <= MAX_SIGNERS:
        raise BundleRefused("committee: size not 1 to 256")
    signers = take(20 * n, "signers")
    (k,) = _COUNT.unpack(take(_COUNT.size, "count"))
    if not 1 <= k <= n:
        raise BundleRefused("count: not 1 to N")
    indices = tuple(take(k, "indices"))
    sigs = take(65 * k, "signatures")
    if pos != len(view):
        raise BundleRefused("trailing bytes")
    try:
        message = Message(*fields)
        committee = Committee(epoch, tuple(signers[i : i + 20] for i in range(0, 20 * n, 20)), threshold)
    except Refused as exc:
        raise BundleRefused(exc.reason) from exc
    return Bundle(message, committee, indices, tuple(sigs[i : i + 65] for i in range(0, 65 * k, 65)))
