"""The trader <-> LP protocol: quotes, swap requests, lock notices, status.

HTTP JSON, amounts as decimal strings of base units.  The LP's answers are never
trusted for safety: the trader audits the LP's lock on chain (``legs.audit_lock``);
the LP audits the trader's.

    GET  /quote?sell=btc&buy=eth&amount=50000000  -> {"buy_amount": "...", ...}
    POST /swaps            {id, hashlock, sell, buy, trader, initiator_expiry} -> {"lp": {...}}
    POST /swaps/{id}/lock  {lock_ref, script}  (the trader's lock, to audit)
    GET  /swaps/{id}       the LP's view, with its lock's ref and script

Over 400 lines on purpose: both sides of one wire protocol, so the request the trader's client builds
and the checks the LP applies to it are read side by side.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from hashlib import sha256
from typing import Any

import aiohttp
from eth_utils import is_address, to_checksum_address

from bridge.core.errors import BridgeError, Conflict, InputError, NotFound
from bridge.swaps import models as m
from bridge.swaps.assets import AssetBook, SwapAsset
from bridge.swaps.legs import Leg
from bridge.swaps.models import INITIATOR, PARTICIPANT, Swap, SwapLeg
from bridge.swaps.limits import check_amount, check_swap_id
from bridge.swaps.store import SwapStore, SwapView, canonical_ref
from bridge.swaps.timelock import TimelockPolicy, TimelockRefused
from chains.base import BITCOIN
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


@dataclass(frozen=True)
class LpLimits:
    """What keeps an LP's inventory from being held for free (``[lp]`` in swaps.toml)."""

    #: Seconds after acceptance by which the trader's lock must have been seen on chain
    #: (reported and audited, confirmations aside); the reservation is dropped otherwise.
    lock_window: float = 600.0
    #: Swaps one client (peer address) may hold accepted and not yet backed by a lock it saw.
    max_open_per_client: int = 20
    #: The longest initiator lock (seconds from now) the LP accepts; None: the policy's
    #: ``initiator_lock`` plus its ``safety_gap``.
    max_initiator_lock: int | None = None


class TooManyReservations(InputError):
    """The client already holds as many unbacked reservations as the LP allows."""

    http_status = 429


