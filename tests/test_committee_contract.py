"""The bridge contract (``htlc/contracts/CollateralBridge.sol``) on the real Anvil, through its binding
(``bridge/committee/contract.py``): one named test per exploit of 2021-23 it must not allow.

Every release pays an open withdrawal request: a test's release message is built from a request the
account made first (``Env.withdrawal``), so that the rule the test names is the only one it breaks.

Messages and committees are ``bridge.committee.messages``'s types, but signatures are made
independently of its digest, with ``eth_account``'s ``encode_typed_data`` and
``Account.unsafe_sign_hash``: the contract must agree with them.  What an attacker would send and
the message module refuses to build (an unknown kind, a zero amount, a 2-of-5 committee) is made
with ``forge``, which skips the module's checks: the contract must refuse it on its own.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_canonical_address, to_checksum_address

from bridge.committee.contract import CollateralBridge, btc_request_commitment, request_commitment
from bridge.committee.messages import BTC_ASSET, MESSAGE_VERSION, Committee, Kind, Message
from bridge.core.errors import ContractReverted
from devnets.controls import AnvilControls
from htlc.evm import ETH, Erc20

ONE_ETH = 10**18
SIGNER_KEYS = [keccak(f"committee-test-signer-{i}".encode()) for i in range(8)]
MESSAGE_TYPES = [
    {"name": "version", "type": "uint8"},
    {"name": "kind", "type": "uint8"},
    {"name": "sourceChainId", "type": "uint64"},
    {"name": "sourceTx", "type": "bytes32"},
    {"name": "sourceIndex", "type": "uint32"},
    {"name": "destChainId", "type": "uint64"},
    {"name": "account", "type": "address"},
    {"name": "asset", "type": "address"},
    {"name": "amount", "type": "uint256"},
    {"name": "nonce", "type": "uint64"},
    {"name": "expiry", "type": "uint64"},
    {"name": "payloadHash", "type": "bytes32"},
]
DOMAIN_TYPES = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def forge(cls: type, **fields: object):
    """A ``Message`` or ``Committee`` built without the message module's checks, as an attacker
    would send it (``dataclasses`` hands the fields to the contract unchanged)."""
    forged = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(forged, name, value)
    return forged


def digest(m: Message, chain_id: int, contract: str) -> bytes:
    signable = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": DOMAIN_TYPES, "Message": MESSAGE_TYPES},
            "primaryType": "Message",
            "domain": {"name": "CollateralBridge", "version": "1", "chainId": chain_id, "verifyingContract": contract},
            "message": {
                "version": m.version,
                "kind": m.kind,
                "sourceChainId": m.source_chain_id,
                "sourceTx": m.source_tx,
                "sourceIndex": m.source_index,
                "destChainId": m.dest_chain_id,
                "account": to_checksum_address(m.account),
                "asset": to_checksum_address(m.asset),
                "amount": m.amount,
                "nonce": m.nonce,
                "expiry": m.expiry,
                "payloadHash": m.payload_hash,
            },
        }
    )
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


class Keys:
    """Committee keys by address, signing EIP-712 digests."""

    def __init__(self, secrets: list[bytes]) -> None:
        self.by_address = {to_canonical_address(Account.from_key(k).address): k for k in secrets}

    def committee(self, epoch: int, threshold: int) -> Committee:
        """The keys' committee; one whose threshold the rules refuse is forged (for the contract to refuse)."""
        signers = tuple(sorted(self.by_address))
        if Committee.min_threshold(len(signers)) <= threshold <= len(signers):
            return Committee(epoch, signers, threshold)
        return forge(Committee, epoch=epoch, signers=signers, threshold=threshold)

    def quorum(self, committee: Committee, h: bytes, count: int | None = None, signers: list[bytes] | None = None) -> tuple[list[int], list[bytes]]:
        chosen = signers if signers is not None else list(committee.signers[: count or committee.threshold])
        indices = sorted(committee.signers.index(s) for s in chosen)
        sigs = [bytes(Account.unsafe_sign_hash(h, self.by_address[committee.signers[i]]).signature) for i in indices]
        return indices, sigs


