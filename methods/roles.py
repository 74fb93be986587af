"""Readers of the role a method class or card declares (``MethodCard.role``, flag_bench/roles.py).

- ``oracle``: computed from the test truth (methods/oracles.py): a reference for the metrics.
- ``null``: an image-free null control (methods/nulls.py): the score a metric gives for no image
  information. ``truth_null``: a null built from the test truth, shuffled or rotated on its slide
  (methods/oracles.py). Both read as nulls here.
- ``negative_control`` / ``positive_control``: the controls that scale a board (methods/controls.py).

Nulls and oracles are references: rows a leaderboard shows but never ranks as methods. The
leaderboard and the tracker read the role from the record, not through this module. Whether the
harness hands a method the test truth is not a role: see ``methods.oracles.receives_truth``.
"""

from __future__ import annotations

from typing import Any, Mapping

from flag_bench.roles import NULL_ROLES, REFERENCE_ROLES, Role, recorded_role


def role_of(cls_or_card: Any) -> Role:
    """The role of a method class, a MethodCard, or a card dict as ``MethodCard.to_dict`` records it
    (older records included: flag_bench.roles.recorded_role)."""
    card = cls_or_card if isinstance(cls_or_card, Mapping) else getattr(cls_or_card, "card", cls_or_card)
    if isinstance(card, Mapping):
        return recorded_role(card)
    role = getattr(card, "role", Role.METHOD)
    return role if isinstance(role, Role) else Role.METHOD


def is_oracle(cls_or_card: Any) -> bool:
    """True for an oracle's class or card (as a card's ``to_dict`` records it, too)."""
    return role_of(cls_or_card) is Role.ORACLE


def is_null(cls_or_card: Any) -> bool:
    """True for a null control's class or card (image-free or built from the truth)."""
    return role_of(cls_or_card) in NULL_ROLES


def is_reference(cls_or_card: Any) -> bool:
    """True for an oracle or a null: a row that is shown but never ranked as a method."""
    return role_of(cls_or_card) in REFERENCE_ROLES
