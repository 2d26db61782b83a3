"""The trader <-> LP protocol: quotes, swap requests, lock notices, status.

HTTP JSON, amounts as decimal strings of base units.  The LP's answers are never
trusted for safety: the trader audits the LP's lock on chain (``legs.audit_lock``);
the LP audits the trader's.

    GET  /quote?sell=btc&buy=eth&amount=50000000  -> {"buy_amount": "...", ...}
    POST /swaps            {id, hashlock, sell, buy, trader, initiator_expiry} -> {"lp": {...}}
    POST /swaps/{id}/lock  {lock_ref, script}  (the trader's lock, to audit)
    GET  /swaps/{id}       the LP's view, with its lock's ref and script
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from hashlib import sha256
from typing import Any

import aiohttp
from eth_utils import is_address, to_checksum_address

from bridge.errors import BridgeError, Conflict, InputError, NotFound
from bridge.swaps import models as m
from bridge.swaps.assets import BITCOIN, AssetBook, SwapAsset
from bridge.swaps.legs import Leg
from bridge.swaps.models import INITIATOR, PARTICIPANT, Swap, SwapLeg
from bridge.swaps.store import SwapStore, SwapView
from bridge.swaps.timelock import TimelockPolicy
from chains.http import LoopSession
from htlc.bitcoin_script import is_compressed_pubkey


class LpUnavailable(BridgeError):
    """The LP did not answer (down, timeout, 5xx)."""

    retryable = True


class LpRefused(BridgeError):
    """The LP refused the request; ``reason`` is its answer."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason, reason=reason, **details)
        self.reason = reason


# --- LP side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairTerms:
    """``buy = sell * rate`` in base units (a ratio of integers, floor), sell amount within bounds."""

    rate: Fraction
    min_sell: int
    max_sell: int