class Env:
    """A fresh bridge (3-of-4 committee, ETH and one token listed) and funded parties."""

    def __init__(self, evm, bridge: CollateralBridge, keys: Keys, committee: Committee, parties: dict[str, Account], token: Erc20, chain_id: int) -> None:
        self.evm, self.bridge, self.keys, self.committee = evm, bridge, keys, committee
        self.parties, self.token, self.chain_id = parties, token, chain_id

    def key(self, who: str) -> str:
        return self.parties[who].key.to_0x_hex()

    async def now(self) -> int:
        return (await self.evm.head()).timestamp

    async def message(
        self, kind: int = Kind.RELEASE, amount: int = ONE_ETH, asset: str | bytes = ETH, nonce: int = 1, ttl: int = 600, forged: bool = False, **kw
    ) -> Message:
        """A message to this bridge; ``forged``: built without the message module's checks."""
        fields = dict(
            version=MESSAGE_VERSION,
            kind=kind,
            source_chain_id=0,
            source_tx=keccak(b"source tx %d" % nonce),
            source_index=0,
            dest_chain_id=self.chain_id,
            account=to_canonical_address(self.parties["user"].address),
            asset=to_canonical_address(asset),
            amount=amount,
            nonce=nonce,
            payload_hash=bytes(32),
        )
        fields.update(kw)
        fields.setdefault("expiry", await self.now() + ttl)
        return forge(Message, **fields) if forged else Message(**fields)

    async def withdrawal(self, amount: int = ONE_ETH, asset: str | bytes = ETH, who: str = "user", fund: bool = True, **kw) -> Message:
        """``who`` deposits ``amount`` (unless not ``fund``) and requests its withdrawal; the RELEASE
        of that request (its nonce, account, asset and amount; ``kw`` as for ``message``)."""
        if fund:
            await self.fund_margin(who, asset, amount)
        (event,) = self.bridge.events_in(await self.bridge.request_withdrawal(self.key(who), asset, amount))
        assert event.name == "WithdrawalRequested"
        kw.setdefault("account", to_canonical_address(self.parties[who].address))
        return await self.message(amount=amount, asset=asset, nonce=event["requestNonce"], **kw)

    async def fund_margin(self, who: str, asset: str | bytes, amount: int) -> None:
        """Deposit ``amount`` into ``who``'s margin: a request takes from it at once."""
        if to_canonical_address(asset) == bytes(20):
            await self.bridge.deposit_eth(self.key(who), amount)
            return
        deployer, party = self.key("deployer"), self.parties[who].address
        await self.evm.wait_for_receipt(await self.token.mint(deployer, party, amount))
        await self.evm.wait_for_receipt(await self.token.approve(self.key(who), self.bridge.address, amount))
        await self.bridge.deposit_erc20(self.key(who), self.token.address, amount)

    async def credit_btc(self, who: str, amount: int, vout: int = 0) -> None:
        """BTC margin for ``who`` the only way there is: a quorum's DEPOSIT_CREDIT."""
        m = await self.message(
            kind=Kind.DEPOSIT_CREDIT,
            asset=BTC_ASSET,
            amount=amount,
            nonce=0,
            account=to_canonical_address(self.parties[who].address),
            source_tx=keccak(b"btc deposit %d %s" % (vout, who.encode())),
            source_index=vout,
        )
        await self.bridge.credit_deposit(self.key("relayer"), m, self.committee, *self.sign(m))

    def sign(self, m: Message, committee: Committee | None = None, count: int | None = None, **kw) -> tuple[list[int], list[bytes]]:
        committee = committee or self.committee
        return self.keys.quorum(committee, digest(m, self.chain_id, self.bridge.address), count, **kw)

    async def release(self, m: Message, committee: Committee | None = None, quorum=None):
        committee = committee or self.committee
        indices, sigs = quorum or self.sign(m, committee)
        return await self.bridge.release(self.key("relayer"), m, committee, indices, sigs)


async def make_env(evm, grace: int = 3600, caps: dict[str, int] | None = None, token_kind: str = "TestToken") -> Env:
    controls = AnvilControls(evm)
    parties = {name: Account.create() for name in ("deployer", "user", "relayer", "guardian", "stranger")}
    for acct in parties.values():
        await controls.set_balance(acct.address, 100 * ONE_ETH)
    deployer = parties["deployer"].key.to_0x_hex()
    token = await Erc20.deploy(evm, deployer, token_kind, "Test USD", "TUSD", 6)
    keys = Keys(SIGNER_KEYS[:4])
    committee = keys.committee(0, 3)
    listed = caps if caps is not None else {ETH: 10 * ONE_ETH, token.address: 10**12}
    bridge = await CollateralBridge.deploy(evm, deployer, committee, [parties["guardian"].address], listed, grace=grace)
    await controls.set_balance(bridge.address, 50 * ONE_ETH)
    return Env(evm, bridge, keys, committee, parties, token, await evm.chain_id_int())


