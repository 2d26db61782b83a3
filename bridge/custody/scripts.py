"""The committee's Bitcoin custody scripts: the main custody multisig and the per-account deposit scripts.

* **Custody** (where sweeps put the coins and payouts spend them from): a plain P2WSH of the
  committee's sorted keys, ``<M> <pk_1> .. <pk_N> <N> OP_CHECKMULTISIG`` (the descriptor
  ``wsh(sortedmulti(M, ...))``).
* **Deposit** (one address per margin account), P2WSH of::

    <account20> OP_DROP
    OP_IF
      <M> <pk_1> .. <pk_N> <N> OP_CHECKMULTISIG
    OP_ELSE
      <delay> OP_CHECKSEQUENCEVERIFY OP_DROP <refund_pk> OP_CHECKSIG
    OP_ENDIF

  The account tag (the 20-byte EVM address) makes every account's address its own, so a deposit
  is credited to the account whose address it paid; the committee spends with the first branch
  (witness ``0 <sig>.. 1``); after ``delay`` blocks (BIP-68/112, relative, counted from the
  deposit's confirmation) the depositor takes the coins back alone (witness ``<sig> 0``).

Keys are 33-byte compressed secp256k1 keys sorted ascending (BIP-67); the threshold follows the
committee's rule ``M >= ceil(2N/3)`` (``bridge.committee.messages.Committee``).  Everything is
encoded as Bitcoin Core's ``CScript <<`` does (minimal pushes and numbers), so one set of terms
has exactly one script and one address: anyone holding the committee's keys derives them, and
``parse_deposit_script`` refuses any other encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Sequence

import coincurve

from bridge.committee.crypto import keccak256
from bridge.committee.messages import Committee
from bridge.core.errors import InputError
from chains.btc.address import InvalidAddress, address_to_script, network, script_to_address
from chains.btc.primitives import push_int
from chains.btc.script import (
    MAX_OPS_PER_SCRIPT,
    MAX_PUBKEYS_PER_MULTISIG,
    MAX_STANDARD_P2WSH_SCRIPT_SIZE,
    OP_16,
    OP_CHECKMULTISIG,
    OP_CHECKSEQUENCEVERIFY,
    OP_CHECKSIG,
    OP_DROP,
    OP_ELSE,
    OP_ENDIF,
    OP_IF,
    OP_PUSHDATA4,
    has_valid_ops,
    multisig_params,
    p2wsh_script,
    parse_script,
    push_minimal,
)
from htlc.bitcoin_script import is_compressed_pubkey

#: BIP-68: the largest relative lock in blocks (16 bits; the type flag, bit 22, says blocks).
MAX_REFUND_DELAY = 0xFFFF
ACCOUNT_SIZE = 20

__all__ = [
    "AddressCheck",
    "account_bytes",
    "CustodyPolicy",
    "CustodyRefused",
    "DepositTerms",
    "check_standard_witness_script",
    "custody_address",
    "custody_script",
    "custody_script_pubkey",
    "deposit_address",
    "deposit_script",
    "deposit_script_pubkey",
    "multisig_terms",
    "parse_deposit_script",
    "pubkey_matches_evm_address",
    "refund_pubkey_of_evm_key",
    "verify_deposit_address",
]


class CustodyRefused(InputError):
    """A custody policy, script, key or spend the bridge refuses.  ``reason`` is a short, stable
    phrase naming the rule; the message adds the particulars."""

    def __init__(self, reason: str, detail: str = "", **details: object) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason, reason=reason, **details)
        self.reason = reason
        self.detail = detail


# --- the committee's policy -------------------------------------------------------------------


def _check_pubkey(pubkey: object, what: str) -> bytes:
    if not isinstance(pubkey, (bytes, bytearray)) or not is_compressed_pubkey(bytes(pubkey)):
        shown = bytes(pubkey).hex() if isinstance(pubkey, (bytes, bytearray)) else type(pubkey).__name__
        raise CustodyRefused("pubkey", f"{what} {shown} is not a 33-byte compressed secp256k1 public key")
    return bytes(pubkey)


@dataclass(frozen=True)
class CustodyPolicy:
    """The committee's custody terms: keys (sorted ascending, BIP-67), threshold M, the deposit
    refund delay in blocks (relative, 1..65535), and the Bitcoin network of the addresses."""

    pubkeys: tuple[bytes, ...]
    threshold: int
    refund_delay: int
    network: str = "regtest"

    def __post_init__(self) -> None:
        if not isinstance(self.pubkeys, (tuple, list)):
            raise CustodyRefused("pubkeys", "not a sequence")
        keys = tuple(_check_pubkey(pk, f"committee key {i}") for i, pk in enumerate(self.pubkeys))
        object.__setattr__(self, "pubkeys", keys)
        n = len(keys)
        if not 1 <= n <= MAX_PUBKEYS_PER_MULTISIG:
            raise CustodyRefused("pubkeys", f"{n} keys; OP_CHECKMULTISIG takes 1 to {MAX_PUBKEYS_PER_MULTISIG}")
        for a, b in zip(keys, keys[1:]):
            if a == b:
                raise CustodyRefused("pubkeys", f"duplicate key {a.hex()}")
            if a > b:
                raise CustodyRefused("pubkeys", "not sorted ascending (BIP-67); use CustodyPolicy.of()")
        m = self.threshold
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
            raise CustodyRefused("threshold", f"{m!r} is not 1..{n}")
        if m < Committee.min_threshold(n):
            raise CustodyRefused("threshold", f"{m}-of-{n} is below ceil(2N/3) = {Committee.min_threshold(n)}")
        d = self.refund_delay
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_REFUND_DELAY:
            raise CustodyRefused("refund delay", f"{d!r} is not 1..{MAX_REFUND_DELAY} blocks (BIP-68)")
        network(self.network)  # InputError naming the choices
        check_standard_witness_script(_deposit_script(self, bytes(ACCOUNT_SIZE), keys[0]))

    @cached_property
    def _deposit_template(self) -> tuple[bytes, bytes]:
        """The deposit script's bytes between the account tag and the refund key."""
        return bytes((OP_DROP, OP_IF)), custody_script(self) + bytes((OP_ELSE,)) + push_int(self.refund_delay) + bytes((OP_CHECKSEQUENCEVERIFY, OP_DROP))

    @classmethod
    def of(cls, pubkeys: Sequence[bytes], threshold: int, refund_delay: int, network: str = "regtest") -> "CustodyPolicy":
        """The policy of keys in any order (sorted here, as BIP-67 does: anyone with the keys gets
        the same scripts)."""
        return cls(tuple(sorted(bytes(pk) for pk in pubkeys)), threshold, refund_delay, network)

    @cached_property
    def _custody_script(self) -> bytes:
        return _multisig(self.threshold, self.pubkeys)

    @property
    def n(self) -> int:
        return len(self.pubkeys)

    @property
    def descriptor(self) -> str:
        """The custody output as an output descriptor (without checksum): ``wsh(sortedmulti(M,...))``."""
        return f"wsh(sortedmulti({self.threshold},{','.join(pk.hex() for pk in self.pubkeys)}))"


