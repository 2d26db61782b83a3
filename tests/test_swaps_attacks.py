"""The swap security review's attacks, replayed against a real LP daemon on the devnets.

Each test is an attacker (a trader, or any HTTP client) doing what the review did at 4ea7ff9,
and asserts what the victim would check: its balances on chain, the rows in its books, and
that its own genuine business still goes through.
"""

from __future__ import annotations

import logging
import secrets
from hashlib import sha256

import aiohttp
import pytest

from bridge.swaps import models as m
from bridge.swaps.models import INITIATOR, PARTICIPANT
from bridge.swaps.party import Party
from bridge.swaps.protocol import LpClient
from bridge.core.testing import wait_until
from htlc.bitcoin_script import p2wsh_htlc_script
from devnets.presets import ONE_BTC, ONE_ETH
from support.scenario import (
    book,
    fund_btc,
    module_regtest,
    new_keys,
    party_state,
    run_trader,
    running_lp,
    settings_for,
    swap_config,
)

log = logging.getLogger("tests.attacks")

#: These tests mine many blocks: a private node for the module.
regtest = module_regtest("attacks")


async def http(method: str, url: str, body: object = None, source: str | None = None) -> tuple[int, dict]:
    """One request as an outside client would send it; ``source`` binds another loopback address."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else None
    async with aiohttp.ClientSession(connector=connector) as session, session.request(method, url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


def swap_request(view, swap_id: str | None = None) -> dict:
    """The body ``LpClient.accept`` sends for ``view``, under another id if given."""
    ileg, pleg = view.leg(INITIATOR), view.leg(PARTICIPANT)
    return {
        "id": swap_id or view.swap.id,
        "hashlock": view.swap.hashlock,
        "initiator_expiry": ileg.expiry,
        "sell": {"asset": ileg.asset, "amount": ileg.amount, "token": ileg.token},
        "buy": {"asset": pleg.asset, "amount": pleg.amount, "token": pleg.token},
        "trader": {ileg.chain: ileg.sender, pleg.chain: pleg.recipient},
    }


@pytest.mark.parametrize("sell, buy", [("btc:0.01", "eth:0.15"), ("eth:0.15", "btc:0.01")])
async def test_one_trader_lock_cannot_back_two_lp_swaps(tmp_path, regtest, anvil, btc, evm, contracts, automine, sell, buy):
    """Finding 1: two ``POST /swaps`` with one hashlock and the same terms, one lock, the lock's
    notice sent for both.  The LP must lock once, and book what the chains hold."""
    trader_keys, lp_keys = await new_keys(evm, 2 * ONE_ETH), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    await fund_btc(btc, lp_keys.btc)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        async with await Party.open(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts), LpClient()) as trader:
            lp_eth_before = await evm.balance(lp_keys.address)
            lp_btc_before = await btc.balance([lp_keys.btc.p2wpkh_script])
            view = await trader.start_swap(lp_url, sell, buy)
            await trader.engine.lp.accept(view)  # the genuine request (the engine's own is idempotent)
            log.info("attacker: the same hashlock and terms under a second id")
            status, answer = await http("POST", f"{lp_url}/swaps", swap_request(view, "copy-" + view.swap.id))
            assert status == 409 and "hashlock" in answer["message"], answer
            done = await run_trader(trader, view.swap.id)
            assert done.state == m.CLAIMED, done.last_error
            ileg = trader.store.get(view.swap.id).leg(INITIATOR)
            log.info("attacker: the one lock's notice for the copy too")
            status, _ = await http("POST", f"{lp_url}/swaps/copy-{view.swap.id}/lock", {"lock_ref": ileg.lock_ref, "script": ileg.script})
            assert status == 404
            await wait_until(lambda: party_state(lp, view.swap.id, m.CLAIMED), timeout=60, what="LP claimed the trader's lock")
            assert [v.swap.id for v in lp.store.list()] == [view.swap.id]
            # On chain: the LP paid one swap's worth and received one lock.
            lp_eth, lp_btc = await evm.balance(lp_keys.address), await btc.balance([lp_keys.btc.p2wpkh_script])
            lp_id_btc, lp_id_evm = lp_keys.btc.pubkey.hex(), lp_keys.address
            if sell.startswith("btc"):
                assert lp_eth_before - 15 * ONE_ETH // 100 - 10**16 < lp_eth < lp_eth_before - 15 * ONE_ETH // 100
                assert lp_btc_before + ONE_BTC // 100 - 10_000 < lp_btc < lp_btc_before + ONE_BTC // 100
                assert book(lp, lp_id_btc, "user", "BTC").balance == ONE_BTC // 100  # the books equal the chain
                assert book(lp, lp_id_evm, "external", "ETH").balance == -15 * ONE_ETH // 100
            else:
                assert lp_btc_before - ONE_BTC // 100 - 10_000 < lp_btc < lp_btc_before - ONE_BTC // 100
                assert lp_eth_before + 15 * ONE_ETH // 100 - 10**16 < lp_eth < lp_eth_before + 15 * ONE_ETH // 100
                assert book(lp, lp_id_evm, "user", "ETH").balance == 15 * ONE_ETH // 100
                assert book(lp, lp_id_btc, "external", "BTC").balance == -ONE_BTC // 100


async def test_reservations_end_quickly_and_are_capped_per_client(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """Finding 2: ``POST /swaps`` reserved inventory with no lock behind it, for as long as the
    request's expiry said.  Now the expiry is capped, one client holds a bounded number of
    reservations, and a reservation no lock backs lapses; then a genuine trader swaps.
    Finding 5 on the way: repeated lock notices add one timeline row."""
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    limits = {"lp": {**swap_config(lp_keys, contracts).lp.model_dump(), "lock_window": 3, "max_open_per_client": 3}}
    config = swap_config(lp_keys, contracts, idle_recheck=0.3, **limits)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), config) as (lp_url, lp):
        attacker, salt = "127.0.0.2", secrets.token_hex(8)
        height = await btc.height()

        def hashlock(n: int) -> str:
            return sha256(f"{salt}-{n}".encode()).hexdigest()

        def request(n: int, **change) -> dict:
            return {
                "id": f"hold-{n}",
                "hashlock": hashlock(n),
                "initiator_expiry": height + 120,
                "sell": {"asset": "btc", "amount": str(4 * ONE_BTC // 10)},
                "buy": {"asset": "eth", "amount": str(6 * ONE_ETH)},
                "trader": {"bitcoin": trader_keys.btc.pubkey.hex(), "evm": trader_keys.address},
                **change,
            }

        log.info("attacker: an expiry that would hold the reservation for good")
        status, answer = await http("POST", f"{lp_url}/swaps", request(0, initiator_expiry=499_999_999), attacker)
        assert status == 400 and "more than" in answer["message"], answer
        log.info("attacker: reservations until the per-client cap")
        for n in range(1, 4):
            status, answer = await http("POST", f"{lp_url}/swaps", request(n), attacker)
            assert status == 200, answer
        lp_pubkey = bytes.fromhex(answer["lp"]["bitcoin"])
        status, answer = await http("POST", f"{lp_url}/swaps", request(4), attacker)
        assert status == 429 and "waiting for a lock" in answer["message"], answer
        log.info("attacker: the same lock notice 100 times, for an HTLC it never funds")
        fake_ref = f"{'cd' * 32}:0"
        script = p2wsh_htlc_script(bytes.fromhex(hashlock(1)), lp_pubkey, trader_keys.btc.pubkey, height + 120).hex()
        for _ in range(100):
            status, _ = await http("POST", f"{lp_url}/swaps/hold-1/lock", {"lock_ref": fake_ref, "script": script}, attacker)
            assert status == 200
        status, shown = await http("GET", f"{lp_url}/swaps/hold-1")
        assert sum("reports lock" in row["note"] for row in shown["timeline"]) == 1 and len(shown["timeline"]) <= 3
        status, answer = await http("POST", f"{lp_url}/swaps/hold-1/lock", {"lock_ref": f"{'ce' * 32}:0"}, attacker)
        assert status == 409

        async with await Party.open(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts), LpClient()) as trader:
            log.info("the genuine trader, while 18 of the LP's 20 ETH are held: refused for inventory")
            early = await trader.start_swap(lp_url, "btc:0.2", "eth:3")
            assert (await run_trader(trader, early.swap.id)).state == m.FAILED
            assert "inventory" in trader.store.get(early.swap.id).swap.last_error
            log.info("the reservations lapse: no lock was seen within the window")

            def lapsed():
                views = [lp.store.get(f"hold-{n}") for n in range(1, 4)]
                return views if all(v.swap.state == m.FAILED for v in views) else None

            views = await wait_until(lapsed, timeout=30, what="the attacker's reservations to lapse")
            assert "not seen on chain within 3s" in views[0].swap.last_error
            assert all("no lock within 3s" in v.swap.last_error for v in views[1:])
            status, _ = await http("POST", f"{lp_url}/swaps", request(5), attacker)
            assert status == 200  # the client's slots are free again too
            genuine = await trader.start_swap(lp_url, "btc:0.2", "eth:3")
            done = await run_trader(trader, genuine.swap.id)
            assert done.state == m.CLAIMED, done.last_error


async def test_hostile_lp_requests_are_refused_with_4xx_and_change_nothing(tmp_path, regtest, anvil, btc, evm, contracts):
    """Finding 6 (LP side), findings 3 and 5's neighbours: each request the review sent got a 500 with
    the exception text (or killed the daemon); now each is a 4xx in the JSON error shape, nothing is
    recorded, and the LP goes on serving."""
    trader_keys, lp_keys = await new_keys(evm), await new_keys(evm, 20 * ONE_ETH)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        height = await btc.height()
        good = {
            "id": "fine",
            "hashlock": "ab" * 32,
            "initiator_expiry": height + 120,
            "sell": {"asset": "btc", "amount": "1000000"},
            "buy": {"asset": "eth", "amount": str(15 * ONE_ETH // 100)},
            "trader": {"bitcoin": trader_keys.btc.pubkey.hex(), "evm": trader_keys.address},
        }
        cases = {
            "expiry 2**70": ("POST", "/swaps", {**good, "initiator_expiry": 2**70}, 400),
            "expiry a float": ("POST", "/swaps", {**good, "initiator_expiry": 1e300}, 400),
            "trader a list": ("POST", "/swaps", {**good, "trader": [1]}, 400),
            "amount of 5,000 digits": ("POST", "/swaps", {**good, "sell": {"asset": "btc", "amount": "9" * 5000}}, 400),
            "amount beyond MAX_MONEY": ("POST", "/swaps", {**good, "sell": {"asset": "btc", "amount": str(21 * 10**14 + 1)}}, 400),
            "amount in Arabic-Indic digits": ("POST", "/swaps", {**good, "sell": {"asset": "btc", "amount": "١٠٠٠٠٠٠"}}, 400),
            "asset an object": ("POST", "/swaps", {**good, "sell": {"asset": {"x": 1}, "amount": "1"}}, 400),
            "id with control characters": ("POST", "/swaps", {**good, "id": "a\x1b[31mred\n"}, 400),
            "id of 10,000 characters": ("POST", "/swaps", {**good, "id": "a" * 10_000}, 400),
            "nested brackets": ("POST", "/swaps", None, 400),
            "quote of 5,000 digits": ("GET", "/quote?sell=btc&buy=eth&amount=" + "9" * 5000, None, 400),
            "quote in superscript digits": ("GET", "/quote?sell=btc&buy=eth&amount=%C2%B2", None, 400),
            "quote in Arabic-Indic digits": ("GET", "/quote?sell=btc&buy=eth&amount=%D9%A1%D9%A0", None, 400),
            "lock notice of a malformed ref": ("POST", "/swaps/fine/lock", {"lock_ref": "x" * 100}, 404),
            "status of an id with control characters": ("GET", "/swaps/a%1Bb", None, 400),
        }
        for name, (method, path, body, expected) in cases.items():
            if name == "nested brackets":
                async with aiohttp.ClientSession() as session:
                    async with session.post(f"{lp_url}{path}", data=b"[" * 100_000 + b"]" * 100_000, headers={"Content-Type": "application/json"}) as resp:
                        status, answer = resp.status, await resp.json(content_type=None)
            else:
                status, answer = await http(method, f"{lp_url}{path}", body)
            assert status == expected, (name, status, answer)
            assert set(answer) >= {"error", "message"} and "Traceback" not in answer["message"], (name, answer)
            log.info("%s: %s %s", name, status, answer["message"][:100])
        assert lp.store.list() == []
        assert (await http("GET", f"{lp_url}/health"))[0] == 200
        status, answer = await http("POST", f"{lp_url}/swaps", good)  # and the LP still does business
        assert status == 200, answer
        status, answer = await http("POST", f"{lp_url}/swaps/fine/lock", {"lock_ref": "x" * 100})
        assert status == 400 and "lock reference" in answer["message"], answer
