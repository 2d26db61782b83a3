"""The EVM HTLC on a real Anvil: every outcome is checked on chain (balances, swap status, events).

Contracts are deployed once per session; every test uses fresh accounts funded with
``anvil_setBalance``, so tests neither share balances nor touch the dev accounts' nonces.
Time moves only forward (to a swap's expiry), and every expiry is computed from the
chain's clock, so other tests on the same Anvil are not disturbed.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.core.errors import ContractReverted, InputError
from chains.evm import EvmAdapter
from devnets.anvil import rpc
from htlc import compile as htlc_compile
from htlc.evm import (
    ETH,
    Claimed,
    Erc20,
    EvmHtlc,
    Locked,
    Refunded,
    SwapParams,
    SwapStatus,
    compute_swap_id,
    decode_result,
    encode_call,
    load_artifact,
    revert_reason,
)

ONE_ETH = 10**18
LOCK_SECONDS = 600


@dataclass(frozen=True)
class Party:
    address: str
    key: str


def new_party(url: str, wei: int = 10 * ONE_ETH) -> Party:
    acct = Account.create()
    if wei:
        rpc(url, "anvil_setBalance", [acct.address, hex(wei)])
    return Party(acct.address, acct.key.to_0x_hex())


def chain_time(url: str) -> int:
    return int(rpc(url, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)


def warp_to(url: str, timestamp: int) -> None:
    """Mine a block at ``timestamp`` (or just after the head, if the chain is already later)."""
    rpc(url, "evm_setNextBlockTimestamp", [max(timestamp, chain_time(url) + 1)])
    rpc(url, "evm_mine")


def secret_pair() -> tuple[bytes, bytes]:
    preimage = secrets.token_bytes(32)
    return preimage, hashlib.sha256(preimage).digest()


@pytest.fixture(scope="session")
def deployed(anvil) -> dict[str, str]:
    async def deploy() -> dict[str, str]:
        chain = await EvmAdapter.connect(anvil.url)
        deployer = new_party(anvil.url)
        try:
            return {
                "htlc": (await EvmHtlc.deploy(chain, deployer.key)).address,
                "TestToken": (await Erc20.deploy(chain, deployer.key, "TestToken", "Test USD", "TUSD", 6)).address,
                "NoReturnToken": (await Erc20.deploy(chain, deployer.key, "NoReturnToken", "No Return", "NRT", 18)).address,
                "FeeOnTransferToken": (await Erc20.deploy(chain, deployer.key, "FeeOnTransferToken", "Fee", "FEE", 18)).address,
            }
        finally:
            await chain.close()

    return asyncio.run(deploy())


@pytest.fixture
async def chain(anvil):
    c = await EvmAdapter.connect(anvil.url)
    yield c
    await c.close()


@pytest.fixture
def htlc(chain, deployed) -> EvmHtlc:
    return EvmHtlc(chain, deployed["htlc"])


@pytest.fixture
def url(anvil) -> str:
    return anvil.url


def token(chain, deployed, kind: str = "TestToken") -> Erc20:
    return Erc20(chain, deployed[kind], kind)


async def lock_eth(htlc: EvmHtlc, url: str, sender: Party, recipient: Party, amount: int = ONE_ETH):
    preimage, hashlock = secret_pair()
    expiry = chain_time(url) + LOCK_SECONDS
    swap_id, _ = await htlc.lock(sender.key, recipient.address, ETH, amount, hashlock, expiry)
    return swap_id, preimage, expiry


async def lock_token(htlc: EvmHtlc, erc20: Erc20, url: str, sender: Party, recipient: Party, amount: int):
    await erc20.mint(sender.key, sender.address, amount)
    await erc20.approve(sender.key, htlc.address, amount)
    preimage, hashlock = secret_pair()
    expiry = chain_time(url) + LOCK_SECONDS
    swap_id, _ = await htlc.lock(sender.key, recipient.address, erc20.address, amount, hashlock, expiry)
    return swap_id, preimage, expiry


async def assert_refused(reason: str, coro) -> None:
    with pytest.raises(ContractReverted) as info:
        await coro
    assert info.value.reason == reason, info.value.message


# --- happy paths ------------------------------------------------------------------------


async def test_eth_lock_then_relayer_claims_for_offline_recipient(htlc, chain, url):
    sender, relayer = new_party(url), new_party(url)
    recipient = new_party(url, wei=0)  # offline and without gas money
    held_before = await chain.balance(htlc.address)

    swap_id, preimage, expiry = await lock_eth(htlc, url, sender, recipient, 3 * ONE_ETH)
    assert await chain.balance(htlc.address) == held_before + 3 * ONE_ETH
    assert await htlc.swap(swap_id) == SwapStatus.LOCKED

    # By id only: the parameters come back from the Locked event.
    await htlc.claim(relayer.key, swap_id, preimage)
    assert await chain.balance(recipient.address) == 3 * ONE_ETH
    assert await chain.balance(htlc.address) == held_before
    assert await htlc.swap(swap_id) == SwapStatus.CLAIMED
    claimed = [e for e in await htlc.events(swap_id=swap_id) if isinstance(e, Claimed)]
    assert [c.preimage for c in claimed] == [preimage]


async def test_eth_lock_then_refund_at_expiry(htlc, chain, url):
    sender, recipient, relayer = new_party(url), new_party(url), new_party(url)
    swap_id, _, expiry = await lock_eth(htlc, url, sender, recipient)
    after_lock = await chain.balance(sender.address)

    warp_to(url, expiry)  # refund is allowed at expiry exactly
    await htlc.refund(relayer.key, swap_id)  # anyone may trigger it; the sender is paid
    assert await chain.balance(sender.address) == after_lock + ONE_ETH
    assert await htlc.swap(swap_id) == SwapStatus.REFUNDED
    assert any(isinstance(e, Refunded) for e in await htlc.events(swap_id=swap_id))


async def test_erc20_lock_then_claim(htlc, chain, deployed, url):
    erc20 = token(chain, deployed)
    assert await erc20.decimals() == 6
    sender, recipient = new_party(url), new_party(url)
    amount = 1_250_000_000  # 1,250 TUSD in base units
    swap_id, preimage, _ = await lock_token(htlc, erc20, url, sender, recipient, amount)
    assert await erc20.balance(sender.address) == 0
    held = await erc20.balance(htlc.address)

    await htlc.claim(recipient.key, swap_id, preimage)
    assert await erc20.balance(recipient.address) == amount
    assert await erc20.balance(htlc.address) == held - amount


async def test_erc20_lock_then_refund(htlc, chain, deployed, url):
    erc20 = token(chain, deployed)
    sender, recipient = new_party(url), new_party(url)
    swap_id, _, expiry = await lock_token(htlc, erc20, url, sender, recipient, 777)
    warp_to(url, expiry + 1)
    await htlc.refund(sender.key, swap_id)
    assert await erc20.balance(sender.address) == 777
    assert await erc20.balance(recipient.address) == 0


async def test_no_return_token_locks_and_claims(htlc, chain, deployed, url):
    erc20 = token(chain, deployed, "NoReturnToken")
    sender, recipient = new_party(url), new_party(url)
    swap_id, preimage, _ = await lock_token(htlc, erc20, url, sender, recipient, 5 * ONE_ETH)
    await htlc.claim(recipient.key, swap_id, preimage)
    assert await erc20.balance(recipient.address) == 5 * ONE_ETH


async def test_locked_event_carries_everything_to_recompute_the_id(htlc, url):
    sender, recipient = new_party(url), new_party(url)
    assert await htlc.nonce(sender.address) == 0
    ids = [(await lock_eth(htlc, url, sender, recipient, 1000 + i))[0] for i in range(2)]
    assert await htlc.nonce(sender.address) == 2
    for nonce, swap_id in enumerate(ids):
        event = await htlc.locked_swap(swap_id)
        assert isinstance(event, Locked)
        assert event.swap.nonce == nonce
        assert event.swap.sender == sender.address and event.swap.recipient == recipient.address
        assert event.swap.amount == 1000 + nonce
        assert compute_swap_id(event.swap) == swap_id


# --- refusals --------------------------------------------------------------------------


async def test_claim_with_wrong_or_wrong_length_preimage_refused(htlc, chain, url):
    sender, recipient = new_party(url), new_party(url)
    swap_id, preimage, _ = await lock_eth(htlc, url, sender, recipient)
    before = await chain.balance(recipient.address)

    await assert_refused("WrongPreimage", htlc.claim(recipient.key, swap_id, secrets.token_bytes(32)))
    await assert_refused("PreimageNot32Bytes", htlc.claim(recipient.key, swap_id, preimage + b"\x00"))
    await assert_refused("PreimageNot32Bytes", htlc.claim(recipient.key, swap_id, preimage[:31]))

    # A swap locked to the hash of a 33-byte secret: the hash matches, the length rule
    # alone refuses it (as OP_SIZE 32 would on the Bitcoin leg).
    long_preimage = secrets.token_bytes(33)
    long_id, _ = await htlc.lock(sender.key, recipient.address, ETH, ONE_ETH, hashlib.sha256(long_preimage).digest(), chain_time(url) + LOCK_SECONDS)
    await assert_refused("PreimageNot32Bytes", htlc.claim(recipient.key, long_id, long_preimage))

    assert await htlc.swap(swap_id) == SwapStatus.LOCKED
    assert await htlc.swap(long_id) == SwapStatus.LOCKED
    assert await chain.balance(recipient.address) == before


async def test_claim_after_expiry_refused_then_refund_works(htlc, chain, url):
    sender, recipient = new_party(url), new_party(url)
    swap_id, preimage, expiry = await lock_eth(htlc, url, sender, recipient)
    warp_to(url, expiry)  # at expiry the claim window is closed
    await assert_refused("Expired", htlc.claim(recipient.key, swap_id, preimage))
    after_lock = await chain.balance(sender.address)
    await htlc.refund(recipient.key, swap_id)
    assert await chain.balance(sender.address) == after_lock + ONE_ETH


async def test_refund_before_expiry_refused(htlc, chain, url):
    sender, recipient = new_party(url), new_party(url)
    swap_id, _, expiry = await lock_eth(htlc, url, sender, recipient)
    warp_to(url, expiry - 60)
    await assert_refused("NotExpired", htlc.refund(sender.key, swap_id))
    assert await htlc.swap(swap_id) == SwapStatus.LOCKED


async def test_each_swap_settles_at_most_once(htlc, chain, url):
    sender, recipient = new_party(url), new_party(url)
    claimed_id, preimage, _ = await lock_eth(htlc, url, sender, recipient)
    refunded_id, preimage2, expiry2 = await lock_eth(htlc, url, sender, recipient)
    await htlc.claim(recipient.key, claimed_id, preimage)
    await assert_refused("AlreadySettled", htlc.claim(recipient.key, claimed_id, preimage))

    warp_to(url, expiry2)
    await htlc.refund(sender.key, refunded_id)
    await assert_refused("AlreadySettled", htlc.refund(sender.key, refunded_id))
    await assert_refused("AlreadySettled", htlc.claim(recipient.key, refunded_id, preimage2))
    await assert_refused("AlreadySettled", htlc.refund(sender.key, claimed_id))


async def test_fee_on_transfer_token_refused(htlc, chain, deployed, url):
    erc20 = token(chain, deployed, "FeeOnTransferToken")
    sender, recipient = new_party(url), new_party(url)
    with pytest.raises(ContractReverted) as info:
        await lock_token(htlc, erc20, url, sender, recipient, 100 * ONE_ETH)
    assert info.value.reason == "FeeOnTransferToken"
    assert await erc20.balance(sender.address) == 100 * ONE_ETH
    assert await htlc.nonce(sender.address) == 0


async def test_bad_locks_refused(htlc, chain, deployed, url):
    sender, recipient = new_party(url), new_party(url)
    _, hashlock = secret_pair()
    expiry = chain_time(url) + LOCK_SECONDS
    await assert_refused("ZeroAmount", htlc.lock(sender.key, recipient.address, ETH, 0, hashlock, expiry))
    await assert_refused("ExpiryInPast", htlc.lock(sender.key, recipient.address, ETH, 1, hashlock, chain_time(url)))
    await assert_refused("ZeroRecipient", htlc.lock(sender.key, ETH, ETH, 1, hashlock, expiry))
    await assert_refused("NotAContract", htlc.lock(sender.key, recipient.address, recipient.address, 1, hashlock, expiry))
    # ETH value that differs from the amount, and ETH sent along with a token lock.
    for tok, value in ((ETH, 2), (deployed["TestToken"], 1)):
        data = encode_call(htlc.abi, "lock", recipient.address, tok, 1, hashlock, expiry)
        with pytest.raises(ContractReverted) as info:
            await chain.transact(sender.key, htlc.address, value, data)
        assert revert_reason(info.value.data) == "AmountMismatch"
    with pytest.raises(InputError):
        await htlc.lock(sender.key, recipient.address, ETH, 1, hashlock[:31], expiry)
    assert await htlc.nonce(sender.address) == 0


async def test_claim_of_unknown_swap_refused(htlc, url):
    sender, recipient = new_party(url), new_party(url)
    preimage, hashlock = secret_pair()
    never_locked = SwapParams(sender.address, recipient.address, ETH, 1, hashlock, chain_time(url) + 60, 0)
    await assert_refused("UnknownSwap", htlc.claim(recipient.key, never_locked, preimage))


# --- ids and artifacts -----------------------------------------------------------------

addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
uint256 = st.integers(min_value=0, max_value=2**256 - 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sender=addresses, recipient=addresses, tok=addresses, amount=uint256, hashlock=st.binary(min_size=32, max_size=32), expiry=uint256, nonce=uint256)
def test_python_swap_id_matches_contract(url, deployed, sender, recipient, tok, amount, hashlock, expiry, nonce):
    params = SwapParams(sender, recipient, tok, amount, hashlock, expiry, nonce)
    abi = load_artifact("HTLC")["abi"]
    raw = rpc(url, "eth_call", [{"to": deployed["htlc"], "data": "0x" + encode_call(abi, "swapId", params.as_tuple()).hex()}, "latest"])
    assert decode_result(abi, "swapId", bytes.fromhex(raw[2:]))[0] == compute_swap_id(params)


def test_committed_artifacts_match_sources():
    assert htlc_compile.main(["--check"]) == 0


def test_check_notices_a_stale_artifact(tmp_path, monkeypatch):
    committed = {p.name: p.read_text() for p in htlc_compile.ARTIFACTS_DIR.glob("*.json")}
    for name, text in committed.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "HTLC.json").write_text(committed["HTLC.json"].replace('"bytecode": "0x60', '"bytecode": "0x61', 1))
    (tmp_path / "Removed.json").write_text("{}")
    monkeypatch.setattr(htlc_compile, "ARTIFACTS_DIR", tmp_path)
    assert htlc_compile.differences(committed) == [
        "HTLC.json: differs from a fresh compile",
        "Removed.json: no contract of that name in the sources",
    ]


# --- reentrancy and concurrency ---------------------------------------------------------

#: A recipient that, when paid, tries to claim the same swap again and records why it could not.
REENTRANT_RECIPIENT = """
// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;
import "HTLC.sol";

