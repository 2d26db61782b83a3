"""The narrow async interface every chain family implements.

Only what the rest of the bridge needs: the head, blocks with their parent
hash (for reorg detection), the events in a height range, sending, and waiting
for confirmations.  Optional features default to ``Unsupported`` so callers can
probe safely.
"""

from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from bridge.core.errors import ConfirmationTimeout, Unsupported
from chains.heads import HeadFollower

#: The chain families' names, as stored (swap legs, watch jobs) and as adapters report them.
BITCOIN = "bitcoin"
EVM = "evm"


@dataclass(frozen=True)
class BlockRef:
    """A block as the indexer sees it: enough to follow a chain and notice a reorg."""

    height: int
    hash: str  # hex, as the chain's RPC shows it (bitcoind: big-endian display; EVM: 0x-prefixed)
    parent_hash: str
    timestamp: int


@dataclass(frozen=True)
class ChainEvent:
    """One thing that happened on chain, with a key that is unique on that chain.

    Bitcoin: a transaction (key ``txid``) or an output (``txid:vout``).
    EVM: a log (key ``txhash:logindex``).
    """

    key: str
    block: BlockRef
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TxStatus:
    txid: str
    confirmations: int  # 0 = in the mempool / pending; -1 = unknown to the node
    block: BlockRef | None = None


class ChainAdapter(abc.ABC):
    """One implementation per chain family (``chains.evm``, ``chains.bitcoin``)."""

    family: str = "abstract"
    #: Follows the blocks the node announces, for ``wait_for_block``; None: the node cannot.
    heads: HeadFollower | None = None

    @property
    @abc.abstractmethod
    def chain_id(self) -> str:
        """A stable id for this chain, e.g. ``evm:31337`` or ``bitcoin:regtest``."""

    @abc.abstractmethod
    async def head(self) -> BlockRef: ...

    @abc.abstractmethod
    async def block_by_height(self, height: int) -> BlockRef: ...

    @abc.abstractmethod
    async def block_by_hash(self, block_hash: str) -> BlockRef: ...

    @abc.abstractmethod
    async def events(self, from_height: int, to_height: int, selector: Any = None, blocks: Sequence[BlockRef] | None = None) -> list[ChainEvent]:
        """Events in blocks ``from_height..to_height`` inclusive, in chain order.

        ``selector`` is family specific (EVM: a log filter; Bitcoin: which scripts or
        transactions are of interest; ``None``: everything).  ``blocks``: refs of (some of) these
        blocks the caller already holds (an adapter may skip looking them up).
        """

    @abc.abstractmethod
    async def send(self, tx: Any) -> str:
        """Broadcast a signed transaction and return its id.

        Safe to call again with the same transaction: a broadcast that already
        landed is detected and its id returned, never a duplicate spend.
        """

    @abc.abstractmethod
    async def tx_status(self, txid: str) -> TxStatus: ...

    async def wait_for_confirmations(self, txid: str, confirmations: int = 1, timeout: float = 60.0, poll: float = 0.2) -> TxStatus:
        deadline = time.monotonic() + timeout
        height = -1  # the first wait returns at once where blocks are announced: it learns the tip
        while True:
            status = await self.tx_status(txid)
            if status.confirmations >= confirmations:
                return status
            if time.monotonic() >= deadline:
                raise ConfirmationTimeout(
                    f"{txid} has {max(status.confirmations, 0)} of {confirmations} confirmations after {timeout:.0f}s",
                    txid=txid,
                    confirmations=status.confirmations,
                )
            announced = await self.wait_for_block(height, min(poll, max(deadline - time.monotonic(), 0.0)))
            if announced is not None:
                height = announced

    # --- optional features ----------------------------------------------------

    async def wait_for_block(self, height: int, timeout: float) -> int | None:
        """Return once the chain has a block above ``height``, or after ``timeout`` seconds.

        Adapters whose node announces new blocks (``heads``) return as soon as one comes, with
        the height announced; without announcements this sleeps and returns None (a caller
        looping on it polls every ``timeout``).  Callers re-read what they need either way.
        """
        if self.heads is not None:
            return await self.heads.wait(height, timeout)
        await asyncio.sleep(timeout)
        return None

    async def mine(self, blocks: int = 1) -> list[str]:
        """Devnets only: produce blocks now."""
        raise Unsupported(f"{self.family} adapter cannot mine blocks")

    def announced_head(self) -> BlockRef | None:
        """The tip as the node last announced it (``heads``), or None where nothing live announces
        it.  Costs no request: for callers that just woke on an announcement and would otherwise
        read the head straight back.  It can trail the node by the announcement's latency, so a
        caller that must see its own just-mined block asks ``head()``."""
        return self.heads.head if self.heads is not None and self.heads.live else None

    async def close(self) -> None:
        if self.heads is not None:
            await self.heads.close()

    async def __aenter__(self) -> "ChainAdapter":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