@dataclass
class LiquidityProvider:
    store: SwapStore
    legs: dict[str, Leg]
    assets: AssetBook
    pairs: dict[tuple[str, str], PairTerms]
    policy: TimelockPolicy = field(default_factory=TimelockPolicy)

    def quote(self, sell: str, buy: str, amount: int) -> dict[str, Any]:
        terms = self._pair(sell, buy)
        if not terms.min_sell <= amount <= terms.max_sell:
            raise InputError(f"sell amount {amount} is outside {terms.min_sell}..{terms.max_sell}", field="amount")
        return {
            "sell": sell, "buy": buy, "sell_amount": str(amount),
            "buy_amount": str(int(amount * terms.rate)),
            "rate": f"{terms.rate.numerator}/{terms.rate.denominator}",
            "min_sell": str(terms.min_sell), "max_sell": str(terms.max_sell),
        }

    def _pair(self, sell: str, buy: str) -> PairTerms:
        try:
            return self.pairs[(sell.lower(), buy.lower())]
        except KeyError:
            raise InputError(f"no market {sell}->{buy}; offered: {', '.join(f'{a}->{b}' for a, b in self.pairs)}", field="pair") from None

    async def accept(self, req: dict[str, Any]) -> dict[str, Any]:
        """Check a swap request and record it; the same request again gets the same answer."""
        swap_id = _text(req, "id")
        hashlock = _hex(req, "hashlock", 32)
        sell, sell_amount = self._leg_request(req, "sell")
        buy, buy_amount = self._leg_request(req, "buy")
        if sell.chain == buy.chain:
            raise InputError("an atomic swap crosses chains: sell and buy are on the same chain", field="buy")
        quote = self.quote(sell.symbol, buy.symbol, sell_amount)
        if buy_amount > int(quote["buy_amount"]):
            raise InputError(f"asked for {buy_amount} {buy.symbol} base units; the rate gives at most {quote['buy_amount']}", field="buy")
        trader = req.get("trader") or {}
        trader_sell, trader_buy = _identity(trader, sell.chain), _identity(trader, buy.chain)
        expiry = req.get("initiator_expiry")
        if not isinstance(expiry, int) or isinstance(expiry, bool):
            raise InputError("initiator_expiry must be an integer", field="initiator_expiry")
        sell_ops, buy_ops = self.legs[sell.chain], self.legs[buy.chain]
        now, buy_now = await asyncio.gather(sell_ops.now(), buy_ops.now())
        self.policy.check_initiator_lock(sell.chain, expiry, now)  # TimelockRefused names the rule
        try:
            existing = self.store.get(swap_id, with_actions=False)
        except NotFound:
            existing = None
        if existing is None:
            await self._check_inventory(buy, buy_amount)
        created = time.time()
        self.store.create(
            Swap(id=swap_id, role=PARTICIPANT, state=m.CREATED, hashlock=hashlock.hex(), accepted=True,
                 created_at=created, updated_at=created, next_attempt_at=created),
            [
                SwapLeg(swap_id=swap_id, leg=INITIATOR, chain=sell.chain, asset=sell.symbol, token=sell.token,
                        amount=str(sell_amount), sender=trader_sell, recipient=sell_ops.identity, expiry=expiry,
                        watch_from=now.height),
                SwapLeg(swap_id=swap_id, leg=PARTICIPANT, chain=buy.chain, asset=buy.symbol, token=buy.token,
                        amount=str(buy_amount), sender=buy_ops.identity, recipient=trader_buy, watch_from=buy_now.height),
            ],
            note="accepted",
        )
        return {"id": swap_id, "lp": {c: ops.identity for c, ops in self.legs.items()}, "quote": quote}

    def _leg_request(self, req: dict[str, Any], side: str) -> tuple[SwapAsset, int]:
        item = req.get(side)
        if not isinstance(item, dict):
            raise InputError(f"{side} must be an object with asset and amount", field=side)
        asset = self.assets.get(str(item.get("asset", "")))
        if str(item.get("token") or "").lower() != (asset.token or "").lower():
            raise InputError(f"{side} token {item.get('token')} is not this LP's {asset.symbol} ({asset.token})", field=side)
        try:
            amount = int(str(item.get("amount")))
        except ValueError:
            raise InputError(f"{side} amount must be an integer of base units", field=side) from None
        if amount <= 0:
            raise InputError(f"{side} amount must be positive", field=side)
        return asset, amount

    async def _check_inventory(self, asset: SwapAsset, amount: int) -> None:
        committed = self.store.committed(PARTICIPANT, [m.CREATED, m.PARTICIPANT_LOCK_INTENDED], asset.symbol)
        have = await self.legs[asset.chain].balance(asset.token)
        if have - committed < amount:
            raise InputError(
                f"not enough {asset.symbol} inventory: {have} held, {committed} committed, {amount} asked", field="buy"
            )

    def lock_notice(self, swap_id: str, req: dict[str, Any]) -> dict[str, Any]:
        """The trader says where its lock is; audited by the next engine step, never trusted."""
        ref = _text(req, "lock_ref")
        script = req.get("script")
        if script is not None and not isinstance(script, str):
            raise InputError("script must be hex", field="script")
        view = self.store.get(swap_id, with_actions=False)
        if view.swap.role != PARTICIPANT:
            raise NotFound(f"no LP swap {swap_id}")
        if view.leg(INITIATOR).lock_ref not in (None, ref):
            raise Conflict(f"swap {swap_id} already has lock {view.leg(INITIATOR).lock_ref}")
        if view.swap.state == m.CREATED:
            self.store.transition(swap_id, m.CREATED, m.CREATED, f"trader reports lock {ref}", legs={INITIATOR: {"lock_ref": ref, "script": script}})
            self.store.wake(swap_id)
        return describe(self.store.get(swap_id))


# --- trader side ----------------------------------------------------------------------


def new_trader_swap(
    store: SwapStore, lp_url: str, sell: SwapAsset, sell_amount: int, buy: SwapAsset, buy_amount: int,
    sell_identity: str, buy_identity: str, initiator_expiry: int, watch_from: dict[str, int],
) -> SwapView:
    """Make the secret and record the swap (secret first: nothing has left the process yet)."""
    if sell.chain == buy.chain:
        raise InputError("an atomic swap crosses chains: sell and buy are on the same chain", field="buy")
    secret = secrets.token_bytes(32)
    swap_id = uuid.uuid4().hex
    now = time.time()
    return store.create(
        Swap(id=swap_id, role=INITIATOR, state=m.CREATED, hashlock=sha256(secret).hexdigest(), secret=secret.hex(),
             lp_url=lp_url, created_at=now, updated_at=now, next_attempt_at=now),
        [
            SwapLeg(swap_id=swap_id, leg=INITIATOR, chain=sell.chain, asset=sell.symbol, token=sell.token,
                    amount=str(sell_amount), sender=sell_identity, expiry=initiator_expiry, watch_from=watch_from[sell.chain]),
            SwapLeg(swap_id=swap_id, leg=PARTICIPANT, chain=buy.chain, asset=buy.symbol, token=buy.token,
                    amount=str(buy_amount), recipient=buy_identity, watch_from=watch_from[buy.chain]),
        ],
        note="secret stored",
    )


