"""The bridge's exception tree.

Every error the bridge raises on purpose is a ``BridgeError``.  Each class says
whether retrying the same call can help (``retryable``), so the one retry policy
(``bridge.core.retry``) and the state machines never have to guess from a message.
"""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "retryable": self.retryable,
            **{k: v for k, v in self.details.items() if _jsonable(v)},
        }


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


# --- caller mistakes: retrying the same input never helps -------------------


class InputError(BridgeError):
    """Bad input: malformed, out of range, wrong type.  Nothing was changed."""


class ConfigError(BridgeError):
    """Settings are missing or inconsistent."""


class SchemaError(ConfigError):
    """The database was written by another version and cannot be brought up to date in place;
    ``table`` and ``column`` name what is in the way."""


class NotFound(BridgeError):
    """The thing asked for does not exist (account, swap, block, transaction)."""


class Unsupported(BridgeError):
    """The backend does not offer this optional feature."""


class Conflict(BridgeError):
    """The request contradicts what is already recorded (e.g. an id reused with other content)."""


# --- chain errors -------------------------------------------------------------


class ChainError(BridgeError):
    """Something went wrong talking to a chain."""


class ChainUnavailable(ChainError):
    """The node did not answer (connection refused, timeout, 5xx, warming up)."""

    retryable = True


class RpcError(ChainError):
    """The node answered with a JSON-RPC error.  ``code`` is the node's error code."""

    def __init__(self, message: str, code: int | None = None, method: str | None = None, **details: Any):
        super().__init__(message, code=code, method=method, **details)
        self.code = code
        self.method = method


class TransactionRejected(RpcError):
    """The node refused a transaction (policy or consensus); ``reason`` is its reject reason."""

    def __init__(self, message: str, code: int | None = None, method: str | None = None, reason: str | None = None, **details: Any):
        super().__init__(message, code=code, method=method, reason=reason, **details)
        self.reason = reason or message


class MissingInputs(TransactionRejected):
    """Inputs are unknown or already spent (bitcoind -25).  May clear after a block or a reorg."""

    retryable = True


class AlreadyInChain(TransactionRejected):
    """The transaction is already confirmed (bitcoind -27).  Usually means a broadcast landed."""


class ContractReverted(ChainError):
    """An EVM call or transaction reverted; ``reason`` holds the decoded custom error when known."""

    def __init__(self, message: str, reason: str | None = None, data: str | None = None, **details: Any):
        super().__init__(message, reason=reason, data=data, **details)
        self.reason = reason
        self.data = data


class NonceConflict(ChainError):
    """The nonce was already used or is too far ahead; the nonce manager resynchronises and retries."""

    retryable = True


class InsufficientFunds(ChainError):
    """Not enough coins or balance to pay for what was asked."""


class ConfirmationTimeout(ChainError):
    """A transaction did not reach the wanted confirmations before the deadline."""

    retryable = True


class ReorgDetected(ChainError):
    """The chain below a cursor changed; the indexer rewinds."""

    retryable = True


# --- devnets ------------------------------------------------------------------


class DevnetError(BridgeError):
    """A devnet node failed to start, died, or is in an unexpected state."""


# --- ledger -------------------------------------------------------------------


class LedgerError(BridgeError):
    """A ledger operation was refused; nothing was written."""


class UnknownAccount(LedgerError, NotFound):
    """The account does not exist in the ledger."""


class UnknownAsset(LedgerError, NotFound):
    """The asset is not in the registry."""


class Overdraft(LedgerError):
    """The transfer would take an account below zero where its kind forbids it."""


class IdempotencyConflict(LedgerError, Conflict):
    """A transfer id was reused with different content."""


class LedgerConcurrencyError(LedgerError):
    """A concurrent writer changed the same rows; the batch can be retried as a whole."""

    retryable = True


class PendingTransferError(LedgerError):
    """A post or void names a pending transfer that is unknown, already resolved or expired."""


class PriceRejected(LedgerError):
    """The margin view refused an oracle price: too few fresh reports, or reporters disagree."""
