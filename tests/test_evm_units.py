"""The EVM adapter's pure parts: fee arithmetic, revert decoding, node error mapping,
and the nonce manager under concurrency (its one I/O edge, the pending count, faked)."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest
from eth_abi import encode as abi_encode
from eth_utils import function_signature_to_4byte_selector

from bridge.core.errors import (
    ChainUnavailable,
    ContractReverted,
    InputError,
    InsufficientFunds,
    NonceConflict,
    RpcError,
    TransactionRejected,
    Unsupported,
)
from chains.evm_fees import DEFAULT_PRIORITY_FEE, Fees, bumped, choose_fees, fees_from_history
from chains.evm_nonce import NonceManager, next_nonce
from chains.evm_revert import decode_revert, describe_revert
from chains.evm_rpc import LogRangeTooLarge, is_already_known, is_nonce_too_low, map_rpc_error


# --- fees ---------------------------------------------------------------------------


def test_fees_follow_the_base_fee_and_median_tip():
    history = {"baseFeePerGas": ["0x64", "0x6e", "0x78"], "reward": [["0x5"], ["0x1"], ["0x9"]]}
    assert fees_from_history(history) == Fees(max_fee=2 * 0x78 + 5, priority_fee=5)


def test_fees_default_the_tip_when_blocks_paid_none():
    history = {"baseFeePerGas": ["0x3b9aca00"], "reward": [["0x0"], ["0x0"]]}
    fees = fees_from_history(history)
    assert fees.priority_fee == DEFAULT_PRIORITY_FEE and fees.max_fee == 2 * 10**9 + DEFAULT_PRIORITY_FEE


def test_explicit_fees_win_and_a_bigger_tip_lifts_the_max_fee():
    suggested = Fees(max_fee=300, priority_fee=100)
    assert choose_fees(suggested, None, None) == suggested
    assert choose_fees(suggested, 1000, None) == Fees(1000, 100)
    assert choose_fees(suggested, None, 150) == Fees(350, 150)
    with pytest.raises(InputError, match="priority_fee"):
        choose_fees(suggested, None, -1)
    with pytest.raises(InputError, match="max_fee"):
        choose_fees(suggested, 1.5, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("multiplier", [1.01, 1.1, "1.25", 2, Fraction(3, 2)])
@pytest.mark.parametrize("old", [Fees(0, 0), Fees(1, 1), Fees(9, 9), Fees(1_000_000_007, 999_999_999), Fees(10**12, 1)])
def test_a_bump_raises_both_fees_by_at_least_ten_percent_in_whole_wei(old, multiplier):
    new = bumped(old, multiplier)
    for before, after in ((old.max_fee, new.max_fee), (old.priority_fee, new.priority_fee)):
        assert isinstance(after, int) and after > before and after * 10 >= before * 11
    assert new.max_fee >= new.priority_fee


def test_a_bump_never_goes_below_todays_suggestion_and_refuses_shrinking():
    assert bumped(Fees(100, 10), 1.2, floor=Fees(5000, 50)) == Fees(5000, 50)
    with pytest.raises(InputError, match="greater than 1"):
        bumped(Fees(100, 10), 1)


# --- reverts ------------------------------------------------------------------------


def test_revert_data_is_named():
    error_string = "0x08c379a0" + abi_encode(["string"], ["too late"]).hex()
    panic = "0x4e487b71" + abi_encode(["uint256"], [0x11]).hex()
    custom = "0x" + function_signature_to_4byte_selector("Expired(uint256)").hex() + abi_encode(["uint256"], [42]).hex()
    abi = [{"type": "error", "name": "Expired", "inputs": [{"name": "at", "type": "uint256"}]}]

    assert describe_revert(error_string) == "Error: too late"
    assert describe_revert(panic) == "Panic(0x11)"
    assert describe_revert(custom, abi) == "Expired(42)"
    assert decode_revert(custom, abi) == ("Expired", (42,))
    assert describe_revert(custom) == f"custom error {custom[:10]} with 32 bytes of arguments"
    assert describe_revert("0x") == "reverted without data"


# --- node errors (messages as Anvil and geth word them) ------------------------------


@pytest.mark.parametrize(
    ("method", "error", "expected"),
    [
        ("eth_estimateGas", {"code": 3, "message": "execution reverted: custom error 0xdeadbeef", "data": "0xdeadbeef"}, ContractReverted),
        ("eth_call", {"code": -32000, "message": "execution reverted"}, ContractReverted),
        ("eth_sendRawTransaction", {"code": -32003, "message": "nonce too low"}, NonceConflict),
        ("eth_sendRawTransaction", {"code": -32000, "message": "replacement transaction underpriced"}, NonceConflict),
        ("eth_sendRawTransaction", {"code": -32003, "message": "transaction already imported"}, NonceConflict),
        ("eth_sendRawTransaction", {"code": -32000, "message": "already known"}, NonceConflict),
        ("eth_sendRawTransaction", {"code": -32003, "message": "Insufficient funds for gas * price + value"}, InsufficientFunds),
        ("eth_sendRawTransaction", {"code": -32003, "message": "intrinsic gas too low"}, TransactionRejected),
        ("eth_getLogs", {"code": -32005, "message": "query returned more than 10000 results"}, LogRangeTooLarge),
        ("eth_getLogs", {"code": -32602, "message": "BlockOutOfRangeError: block height is 8 but requested was 16"}, RpcError),
        ("anvil_mine", {"code": -32601, "message": "Method not found"}, Unsupported),
    ],
)
def test_node_errors_map_to_typed_errors(method, error, expected):
    mapped = map_rpc_error(method, error)
    assert type(mapped) is expected
    if expected is RpcError:
        assert mapped.code == error["code"]


def test_known_and_nonce_too_low_are_told_apart():
    known = map_rpc_error("eth_sendRawTransaction", {"code": -32003, "message": "transaction already imported"})
    low = map_rpc_error("eth_sendRawTransaction", {"code": -32003, "message": "nonce too low"})
    assert is_already_known(known) and not is_nonce_too_low(known)
    assert is_nonce_too_low(low) and not is_already_known(low)
    assert map_rpc_error("eth_call", {"code": 3, "message": "execution reverted", "data": "0xdeadbeef"}).data == "0xdeadbeef"


# --- nonce manager --------------------------------------------------------------------


async def test_nonce_manager_hands_out_each_nonce_once_and_reuses_refused_ones():
    reads = []

    async def pending(address):
        reads.append(address)
        return 7

    nonces = NonceManager(pending)
    taken = []

    async def send(refuse: bool):
        async with nonces.reserve("0xAbC") as nonce:
            await asyncio.sleep(0)  # let the others pile up on the lock
            if refuse:
                raise TransactionRejected("refused", reason="policy")
            taken.append(nonce)

    results = await asyncio.gather(*(send(i % 3 == 0) for i in range(12)), return_exceptions=True)

    assert sum(isinstance(r, TransactionRejected) for r in results) == 4
    assert sorted(taken) == list(range(7, 15))  # 8 accepted, no gap, refused nonces reused
    assert reads == ["0xAbC"]


@pytest.mark.parametrize("failure", [NonceConflict("nonce too low"), ChainUnavailable("gone mid-broadcast")])
async def test_nonce_manager_rereads_the_node_after_a_conflict_or_an_unknown_outcome(failure):
    counts = iter([3, 5])

    async def pending(address):
        return next(counts)

    nonces = NonceManager(pending)
    with pytest.raises(type(failure)):
        async with nonces.reserve("0x1") as nonce:
            assert nonce == 3
            raise failure
    async with nonces.reserve("0x1") as nonce:
        assert nonce == 5


async def test_next_free_nonce_skips_held_nonces_at_or_above_the_mined_count():
    """A nonce held by a recorded, unsent transaction stays reserved; one below the mined count was
    used (by it or another transaction) and is not skipped past; without held nonces the mined
    count is not asked."""
    reads = []

    async def pending(address):
        reads.append("pending")
        return 5

    async def mined(address):
        reads.append("latest")
        return 3

    nonces = NonceManager(pending, mined)
    assert await nonces.next_free("0x1") == 5 and reads == ["pending"]
    assert await nonces.next_free("0x1", [6]) == 7
    assert await nonces.next_free("0x1", [3, 4]) == 5
    assert await nonces.next_free("0x1", [1, 2]) == 5
    assert next_nonce(mined=4, pending=3, held=[3, 5]) == 6
    assert next_nonce(mined=4, pending=3, held=[3]) == 3
