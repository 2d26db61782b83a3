"""Strict reads of JSON configuration files (``committee.json``): each refusal is a ``ConfigError``
naming the file, the field and what was wrong."""

from __future__ import annotations

from typing import Any

from eth_utils import is_address, to_checksum_address

from bridge.core.errors import ConfigError


class Fields:
    """The fields of one JSON document (``where`` names it in every error)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def need(self, obj: Any, key: str, kind: type, what: str) -> Any:
        """``obj[key]``, which must be a ``kind`` (never a bool standing in for an int)."""
        if not isinstance(obj, dict) or key not in obj:
            raise ConfigError(f"{self.where}: {what} is missing", field=what)
        value = obj[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{self.where}: {what} must be a {kind.__name__}, got {value!r}"[:300], field=what)
        return value

    def address(self, value: Any, what: str) -> str:
        """An EVM address, checksummed."""
        if not isinstance(value, str) or not is_address(value):
            raise ConfigError(f"{self.where}: {what} is not an EVM address: {value!r}"[:300], field=what)
        return to_checksum_address(value)
