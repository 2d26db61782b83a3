"""Shared fixtures.  Devnet fixtures start real nodes on free ports in pytest's
temp dirs; pytest keeps the last runs' temp dirs, so a failed run's node data
and logs can be inspected afterwards (path printed in the failure)."""

from __future__ import annotations

import logging

import pytest

from devnets.anvil import Anvil

log = logging.getLogger("tests")


@pytest.fixture(scope="session")
def anvil(tmp_path_factory):
    """A real Anvil (chain id 31337, prague) for the whole session."""
    node = Anvil(tmp_path_factory.mktemp("anvil"))
    node.start()
    log.info("anvil up at %s (data %s)", node.url, node.data_dir)
    yield node
    node.stop()
