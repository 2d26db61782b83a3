"""Atomic swaps between Bitcoin and an EVM chain (issue 6).

``models``: the persisted state machine; ``store``: every transition in one DB
transaction; ``timelock``: the expiry rules of DESIGN.md; ``legs``: what one leg
does on its chain; ``engine``: the step handlers both parties run;
``protocol``: the LP's quote/accept rules and the trader's HTTP client.
"""
