"""The party's hand-off: the watch jobs that finish one of its swaps without it.

For the leg the party receives (the counterparty's lock) a ``claim`` job: the
initiator includes its secret, the participant points the watcher at its own lock,
where the initiator's claim will reveal the secret.  For the leg the party locked a
``refund`` job.  Bitcoin spends are pre-signed here over a feerate ladder and pay the
party's own P2WPKH script; EVM spends are contract calls anyone may make, and the
contract pays the swap's recipient (claim) or sender (refund) whoever calls.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import aiohttp

from bridge.core import jsonsafe
from bridge.core.errors import ChainUnavailable, InputError
from bridge.swaps.models import INITIATOR, PARTICIPANT, SwapLeg
from bridge.swaps.store import SwapView
from bridge.watch.presign import DEFAULT_LADDER, presign_claims, presign_refunds
from chains.base import BITCOIN, EVM
from chains.bitcoin_wallet import BtcKey
from htlc.bitcoin_script import p2wsh_htlc_script
from htlc.bitcoin_tx import HtlcCoin
from htlc.evm import EvmHtlc


def _coin(view: SwapView, leg: SwapLeg) -> HtlcCoin:
    txid, _, vout = (leg.lock_ref or "").partition(":")
    script = (
        bytes.fromhex(leg.script)
        if leg.script
        else p2wsh_htlc_script(
            bytes.fromhex(view.swap.hashlock),
            bytes.fromhex(leg.recipient),
            bytes.fromhex(leg.sender),
            leg.expiry,
        )
    )
    return HtlcCoin(txid, int(vout), leg.value, script)


async def _evm_htlc(htlc: EvmHtlc, leg: SwapLeg) -> dict[str, Any]:
    p = (await htlc.locked_swap(leg.lock_ref, leg.watch_from or 0)).swap
    return {
        "contract": htlc.address,
        "swap": {
            "sender": p.sender,
            "recipient": p.recipient,
            "token": p.token,
            "amount": p.amount,
            "hashlock": p.hashlock.hex(),
            "expiry": p.expiry,
            "nonce": p.nonce,
        },
    }


def _reveal(htlc: EvmHtlc, leg: SwapLeg) -> dict[str, Any]:
    if leg.chain == BITCOIN:
        return {"chain": BITCOIN, "outpoint": leg.lock_ref, "from_height": leg.watch_from or 0}
    return {"chain": EVM, "contract": htlc.address, "swap_id": leg.lock_ref, "from_height": leg.watch_from or 0}


async def swap_jobs(
    view: SwapView,
    btc_key: BtcKey,
    evm_htlc: EvmHtlc,
    network: str = "regtest",
    feerates: Sequence[int] = DEFAULT_LADDER,
) -> list[dict[str, Any]]:
    """The claim and refund jobs for ``view`` (this party's row), for whichever legs are locked."""
    role = view.swap.role
    mine, theirs = view.leg(role), view.leg(PARTICIPANT if role == INITIATOR else INITIATOR)
    hashlock = view.swap.hashlock
    jobs: list[dict[str, Any]] = []
    if theirs.lock_ref:
        job: dict[str, Any] = {"kind": "claim", "chain": theirs.chain, "hashlock": hashlock}
        if theirs.chain == BITCOIN:
            coin = _coin(view, theirs)
            job |= {
                "payout": btc_key.p2wpkh_script.hex(),
                "htlc": {"script": coin.script.hex(), "outpoint": theirs.lock_ref, "amount": coin.amount},
                "presigned": presign_claims(coin, btc_key, btc_key.p2wpkh_script, feerates, network),
            }
        else:
            job |= {"payout": theirs.recipient, "htlc": await _evm_htlc(evm_htlc, theirs)}
        if view.swap.secret:
            job["secret"] = view.swap.secret
        elif mine.lock_ref:
            job["reveal"] = _reveal(evm_htlc, mine)
        else:
            raise InputError("no secret and no lock of ours where it would be revealed: nothing a watcher can claim with")
        jobs.append(job)
    if mine.lock_ref:
        job = {"kind": "refund", "chain": mine.chain, "hashlock": hashlock}
        if mine.chain == BITCOIN:
            coin = _coin(view, mine)
            job |= {
                "payout": btc_key.p2wpkh_script.hex(),
                "htlc": {"script": coin.script.hex(), "outpoint": mine.lock_ref, "amount": coin.amount},
                "presigned": presign_refunds(coin, btc_key, btc_key.p2wpkh_script, feerates, network),
            }
        else:
            job |= {"payout": mine.sender, "htlc": await _evm_htlc(evm_htlc, mine)}
        jobs.append(job)
    if not jobs:
        raise InputError(f"swap {view.swap.id} has no lock yet: nothing to hand a watcher", swap_id=view.swap.id)
    return jobs


# --- the client: posting the jobs to a watcher ------------------------------------------------


class WatcherRefused(InputError):
    """The watcher refused a job, or answered something that is not a job."""


async def read_answer(resp: aiohttp.ClientResponse, limit: int = jsonsafe.MAX_BODY) -> Any:
    """A watcher's JSON answer, parsed with ``bridge.core.jsonsafe`` bounds: a hostile answer is a
    ``JsonRefused``, never a crash."""
    return jsonsafe.loads(await jsonsafe.read_capped(resp, limit, "answer"))


def _shown(text: Any, chars: int = 300) -> str:
    text = str(text)
    return "".join(c if c.isprintable() else "?" for c in text[:chars]) + ("..." if len(text) > chars else "")


async def submit_jobs(watcher_url: str, jobs: Sequence[dict[str, Any]], timeout: float = 60.0) -> list[dict[str, Any]]:
    """POST each job to the watcher's ``/jobs``; the watcher's answers (the jobs as it stored them).
    ``WatcherRefused`` names a refused job or an unusable answer, ``ChainUnavailable`` an unreachable watcher."""
    answers: list[dict[str, Any]] = []
    url = f"{watcher_url.rstrip('/')}/jobs"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        for job in jobs:
            try:
                async with http.post(url, json=job) as resp:
                    status = resp.status
                    try:
                        body = await read_answer(resp)
                    except jsonsafe.JsonRefused as exc:
                        raise WatcherRefused(
                            f"watcher at {watcher_url} answered {status} to the {job['kind']} job with an unusable body: {exc.message}"
                        ) from None
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise ChainUnavailable(f"watcher at {watcher_url} unreachable: {type(exc).__name__}: {exc}") from None
            if not isinstance(body, dict):
                raise WatcherRefused(f"watcher at {watcher_url} answered {status} with JSON that is not an object")
            if status >= 400:
                reason = body.get("reason") or body.get("message") or f"HTTP {status}"
                raise WatcherRefused(f"watcher refused the {job['kind']} job: {_shown(reason)}")
            if not all(isinstance(body.get(k), str) for k in ("id", "kind", "chain", "state")):
                raise WatcherRefused(f"watcher at {watcher_url} answered {status} without the job's id, kind, chain and state")
            answers.append(body)
    return answers