contract ReentrantRecipient {
    HTLC public immutable htlc;
    HTLC.Swap private swap;
    bytes private preimage;
    bytes public innerRevert;
    uint256 public received;

    constructor(HTLC htlc_) { htlc = htlc_; }

    function arm(HTLC.Swap calldata swap_, bytes calldata preimage_) external {
        swap = swap_;
        preimage = preimage_;
    }

    receive() external payable {
        received += msg.value;
        try htlc.claim(swap, preimage) {} catch (bytes memory reason) { innerRevert = reason; }
    }
}
"""


async def test_reentrant_claim_is_refused_and_pays_once(htlc, chain, url):
    sources = {**htlc_compile.read_sources(), "ReentrantRecipient.sol": REENTRANT_RECIPIENT}
    attacker_art = htlc_compile.run_solc(sources)["contracts"]["ReentrantRecipient.sol"]["ReentrantRecipient"]
    sender, relayer = new_party(url), new_party(url)
    attacker = await chain.deploy(sender.key, attacker_art["abi"], attacker_art["evm"]["bytecode"]["object"], htlc.address)

    held_before = await chain.balance(htlc.address)
    swap_id, preimage, _ = await lock_eth(htlc, url, sender, Party(attacker, ""), 2 * ONE_ETH)
    swap = (await htlc.locked_swap(swap_id)).swap
    await chain.wait_for_receipt(await chain.transact(sender.key, attacker, 0, encode_call(attacker_art["abi"], "arm", swap.as_tuple(), preimage)))

    await htlc.claim(relayer.key, swap_id, preimage)
    assert await chain.balance(attacker) == 2 * ONE_ETH
    assert await chain.balance(htlc.address) == held_before
    inner = decode_result(attacker_art["abi"], "innerRevert", await chain.call(attacker, encode_call(attacker_art["abi"], "innerRevert")))[0]
    assert revert_reason("0x" + inner.hex()) == "Reentrancy"


async def test_concurrent_locks_from_one_sender_get_distinct_nonces(htlc, url):
    sender, recipient = new_party(url), new_party(url)
    _, hashlock = secret_pair()
    expiry = chain_time(url) + LOCK_SECONDS
    results = await asyncio.gather(*(htlc.lock(sender.key, recipient.address, ETH, 100 + i, hashlock, expiry) for i in range(5)))
    swaps = [(await htlc.locked_swap(swap_id)).swap for swap_id, _ in results]
    assert sorted(s.nonce for s in swaps) == [0, 1, 2, 3, 4]
    assert sorted(s.amount for s in swaps) == [100, 101, 102, 103, 104]
    assert [await htlc.swap(swap_id) for swap_id, _ in results] == [SwapStatus.LOCKED] * 5
