"""The swap state machine's step handlers, for both roles (module doc of ``bridge.swaps.engine``
for the states).  Mixins of ``SwapEngine``: ``self`` is the engine, its fields (store, legs,
policy, lp, ...) are what they read; the runtime steps them (``SwapEngine._handle``)."""

from bridge.swaps.handlers.common import CommonHandlers, replace_leg, replace_swap
from bridge.swaps.handlers.initiator import InitiatorHandlers
from bridge.swaps.handlers.participant import ParticipantHandlers
from bridge.swaps.handlers.spend import SpendHandlers


class SwapHandlers(InitiatorHandlers, ParticipantHandlers, SpendHandlers, CommonHandlers):
    """Every handler, for ``SwapEngine`` to inherit."""


__all__ = ["CommonHandlers", "InitiatorHandlers", "ParticipantHandlers", "SpendHandlers", "SwapHandlers", "replace_leg", "replace_swap"]