class LpClient:
    """The initiator engine's ``LpPort`` over HTTP."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._http = LoopSession(timeout)

    async def close(self) -> None:
        await self._http.close()

    async def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            async with self._http.get().request(method, url, json=body) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 500:
                    raise LpUnavailable(f"LP answered {resp.status} at {url}: {data}")
                if resp.status == 404:
                    raise NotFound(f"LP has no {url}")
                if resp.status >= 400:
                    raise LpRefused((data or {}).get("message") or f"HTTP {resp.status}", status=resp.status)
                return data
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise LpUnavailable(f"LP unreachable at {url}: {type(exc).__name__}: {exc}") from None

    async def quote(self, lp_url: str, sell: str, buy: str, amount: int) -> dict[str, Any]:
        return await self._call("GET", f"{lp_url.rstrip('/')}/quote?sell={sell}&buy={buy}&amount={amount}")

    async def accept(self, view: SwapView) -> dict[str, Any]:
        ileg, pleg = view.leg(INITIATOR), view.leg(PARTICIPANT)
        body = {
            "id": view.swap.id, "hashlock": view.swap.hashlock, "initiator_expiry": ileg.expiry,
            "sell": {"asset": ileg.asset, "amount": ileg.amount, "token": ileg.token},
            "buy": {"asset": pleg.asset, "amount": pleg.amount, "token": pleg.token},
            "trader": {ileg.chain: ileg.sender, pleg.chain: pleg.recipient},
        }
        answer = await self._call("POST", f"{view.swap.lp_url.rstrip('/')}/swaps", body)
        lp = answer.get("lp") or {}
        for chain in (ileg.chain, pleg.chain):
            _identity(lp, chain)  # refuse a malformed key now, not at lock time
        return answer

    async def notify_locked(self, view: SwapView) -> None:
        ileg = view.leg(INITIATOR)
        await self._call("POST", f"{view.swap.lp_url.rstrip('/')}/swaps/{view.swap.id}/lock", {"lock_ref": ileg.lock_ref, "script": ileg.script})

    async def participant_lock(self, view: SwapView) -> dict[str, Any] | None:
        data = await self._call("GET", f"{view.swap.lp_url.rstrip('/')}/swaps/{view.swap.id}")
        return (data.get("legs") or {}).get(PARTICIPANT)


# --- shared -----------------------------------------------------------------------------


def describe(view: SwapView, with_secret: bool = False) -> dict[str, Any]:
    """A swap as JSON (the LP's ``GET /swaps/{id}``, ``swap status --json``)."""
    s = view.swap
    out: dict[str, Any] = {
        "id": s.id, "role": s.role, "state": s.state, "hashlock": s.hashlock, "retries": s.retries,
        "last_error": s.last_error, "next_attempt_at": s.next_attempt_at, "created_at": s.created_at,
        "legs": {name: leg.model_dump(exclude={"swap_id", "lock_raw", "spend_raw", "lock_evm", "spend_evm"}) for name, leg in view.legs.items()},
        "timeline": [{"at": a.at, "from": a.from_state, "to": a.to_state, "note": a.note} for a in view.actions],
    }
    if with_secret or s.role == PARTICIPANT or s.state == m.CLAIMED:
        # The LP only learns the secret from the chain; the trader's is public once it claimed.
        out["secret"] = s.secret
    return out


def _text(req: dict[str, Any], name: str) -> str:
    value = req.get(name)
    if not isinstance(value, str) or not value or len(value) > 100:
        raise InputError(f"{name} must be a non-empty string", field=name)
    return value


def _hex(req: dict[str, Any], name: str, size: int) -> bytes:
    value = _text(req, name)
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise InputError(f"{name} is not hex", field=name) from None
    if len(raw) != size:
        raise InputError(f"{name} must be {size} bytes, got {len(raw)}", field=name)
    return raw


def _identity(ids: dict[str, Any], chain: str) -> str:
    value = ids.get(chain)
    if chain == BITCOIN:
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            raw = b""
        if not is_compressed_pubkey(raw):
            raise InputError(f"{chain} identity must be a compressed public key (hex), got {value!r}", field=chain)
        return raw.hex()
    if not isinstance(value, str) or not is_address(value):
        raise InputError(f"{chain} identity must be an address, got {value!r}", field=chain)
    return to_checksum_address(value)