def _multisig(threshold: int, pubkeys: Sequence[bytes]) -> bytes:
    return b"".join([push_int(threshold), *(push_minimal(pk) for pk in pubkeys), push_int(len(pubkeys)), bytes((OP_CHECKMULTISIG,))])


def custody_script(policy: CustodyPolicy) -> bytes:
    """The main custody witness script: ``<M> <sorted keys> <N> OP_CHECKMULTISIG``."""
    return policy._custody_script


def custody_script_pubkey(policy: CustodyPolicy) -> bytes:
    return p2wsh_script(custody_script(policy))


def custody_address(policy: CustodyPolicy) -> str:
    return script_to_address(custody_script_pubkey(policy), policy.network)  # type: ignore[return-value]


# --- accounts and refund keys -----------------------------------------------------------------


def account_bytes(account: bytes | str) -> bytes:
    """A 20-byte account tag from bytes or a ``0x`` hex EVM address (any case)."""
    if isinstance(account, str):
        text = account.removeprefix("0x").removeprefix("0X")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise CustodyRefused("account", f"{account!r} is not hex") from None
    elif isinstance(account, (bytes, bytearray)):
        raw = bytes(account)
    else:
        raise CustodyRefused("account", f"expected 20 bytes or a 0x address, got {type(account).__name__}")
    if len(raw) != ACCOUNT_SIZE:
        raise CustodyRefused("account", f"{len(raw)} bytes, an account tag is an EVM address of {ACCOUNT_SIZE}")
    return raw