@dataclass
class LiquidityProvider:
    store: SwapStore
    legs: dict[str, Leg]
    assets: AssetBook
    pairs: dict[tuple[str, str], PairTerms]
    policy: TimelockPolicy = field(default_factory=TimelockPolicy)
    limits: LpLimits = field(default_factory=LpLimits)
    #: Checking a request against what is committed and recording it are one step: concurrent
    #: requests must not all pass the same inventory or per-client check.
    _accepting: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def quote(self, sell: str, buy: str, amount: int) -> dict[str, Any]:
        terms = self._pair(sell, buy)
        if not terms.min_sell <= amount <= terms.max_sell:
            raise InputError(f"sell amount {amount} is outside {terms.min_sell}..{terms.max_sell}", field="amount")
        return {
            "sell": sell,
            "buy": buy,
            "sell_amount": str(amount),
            "buy_amount": str(int(amount * terms.rate)),
            "rate": f"{terms.rate.numerator}/{terms.rate.denominator}",
            "min_sell": str(terms.min_sell),
            "max_sell": str(terms.max_sell),
        }

    def _pair(self, sell: str, buy: str) -> PairTerms:
        try:
            return self.pairs[(sell.lower(), buy.lower())]
        except KeyError:
            offered = ", ".join(f"{a}->{b}" for a, b in self.pairs)
            raise InputError(f"no market {_shown(sell)}->{_shown(buy)}; offered: {offered}", field="pair") from None

    def max_initiator_lock(self) -> int:
        return self.limits.max_initiator_lock or self.policy.initiator_lock + self.policy.safety_gap

    async def accept(self, req: dict[str, Any], client: str = "local") -> dict[str, Any]:
        """Check a swap request and record it; the same request again gets the same answer."""
        swap_id = check_swap_id(req.get("id"))
        hashlock = _hex(req, "hashlock", 32)
        sell, sell_amount = self._leg_request(req, "sell")
        buy, buy_amount = self._leg_request(req, "buy")
        if sell.chain == buy.chain:
            raise InputError("an atomic swap crosses chains: sell and buy are on the same chain", field="buy")
        quote = self.quote(sell.symbol, buy.symbol, sell_amount)
        if buy_amount > int(quote["buy_amount"]):
            raise InputError(f"asked for {buy_amount} {buy.symbol} base units; the rate gives at most {quote['buy_amount']}", field="buy")
        trader = req.get("trader")
        if not isinstance(trader, dict):
            raise InputError("trader must be an object naming the trader's identity on each chain", field="trader")
        trader_sell, trader_buy = _identity(trader, sell.chain), _identity(trader, buy.chain)
        expiry = req.get("initiator_expiry")
        if not isinstance(expiry, int) or isinstance(expiry, bool) or not 0 < expiry < 2**63:
            raise InputError("initiator_expiry must be a positive 64-bit integer (a block height or unix time)", field="initiator_expiry")
        sell_ops, buy_ops = self.legs[sell.chain], self.legs[buy.chain]
        now, buy_now = await asyncio.gather(sell_ops.now(), buy_ops.now())
        self.policy.check_initiator_lock(sell.chain, expiry, now)  # TimelockRefused names the rule
        left, longest = self.policy.seconds_left(sell.chain, expiry, now), self.max_initiator_lock()
        if left > longest:
            raise TimelockRefused(
                f"initiator's lock expires in ~{left}s: more than the {longest}s this LP accepts (its inventory would be held that long)", seconds_left=left
            )
        async with self._accepting:
            try:
                existing = self.store.get(swap_id, with_actions=False)
            except NotFound:
                existing = None
            if existing is None:
                if self.store.open_reservations(client) >= self.limits.max_open_per_client:
                    raise TooManyReservations(
                        f"{client} already has {self.limits.max_open_per_client} accepted swaps waiting for a lock; lock those (or let them lapse) first",
                        field="id",
                    )
                await self._check_inventory(buy, buy_amount)
            created = time.time()
            self.store.create(
                Swap(
                    id=swap_id,
                    role=PARTICIPANT,
                    state=m.CREATED,
                    hashlock=hashlock.hex(),
                    accepted=True,
                    created_at=created,
                    updated_at=created,
                    next_attempt_at=created,
                    client=client,
                ),
                swap_legs(
                    swap_id,
                    sell,
                    sell_amount,
                    buy,
                    buy_amount,
                    initiator={"sender": trader_sell, "recipient": sell_ops.identity, "expiry": expiry, "watch_from": now.height},
                    participant={"sender": buy_ops.identity, "recipient": trader_buy, "watch_from": buy_now.height},
                ),
                note="accepted",
            )
        return {"id": swap_id, "lp": {c: ops.identity for c, ops in self.legs.items()}, "quote": quote}

    def _leg_request(self, req: dict[str, Any], side: str) -> tuple[SwapAsset, int]:
        item = req.get(side)
        if not isinstance(item, dict):
            raise InputError(f"{side} must be an object with asset and amount", field=side)
        symbol = item.get("asset")
        if not isinstance(symbol, str) or len(symbol) > 32:
            raise InputError(f"{side} asset must be an asset symbol", field=side)
        asset = self.assets.get(symbol)
        token = item.get("token")
        if token is not None and not isinstance(token, str):
            raise InputError(f"{side} token must be an address or null", field=side)
        if (token or "").lower() != (asset.token or "").lower():
            raise InputError(f"{side} token {_shown(token)} is not this LP's {asset.symbol} ({asset.token})", field=side)
        return asset, check_amount(base_units(item.get("amount"), f"{side} amount"), asset.chain, f"{side} amount")

    async def _check_inventory(self, asset: SwapAsset, amount: int) -> None:
        committed = self.store.committed(PARTICIPANT, [m.CREATED, m.PARTICIPANT_LOCK_INTENDED], asset.symbol)
        have = await self.legs[asset.chain].balance(asset.token)
        if have - committed < amount:
            raise InputError(f"not enough {asset.symbol} inventory: {have} held, {committed} committed, {amount} asked", field="buy")

    def lock_notice(self, swap_id: str, req: dict[str, Any]) -> dict[str, Any]:
        """The trader says where its lock is; audited by the next engine step, never trusted.
        Reporting the same lock again changes nothing."""
        swap_id = check_swap_id(swap_id)
        ref = _text(req, "lock_ref")
        script = req.get("script")
        if script is not None and (not isinstance(script, str) or len(script) > MAX_SCRIPT_HEX or not _HEX.fullmatch(script)):
            raise InputError(f"script must be hex of at most {MAX_SCRIPT_HEX // 2} bytes", field="script")
        view = self.store.get(swap_id, with_actions=False)
        if view.swap.role != PARTICIPANT:
            raise NotFound(f"no LP swap {swap_id}")
        ileg = view.leg(INITIATOR)
        ref = lock_ref(ileg.chain, ref)
        if ileg.lock_ref is not None and canonical_ref(ileg.chain, ileg.lock_ref) != canonical_ref(ileg.chain, ref):
            raise Conflict(f"swap {swap_id} already has lock {ileg.lock_ref}")
        self.store.report_lock(swap_id, ref, script)
        return describe(self.store.get(swap_id))