@pytest.fixture
async def env(evm) -> Env:
    return await make_env(evm)


async def refused(reason: str, call) -> None:
    with pytest.raises(ContractReverted) as caught:
        await call
    assert caught.value.reason == reason, caught.value.message


# --- releases -------------------------------------------------------------------------------


async def test_valid_3_of_4_release_pays_once_and_replay_is_refused(env):
    m = await env.withdrawal(amount=2 * ONE_ETH)
    assert await env.bridge.request_open(m.nonce) and not await env.bridge.released(m.nonce)
    assert await env.bridge.message_id(m) == digest(m, env.chain_id, env.bridge.address)
    account = to_checksum_address(m.account)
    before = await env.evm.balance(account)
    receipt = await env.release(m)
    assert await env.evm.balance(account) == before + 2 * ONE_ETH
    (event,) = env.bridge.events_in(receipt)
    assert (event.name, event["id"], event["account"], event["amount"]) == ("Released", digest(m, env.chain_id, env.bridge.address), account, 2 * ONE_ETH)
    assert await env.bridge.released(m.nonce) and not await env.bridge.request_open(m.nonce)
    assert not await env.bridge.consumed(event["id"])  # releases are tracked by their request
    await refused("AlreadyConsumed", env.release(m))
    assert await env.evm.balance(account) == before + 2 * ONE_ETH


async def test_all_four_signers_also_release(env):
    m = await env.withdrawal()
    await env.release(m, quorum=env.sign(m, count=4))


async def test_expired_message_refused(env):
    m = await env.withdrawal(ttl=-1)
    await refused("MessageExpired", env.release(m))


async def test_m_minus_one_signers_refused(env):
    m = await env.withdrawal()
    await refused("NotEnoughSignatures", env.release(m, quorum=env.sign(m, count=2)))
    await refused("NotEnoughSignatures", env.release(m, quorum=([], [])))


async def test_duplicate_and_unsorted_indices_refused(env):
    m = await env.withdrawal()
    indices, sigs = env.sign(m)
    await refused("IndicesNotAscending", env.release(m, quorum=([indices[0], indices[0], indices[1]], [sigs[0], sigs[0], sigs[1]])))
    await refused("IndicesNotAscending", env.release(m, quorum=(indices[::-1], sigs[::-1])))


async def test_signer_outside_the_set_refused(env):
    m = await env.withdrawal()
    indices, sigs = env.sign(m)
    outsider = Account.unsafe_sign_hash(digest(m, env.chain_id, env.bridge.address), SIGNER_KEYS[5]).signature
    await refused("WrongSigner", env.release(m, quorum=(indices, [sigs[0], sigs[1], bytes(outsider)])))
    await refused("IndexOutOfRange", env.release(m, quorum=([0, 1, 4], [sigs[0], sigs[1], bytes(outsider)])))


async def test_non_canonical_signatures_refused(env):
    m = await env.withdrawal()
    indices, sigs = env.sign(m)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    r, s, v = sigs[0][:32], int.from_bytes(sigs[0][32:64], "big"), sigs[0][64]
    high_s = r + (n - s).to_bytes(32, "big") + bytes([55 - v])  # the same signature, malleated
    await refused("HighS", env.release(m, quorum=(indices, [high_s, *sigs[1:]])))
    await refused("BadV", env.release(m, quorum=(indices, [sigs[0][:64] + bytes([v - 27]), *sigs[1:]])))
    await refused("ZeroRecovered", env.release(m, quorum=(indices, [bytes(64) + bytes([27]), *sigs[1:]])))


async def test_signature_for_another_chain_id_or_contract_refused(env):
    m = await env.withdrawal()
    for h in (digest(m, env.chain_id + 1, env.bridge.address), digest(m, env.chain_id, env.token.address)):
        await refused("WrongSigner", env.release(m, quorum=env.keys.quorum(env.committee, h)))
    # A message naming another destination chain is refused before any signature is read.
    other = await env.withdrawal(dest_chain_id=env.chain_id + 1)
    await refused("WrongChain", env.release(other))


