"""Roles a method card may declare in ``extra['role']``, and helpers that read them.

- ``oracle``: computed from the test truth (methods/oracles.py): a reference for the metrics.
- ``null``: a control that knows nothing about where the test expression is (a random training
  spot, a gene prior, the test truth shuffled or rotated on its slide): the score a metric gives
  for no location information. Nulls may be ordinary methods (methods/nulls.py) or read the truth
  (the shuffled and rotated truths in methods/oracles.py).

Both are references: rows a leaderboard shows but never ranks as methods. Whether the harness
hands a method the test truth is not a role: see ``methods.oracles.receives_truth``.
"""

from __future__ import annotations

from typing import Any, Mapping

ORACLE_ROLE = "oracle"
NULL_ROLE = "null"
REFERENCE_ROLES = frozenset({ORACLE_ROLE, NULL_ROLE})


def role_of(cls_or_card: Any) -> str | None:
    """The role of a method class, a MethodCard, or a card dict as ``MethodCard.to_dict`` records it
    (None when the card declares none)."""
    card = cls_or_card if isinstance(cls_or_card, Mapping) else getattr(cls_or_card, "card", cls_or_card)
    extra = card.get("extra") if isinstance(card, Mapping) else getattr(card, "extra", None)
    role = extra.get("role") if isinstance(extra, Mapping) else None
    return role if isinstance(role, str) else None


def is_oracle(cls_or_card: Any) -> bool:
    """True for an oracle's class or card (as a card's ``to_dict`` records it, too)."""
    return role_of(cls_or_card) == ORACLE_ROLE


def is_null(cls_or_card: Any) -> bool:
    """True for a null control's class or card."""
    return role_of(cls_or_card) == NULL_ROLE


def is_reference(cls_or_card: Any) -> bool:
    """True for an oracle or a null: a row that is shown but never ranked as a method."""
    return role_of(cls_or_card) in REFERENCE_ROLES