#: The witness script of an HTLC is about 100 bytes; this bounds what a notice may carry.
MAX_SCRIPT_HEX = 2000
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_BASE_UNITS = re.compile(r"[0-9]{1,78}")
_LOCK_REFS = {BITCOIN: re.compile(r"[0-9a-fA-F]{64}:[0-9]{1,10}"), "evm": re.compile(r"0x[0-9a-fA-F]{64}")}


def lock_ref(chain: str, value: str) -> str:
    """A lock reference in its chain's shape: ``TXID:VOUT`` on Bitcoin, an EVM swap id (0x + 32 bytes)."""
    if not _LOCK_REFS[chain].fullmatch(value):
        shape = "TXID:VOUT" if chain == BITCOIN else "0x followed by 64 hex digits"
        raise InputError(f"lock_ref {_shown(value)} is not a {chain} lock reference ({shape})", field="lock_ref")
    return value


def base_units(value: object, what: str = "amount") -> int:
    """An amount in base units as JSON carries it: a decimal string (or integer) of ASCII digits."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _BASE_UNITS.fullmatch(text):
        raise InputError(f"{what} must be a whole number of base units (at most 78 digits), got {_shown(value)}", field=what)
    return int(text)


def _shown(value: object) -> str:
    """A client's value in an error message: short and printable."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


# --- trader side ----------------------------------------------------------------------


def swap_legs(
    swap_id: str, sell: SwapAsset, sell_amount: int, buy: SwapAsset, buy_amount: int, *, initiator: dict[str, Any], participant: dict[str, Any]
) -> list[SwapLeg]:
    """A swap's two legs: what the trader sells is the initiator's, what it buys the participant's."""
    return [
        SwapLeg(swap_id=swap_id, leg=INITIATOR, chain=sell.chain, asset=sell.symbol, token=sell.token, amount=str(sell_amount), **initiator),
        SwapLeg(swap_id=swap_id, leg=PARTICIPANT, chain=buy.chain, asset=buy.symbol, token=buy.token, amount=str(buy_amount), **participant),
    ]


def new_trader_swap(
    store: SwapStore,
    lp_url: str,
    sell: SwapAsset,
    sell_amount: int,
    buy: SwapAsset,
    buy_amount: int,
    sell_identity: str,
    buy_identity: str,
    initiator_expiry: int,
    watch_from: dict[str, int],
) -> SwapView:
    """Make the secret and record the swap (secret first: nothing has left the process yet)."""
    if sell.chain == buy.chain:
        raise InputError("an atomic swap crosses chains: sell and buy are on the same chain", field="buy")
    secret = secrets.token_bytes(32)
    swap_id = uuid.uuid4().hex
    now = time.time()
    return store.create(
        Swap(
            id=swap_id,
            role=INITIATOR,
            state=m.CREATED,
            hashlock=sha256(secret).hexdigest(),
            secret=secret.hex(),
            lp_url=lp_url,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
        ),
        swap_legs(
            swap_id,
            sell,
            sell_amount,
            buy,
            buy_amount,
            initiator={"sender": sell_identity, "expiry": initiator_expiry, "watch_from": watch_from[sell.chain]},
            participant={"recipient": buy_identity, "watch_from": watch_from[buy.chain]},
        ),
        note="secret stored",
    )