def refund_pubkey_of_evm_key(private_key: bytes | str) -> bytes:
    """The compressed secp256k1 public key of an EVM private key (32 bytes or hex): an account's
    own EVM key can sign its Bitcoin refunds (same curve, same key)."""
    if isinstance(private_key, str):
        try:
            private_key = bytes.fromhex(private_key.removeprefix("0x"))
        except ValueError:
            raise CustodyRefused("private key", "not hex") from None
    if not isinstance(private_key, (bytes, bytearray)) or len(private_key) != 32:
        raise CustodyRefused("private key", "a private key is 32 bytes")
    try:
        return coincurve.PrivateKey(bytes(private_key)).public_key.format(compressed=True)
    except ValueError:
        raise CustodyRefused("private key", "not a valid secp256k1 private key") from None


def pubkey_matches_evm_address(pubkey: bytes, address: bytes | str) -> bool:
    """Whether ``pubkey`` (compressed or not) is the key of the EVM ``address``: the last 20 bytes
    of keccak256 of the uncompressed key's 64 coordinate bytes."""
    try:
        point = coincurve.PublicKey(bytes(pubkey)).format(compressed=False)
    except (ValueError, TypeError):
        return False
    return keccak256(point[1:])[12:] == account_bytes(address)


# --- deposit scripts ----------------------------------------------------------------------------


def _deposit_script(policy: CustodyPolicy, tag: bytes, refund: bytes) -> bytes:
    head, tail = policy._deposit_template
    return b"".join([push_minimal(tag), head, tail, push_minimal(refund), bytes((OP_CHECKSIG, OP_ENDIF))])


def deposit_script(policy: CustodyPolicy, account: bytes | str, refund_pubkey: bytes) -> bytes:
    """The deposit witness script of ``account`` (module docstring).  Its size and operations depend
    on the policy alone, whose template was checked against relay policy when it was made."""
    return _deposit_script(policy, account_bytes(account), _check_pubkey(refund_pubkey, "refund key"))


def deposit_script_pubkey(policy: CustodyPolicy, account: bytes | str, refund_pubkey: bytes) -> bytes:
    return p2wsh_script(deposit_script(policy, account, refund_pubkey))


def deposit_address(policy: CustodyPolicy, account: bytes | str, refund_pubkey: bytes) -> str:
    """The account's deposit address (``bcrt1q…`` on regtest): anyone with the terms derives it."""
    return script_to_address(deposit_script_pubkey(policy, account, refund_pubkey), policy.network)  # type: ignore[return-value]


class AddressCheck(NamedTuple):
    """``ok`` and why; ``bool(check)`` is ``ok``."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def verify_deposit_address(address: str, policy: CustodyPolicy, account: bytes | str, refund_pubkey: bytes) -> AddressCheck:
    """Whether ``address`` is ``account``'s deposit address under ``policy`` with ``refund_pubkey``."""
    try:
        expected_script = deposit_script_pubkey(policy, account, refund_pubkey)
        expected = deposit_address(policy, account, refund_pubkey)
        tag = account_bytes(account)
    except InputError as exc:
        return AddressCheck(False, f"cannot derive the deposit address: {exc.message}")
    try:
        script = address_to_script(address, policy.network)
    except InvalidAddress as exc:
        return AddressCheck(False, f"not a {policy.network} address: {exc.message}")
    if script[:2] != b"\x00\x20" or len(script) != 34:
        return AddressCheck(False, "not a P2WSH address (a deposit address is P2WSH)")
    if script != expected_script:
        return AddressCheck(False, f"not the deposit address of account 0x{tag.hex()} under this committee and refund key (that is {expected})")
    return AddressCheck(True, f"the deposit address of account 0x{tag.hex()} ({policy.threshold}-of-{policy.n}, refund after {policy.refund_delay} blocks)")


class DepositTerms(NamedTuple):
    account: bytes
    threshold: int
    pubkeys: tuple[bytes, ...]
    refund_delay: int
    refund_pubkey: bytes

    def policy(self, network: str = "regtest") -> CustodyPolicy:
        return CustodyPolicy(self.pubkeys, self.threshold, self.refund_delay, network)