async def test_wormhole_caller_supplied_set_not_matching_the_stored_hash_refused(env):
    forged_keys = Keys(SIGNER_KEYS[4:8])
    forged = forged_keys.committee(0, 3)
    m = await env.withdrawal()
    quorum = forged_keys.quorum(forged, digest(m, env.chain_id, env.bridge.address))
    await refused("UnknownCommittee", env.release(m, committee=forged, quorum=quorum))
    # The right signers with a lowered threshold or another epoch hash differently too.
    for committee in (forge(Committee, epoch=0, signers=env.committee.signers, threshold=2), Committee(1, env.committee.signers, 3)):
        await refused("UnknownCommittee", env.release(m, committee=committee, quorum=env.sign(m, committee, count=3)))


async def test_poly_kind_confusion_rotation_message_sent_to_release_refused(env):
    for kind in (Kind.ROTATION, Kind.UNPAUSE, Kind.DEPOSIT_CREDIT, Kind.SNAPSHOT_ROOT, 0, 99):
        m = await env.withdrawal(kind=kind, forged=True)
        await refused("WrongKind", env.release(m))
    # ... and a RELEASE message offered to rotate or unpause.
    m = await env.withdrawal()
    new = env.keys.committee(1, 3)
    await refused("WrongKind", env.bridge.rotate(env.key("relayer"), m, env.committee, *env.sign(m), new))
    await env.bridge.pause(env.key("guardian"))
    await refused("WrongKind", env.bridge.unpause(env.key("relayer"), m, env.committee, *env.sign(m)))


async def test_nomad_zero_amount_never_acts(env):
    m = await env.message(amount=0, forged=True)
    await refused("ZeroAmount", env.release(m))


async def test_wrong_version_refused(env):
    m = await env.withdrawal(version=2, forged=True)
    await refused("WrongVersion", env.release(m))