class LpClient:
    """The initiator engine's ``LpPort`` over HTTP.

    Nothing the LP answers is trusted: an answer is read up to ``jsonsafe.MAX_BODY`` bytes and
    parsed with ``bridge.core.jsonsafe`` bounds (a hostile answer is a clear ``LpRefused``, never a
    crash of the trader), and must be a JSON object."""

    #: How much of an LP's refusal message is kept (it lands in the swap's row and on terminals).
    MESSAGE_CHARS = 300

    def __init__(self, timeout: float = 10.0) -> None:
        self._http = LoopSession(timeout)

    async def close(self) -> None:
        await self._http.close()

    @classmethod
    def _shown(cls, text: Any) -> str:
        """The LP's words, short and printable (no terminal control characters)."""
        text = str(text)
        cut = text[: cls.MESSAGE_CHARS]
        return "".join(c if c.isprintable() else "?" for c in cut) + ("..." if len(text) > len(cut) else "")

    async def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        from bridge.core import jsonsafe

        try:
            async with self._http.get().request(method, url, json=body) as resp:
                status = resp.status
                try:
                    data: Any = jsonsafe.loads(await jsonsafe.read_capped(resp, what="answer"))
                    bad = None
                except jsonsafe.JsonRefused as exc:
                    data, bad = None, exc.message
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise LpUnavailable(f"LP unreachable at {url}: {type(exc).__name__}: {exc}") from None
        if status >= 500:
            raise LpUnavailable(f"LP answered {status} at {url}: {self._shown(data if bad is None else bad)}")
        if status == 404:
            raise NotFound(f"LP has no {url}")
        if status >= 400:
            message = data.get("message") if isinstance(data, dict) else None
            raise LpRefused(self._shown(message) if isinstance(message, str) and message else f"HTTP {status}", status=status)
        if bad is not None:
            raise LpRefused(f"LP answered {status} at {url} with an unusable body: {bad}", status=status)
        if not isinstance(data, dict):
            raise LpRefused(f"LP answered {status} at {url} with JSON that is not an object", status=status)
        return data

    async def quote(self, lp_url: str, sell: str, buy: str, amount: int) -> dict[str, Any]:
        return await self._call("GET", f"{lp_url.rstrip('/')}/quote?sell={sell}&buy={buy}&amount={amount}")

    async def accept(self, view: SwapView) -> dict[str, Any]:
        ileg, pleg = view.leg(INITIATOR), view.leg(PARTICIPANT)
        body = {
            "id": view.swap.id,
            "hashlock": view.swap.hashlock,
            "initiator_expiry": ileg.expiry,
            "sell": {"asset": ileg.asset, "amount": ileg.amount, "token": ileg.token},
            "buy": {"asset": pleg.asset, "amount": pleg.amount, "token": pleg.token},
            "trader": {ileg.chain: ileg.sender, pleg.chain: pleg.recipient},
        }
        answer = await self._call("POST", f"{view.swap.lp_url.rstrip('/')}/swaps", body)
        lp = answer.get("lp")
        if not isinstance(lp, dict):
            raise LpRefused("LP accepted without naming its identities (lp must be an object)")
        for chain in (ileg.chain, pleg.chain):
            _identity(lp, chain)  # refuse a malformed key now, not at lock time
        return answer

    async def notify_locked(self, view: SwapView) -> None:
        ileg = view.leg(INITIATOR)
        await self._call("POST", f"{view.swap.lp_url.rstrip('/')}/swaps/{view.swap.id}/lock", {"lock_ref": ileg.lock_ref, "script": ileg.script})

    async def participant_lock(self, view: SwapView) -> dict[str, Any] | None:
        data = await self._call("GET", f"{view.swap.lp_url.rstrip('/')}/swaps/{view.swap.id}")
        legs = data.get("legs") or {}
        lock = legs.get(PARTICIPANT) if isinstance(legs, dict) else None
        if lock is not None and not isinstance(lock, dict):
            raise LpRefused("LP's view of its lock is not an object")
        return lock


# --- shared -----------------------------------------------------------------------------


def describe(view: SwapView, with_secret: bool = False) -> dict[str, Any]:
    """A swap as JSON (the LP's ``GET /swaps/{id}``, ``swap status --json``)."""
    s = view.swap
    out: dict[str, Any] = {
        "id": s.id,
        "role": s.role,
        "state": s.state,
        "hashlock": s.hashlock,
        "retries": s.retries,
        "last_error": s.last_error,
        "next_attempt_at": s.next_attempt_at,
        "created_at": s.created_at,
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
        raise InputError(f"{name} must be a string of 1-100 characters", field=name)
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
    value = ids.get(chain) if isinstance(ids, dict) else None
    if chain == BITCOIN:
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) and len(value) == 66 else b""
        except ValueError:
            raw = b""
        if not is_compressed_pubkey(raw):
            raise InputError(f"{chain} identity must be a compressed public key (hex), got {_shown(value)}", field=chain)
        return raw.hex()
    if not isinstance(value, str) or len(value) != 42 or not is_address(value):
        raise InputError(f"{chain} identity must be an address, got {_shown(value)}", field=chain)
    return to_checksum_address(value)