def _small_int(op: int, data: bytes | None, what: str) -> int:
    if 0x51 <= op <= OP_16:
        return op - 0x50
    if op <= OP_PUSHDATA4 and data and len(data) <= 4:
        value = int.from_bytes(data, "little")
        if not data[-1] & 0x80:
            return value
    raise CustodyRefused("not a deposit script", f"{what} is not a positive number")


def parse_deposit_script(script: bytes) -> DepositTerms:
    """The terms of a deposit script, strictly: exactly our template, minimally encoded, keys sorted,
    a threshold the committee rule allows, a delay of 1..65535 blocks.  ``CustodyRefused`` otherwise."""
    if not isinstance(script, (bytes, bytearray)):
        raise CustodyRefused("not a deposit script", "not bytes")
    script = bytes(script)
    ops = parse_script(script)
    if any(op <= OP_PUSHDATA4 and data is None for op, data in ops):
        raise CustodyRefused("not a deposit script", "truncated push")
    # tag DROP IF M k1..kN N CMS ELSE delay CSV DROP refund CHECKSIG ENDIF: 13 + N items
    n = len(ops) - 13
    if n < 1 or ops[1][0] != OP_DROP or ops[2][0] != OP_IF or ops[-1][0] != OP_ENDIF:
        raise CustodyRefused("not a deposit script", "not <account> OP_DROP OP_IF .. OP_ENDIF")
    tag = ops[0][1]
    if tag is None or len(tag) != ACCOUNT_SIZE:
        raise CustodyRefused("not a deposit script", "no 20-byte account tag")
    threshold = _small_int(*ops[3], "threshold")
    keys = tuple(data for _, data in ops[4 : 4 + n])
    tail = [op for op, _ in ops[5 + n : 7 + n]] + [ops[8 + n][0], ops[9 + n][0], ops[11 + n][0]]
    if tail != [OP_CHECKMULTISIG, OP_ELSE, OP_CHECKSEQUENCEVERIFY, OP_DROP, OP_CHECKSIG]:
        raise CustodyRefused("not a deposit script", "not the multisig / CSV refund template")
    delay = _small_int(*ops[7 + n], "refund delay")
    refund = ops[10 + n][1]
    try:
        terms = DepositTerms(tag, threshold, keys, delay, _check_pubkey(refund, "refund key"))  # type: ignore[arg-type]
        rebuilt = deposit_script(terms.policy(), tag, terms.refund_pubkey)
    except CustodyRefused as exc:
        raise CustodyRefused("not a deposit script", exc.message) from None
    if rebuilt != script:
        raise CustodyRefused("not a deposit script", "not minimally encoded (or the key count disagrees)")
    return terms


def multisig_terms(witness_script: bytes) -> tuple[int, tuple[bytes, ...], bool]:
    """``(M, keys, is_deposit)`` of a script the committee spends: a custody multisig or a deposit
    script (whose multisig branch is the IF).  ``CustodyRefused`` for anything else."""
    params = multisig_params(witness_script)
    if params is not None:
        return params[0], tuple(params[1]), False
    terms = parse_deposit_script(witness_script)
    return terms.threshold, terms.pubkeys, True


def check_standard_witness_script(script: bytes) -> None:
    """Relay policy for a P2WSH witness script: at most 3600 bytes, valid opcodes and pushes, at most
    201 counted operations (CHECKMULTISIG counts its keys).  ``CustodyRefused`` naming the limit."""
    if len(script) > MAX_STANDARD_P2WSH_SCRIPT_SIZE:
        raise CustodyRefused("nonstandard script", f"{len(script)} bytes > {MAX_STANDARD_P2WSH_SCRIPT_SIZE} (P2WSH policy limit)")
    if not has_valid_ops(script):
        raise CustodyRefused("nonstandard script", "invalid opcode or oversized push")
    ops = parse_script(script)
    count = sum(1 for op, _ in ops if op > OP_16)
    for i, (op, _) in enumerate(ops):
        if op == OP_CHECKMULTISIG and i > 0:
            prev = ops[i - 1][0]
            count += prev - 0x50 if 0x51 <= prev <= OP_16 else MAX_PUBKEYS_PER_MULTISIG
    if count > MAX_OPS_PER_SCRIPT:
        raise CustodyRefused("nonstandard script", f"{count} operations > {MAX_OPS_PER_SCRIPT}")