async def test_release_above_the_window_cap_refused(evm):
    env = await make_env(evm, caps={ETH: ONE_ETH})
    await env.release(await env.withdrawal(amount=ONE_ETH * 6 // 10))
    await refused("CapExceeded", env.release(await env.withdrawal(amount=ONE_ETH * 6 // 10)))
    await refused("CapExceeded", env.release(await env.withdrawal(amount=2 * ONE_ETH)))
    limit, used, _ = await env.bridge.cap(ETH)
    assert (limit, used) == (ONE_ETH, ONE_ETH * 6 // 10)


async def test_erc20_release_pays_the_token(env):
    await env.token.mint(env.key("deployer"), env.bridge.address, 10**9)
    m = await env.withdrawal(asset=env.token.address, amount=10**6)
    await env.release(m)
    assert await env.token.balance(to_checksum_address(m.account)) == 10**6


async def test_release_must_match_an_open_request(env):
    m = await env.withdrawal(amount=ONE_ETH)
    stranger = to_canonical_address(env.parties["stranger"].address)
    wrong = {
        "more than requested": await env.message(amount=2 * ONE_ETH, nonce=m.nonce),
        "another account": await env.message(account=stranger, nonce=m.nonce),
        "another (listed) asset": await env.message(asset=env.token.address, nonce=m.nonce),
    }
    for what, bad in wrong.items():
        with pytest.raises(ContractReverted) as caught:
            await env.release(bad, quorum=env.sign(bad, count=4))
        assert caught.value.reason == "RequestMismatch", what
    never = await env.message(nonce=m.nonce + 1)
    await refused("NoSuchRequest", env.release(never, quorum=env.sign(never, count=4)))
    # The stranger's own request does not pay the user either.
    theirs = await env.withdrawal(who="stranger")
    to_user = await env.message(nonce=theirs.nonce)
    await refused("RequestMismatch", env.release(to_user, quorum=env.sign(to_user, count=4)))
    assert await env.bridge.request_open(m.nonce) and await env.bridge.request_open(theirs.nonce)
    await env.release(m)
    assert await env.bridge.released(m.nonce) and not await env.bridge.released(theirs.nonce)


async def test_one_request_released_once_even_by_two_messages(env):
    first = await env.withdrawal(ttl=600)
    second = await env.message(nonce=first.nonce, ttl=1200)  # the same request, another expiry
    assert digest(first, env.chain_id, env.bridge.address) != digest(second, env.chain_id, env.bridge.address)
    quorums = env.sign(first, count=4), env.sign(second, count=4)
    account = to_checksum_address(first.account)
    before = await env.evm.balance(account)
    await env.release(first, quorum=quorums[0])
    await refused("AlreadyConsumed", env.release(second, quorum=quorums[1]))
    assert await env.evm.balance(account) == before + ONE_ETH


async def test_btc_asset_release_refused(env):
    # BTC is requested with a destination on Bitcoin and paid there, never released here.
    await refused("WrongAsset", env.bridge.request_withdrawal(env.key("user"), BTC_ASSET, 10**8))
    await env.credit_btc("user", 10**8)
    (event, _destination) = env.bridge.events_in(await env.bridge.request_btc_withdrawal(env.key("user"), 10**8, bytes.fromhex("0014" + "11" * 20)))
    m = await env.message(asset=BTC_ASSET, amount=10**8, nonce=event["requestNonce"])
    await refused("AssetNotListed", env.release(m, quorum=env.sign(m, count=4)))
    assert await env.bridge.request_open(m.nonce)
    assert (await env.bridge.cap(BTC_ASSET))[0] == 0


# --- committee rotation -----------------------------------------------------------------------


async def test_harmony_2_of_5_committee_refused_at_deploy(evm):
    keys = Keys(SIGNER_KEYS[:5])
    deployer = Account.create()
    await AnvilControls(evm).set_balance(deployer.address, 10 * ONE_ETH)
    for threshold, reason in ((2, "ThresholdTooLow"), (3, "ThresholdTooLow"), (6, "ThresholdTooHigh")):
        with pytest.raises(ContractReverted) as caught:
            await CollateralBridge.deploy(evm, deployer.key.to_0x_hex(), keys.committee(0, threshold), [deployer.address], {ETH: ONE_ETH})
        assert caught.value.reason == reason
    await CollateralBridge.deploy(evm, deployer.key.to_0x_hex(), keys.committee(0, 4), [deployer.address], {ETH: ONE_ETH})


async def rotation(env: Env, new: Committee, nonce: int = 100) -> Message:
    return await env.message(kind=Kind.ROTATION, amount=0, asset=ETH, nonce=nonce, payload_hash=new.hash)


async def test_harmony_rotation_to_2_of_5_refused(env):
    weak = Keys(SIGNER_KEYS[:5]).committee(1, 2)
    m = await rotation(env, weak)
    await refused("ThresholdTooLow", env.bridge.rotate(env.key("relayer"), m, env.committee, *env.sign(m), weak))
    assert await env.bridge.epoch() == 0


async def test_rotation_without_quorum_refused(env):
    new = Keys(SIGNER_KEYS[2:7]).committee(1, 4)
    m = await rotation(env, new)
    await refused("NotEnoughSignatures", env.bridge.rotate(env.key("relayer"), m, env.committee, *env.sign(m, count=2), new))
    # Nor by a quorum of the new set itself, nor skipping an epoch, nor to a set the message did not name.
    new_keys = Keys(SIGNER_KEYS[2:7])
    quorum = new_keys.quorum(new, digest(m, env.chain_id, env.bridge.address))
    await refused("UnknownCommittee", env.bridge.rotate(env.key("relayer"), m, new, *quorum, new))
    skip = Keys(SIGNER_KEYS[2:7]).committee(2, 4)
    m2 = await rotation(env, skip)
    await refused("EpochNotNext", env.bridge.rotate(env.key("relayer"), m2, env.committee, *env.sign(m2), skip))
    other = Keys(SIGNER_KEYS[3:7]).committee(1, 3)
    await refused("PayloadMismatch", env.bridge.rotate(env.key("relayer"), m, env.committee, *env.sign(m), other))
    assert await env.bridge.committee_hash() == env.committee.hash


async def test_rotation_then_old_set_message_lands_within_grace_window_not_after(evm):
    env = await make_env(evm, grace=600)
    in_flight = [await env.withdrawal(ttl=7200) for _ in range(2)]
    quorums = [env.sign(m) for m in in_flight]  # signed by epoch 0 before the rotation
    new = Keys(SIGNER_KEYS[3:8]).committee(1, 4)
    m = await rotation(env, new)
    receipt = await env.bridge.rotate(env.key("relayer"), m, env.committee, *env.sign(m), new)
    (event,) = env.bridge.events_in(receipt)
    assert (event.name, event["epoch"], event["committeeHash"]) == ("Rotated", 1, new.hash)
    assert (await env.bridge.epoch(), await env.bridge.committee_hash()) == (1, new.hash)
    await env.release(in_flight[0], quorum=quorums[0])  # the old set, within the grace window
    # The replaced set signs releases during the grace window, never another rotation.
    again = await rotation(env, Keys(SIGNER_KEYS[4:8]).committee(2, 3), 101)
    await refused("UnknownCommittee", env.bridge.rotate(env.key("relayer"), again, env.committee, *env.sign(again), new))
    await AnvilControls(evm).increase_time(601)
    await refused("CommitteeExpired", env.release(in_flight[1], quorum=quorums[1]))
    new_keys = Keys(SIGNER_KEYS[3:8])
    await env.bridge.release(env.key("relayer"), in_flight[1], new, *new_keys.quorum(new, digest(in_flight[1], env.chain_id, env.bridge.address)))


# --- pause --------------------------------------------------------------------------------------


async def test_release_while_paused_refused_and_unpause_by_quorum(env):
    assert not await env.bridge.paused()
    await env.fund_margin("user", ETH, ONE_ETH)
    await env.bridge.pause(env.key("guardian"))
    assert await env.bridge.paused()
    assert await env.bridge.pauses() == 1
    m = await env.withdrawal(fund=False)  # requests are still taken while paused
    await refused("IsPaused", env.release(m))
    await refused("IsPaused", env.bridge.deposit_eth(env.key("user"), ONE_ETH))
    unpause = await env.message(kind=Kind.UNPAUSE, amount=0, nonce=1)
    await refused("NotEnoughSignatures", env.bridge.unpause(env.key("relayer"), unpause, env.committee, *env.sign(unpause, count=2)))
    await env.bridge.unpause(env.key("stranger"), unpause, env.committee, *env.sign(unpause))
    assert not await env.bridge.paused()
    await env.release(m)
    # The same unpause message cannot lift a later pause.
    await env.bridge.pause(env.key("guardian"))
    await refused("WrongPause", env.bridge.unpause(env.key("relayer"), unpause, env.committee, *env.sign(unpause)))
    assert await env.bridge.paused()


async def test_unpause_signed_for_an_earlier_pause_cannot_lift_a_later_one(env):
    relayer, guardian = env.key("relayer"), env.key("guardian")
    await env.bridge.pause(guardian)
    first = await env.message(kind=Kind.UNPAUSE, amount=0, nonce=1, ttl=600)
    also_first = await env.message(kind=Kind.UNPAUSE, amount=0, nonce=1, ttl=1200)  # signed, never used
    held = env.sign(also_first)
    await env.bridge.unpause(relayer, first, env.committee, *env.sign(first))
    await env.bridge.pause(guardian)
    assert (await env.bridge.paused(), await env.bridge.pauses()) == (True, 2)
    # Neither message of the first pause lifts the second, even by a full quorum; nor one for a pause to come.
    await refused("WrongPause", env.bridge.unpause(relayer, also_first, env.committee, *held))
    await refused("WrongPause", env.bridge.unpause(relayer, also_first, env.committee, *env.sign(also_first, count=4)))
    ahead = await env.message(kind=Kind.UNPAUSE, amount=0, nonce=3)
    await refused("WrongPause", env.bridge.unpause(relayer, ahead, env.committee, *env.sign(ahead)))
    assert await env.bridge.paused()
    second = await env.message(kind=Kind.UNPAUSE, amount=0, nonce=2)
    await env.bridge.unpause(relayer, second, env.committee, *env.sign(second))
    assert not await env.bridge.paused()
    await refused("NotPaused", env.bridge.unpause(relayer, second, env.committee, *env.sign(second)))


async def test_pause_by_a_non_guardian_refused(env):
    await refused("NotGuardian", env.bridge.pause(env.key("stranger")))
    await refused("NotGuardian", env.bridge.pause(env.key("relayer")))
    assert not await env.bridge.paused()


# --- deposits and withdrawal requests -------------------------------------------------------------


async def test_eth_deposit_credited_and_withdrawal_requested(env):
    receipt = await env.bridge.deposit_eth(env.key("user"), ONE_ETH)
    (event,) = env.bridge.events_in(receipt)
    assert (event.name, event["account"], event["asset"], event["amount"], event["depositNonce"]) == ("Deposited", env.parties["user"].address, ETH, ONE_ETH, 0)
    receipt = await env.bridge.request_withdrawal(env.key("user"), ETH, ONE_ETH // 2)
    (event,) = env.bridge.events_in(receipt)
    assert (event.name, event["account"], event["amount"], event["requestNonce"]) == ("WithdrawalRequested", env.parties["user"].address, ONE_ETH // 2, 0)
    assert await env.bridge.request_commitment(0) == request_commitment(env.parties["user"].address, ETH, ONE_ETH // 2)
    assert await env.bridge.request_open(0) and not await env.bridge.released(0)
    assert not await env.bridge.request_open(1) and not await env.bridge.released(1)
    await refused("ZeroAmount", env.bridge.request_withdrawal(env.key("user"), ETH, 0))
    # BTC is requested with its Bitcoin destination, which the request commits to.
    await env.credit_btc("user", 10**8)
    script = bytes.fromhex("0014" + "22" * 20)
    (event, dest) = env.bridge.events_in(await env.bridge.request_btc_withdrawal(env.key("user"), 10**8, script))
    assert (event["asset"], event["amount"], event["requestNonce"]) == (to_checksum_address(BTC_ASSET), 10**8, 1)
    assert (dest.name, dest["requestNonce"], dest["destination"]) == ("BtcDestination", 1, script)
    assert await env.bridge.request_commitment(1) == btc_request_commitment(env.parties["user"].address, 10**8, script)
    await refused("BadDestination", env.bridge.request_btc_withdrawal(env.key("user"), 10**8, b"\x00"))
    await refused("BadDestination", env.bridge.request_btc_withdrawal(env.key("user"), 10**8, bytes(43)))
    assert await env.bridge.request_nonce() == 2
    await refused("BadDestination", env.bridge.request_btc_withdrawal(env.key("user"), 10**8, bytes.fromhex("6a" + "22" * 20)))  # OP_RETURN
    assert await env.bridge.request_nonce() == 2
    names = [e.name for e in await env.bridge.events()]
    assert names == ["Deposited", "WithdrawalRequested", "Credited", "WithdrawalRequested", "BtcDestination"]
    # What was requested left the margin book at once.
    assert await env.bridge.balance_of(env.parties["user"].address, ETH) == ONE_ETH // 2
    assert await env.bridge.balance_of(env.parties["user"].address, BTC_ASSET) == 0


async def test_qubit_deposits_of_zero_address_codeless_token_or_zero_refused(env):
    user = env.key("user")
    await refused("ZeroAddressToken", env.bridge.deposit_erc20(user, ETH, ONE_ETH))
    await refused("NotAContract", env.bridge.deposit_erc20(user, env.parties["stranger"].address, ONE_ETH))
    await refused("NotAContract", env.bridge.deposit_erc20(user, BTC_ASSET, ONE_ETH))
    await refused("ZeroAmount", env.bridge.deposit_erc20(user, env.token.address, 0))
    await refused("ZeroAmount", env.bridge.deposit_eth(user, 0))
    unlisted = await Erc20.deploy(env.evm, env.key("deployer"), "TestToken", "Other", "OTH", 18)
    await refused("AssetNotListed", env.bridge.deposit_erc20(user, unlisted.address, 1))
    # Without an allowance no funds move: the token refuses, and so does the deposit.
    await env.token.mint(env.key("deployer"), env.parties["user"].address, 10**6)
    await refused("TransferFailed", env.bridge.deposit_erc20(user, env.token.address, 10**6))
    assert await env.bridge.events() == []


async def test_erc20_deposit_credits_the_amount(env):
    user = env.parties["user"]
    await env.token.mint(env.key("deployer"), user.address, 10**6)
    await env.token.approve(env.key("user"), env.bridge.address, 10**6)
    (event,) = env.bridge.events_in(await env.bridge.deposit_erc20(env.key("user"), env.token.address, 10**6))
    assert (event["asset"], event["amount"]) == (env.token.address, 10**6)


async def test_fee_on_transfer_deposit_credited_with_what_arrived(evm):
    env = await make_env(evm, token_kind="FeeOnTransferToken")
    user = env.parties["user"]
    await env.token.mint(env.key("deployer"), user.address, 10**6)
    await env.token.approve(env.key("user"), env.bridge.address, 10**6)
    (event,) = env.bridge.events_in(await env.bridge.deposit_erc20(env.key("user"), env.token.address, 10**6))
    assert event["amount"] == 10**6 - 10**4 == await env.token.balance(env.bridge.address)
