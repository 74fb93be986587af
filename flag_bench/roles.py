"""What a method is on a leaderboard: the one typed vocabulary of the method card's ``role``.

The card declares it (``MethodCard.role``), the record stores it (the card dict of
``MethodInfo``, and the ``role`` column of ``CellRecord.to_row``), and the tracker and the
leaderboard read it from the record, never from the method's class or module. This module sits
below the record so every layer can read a role without importing ``methods``.

- ``method``: an ordinary method, ranked.
- ``negative_control`` / ``positive_control``: ordinary methods that set a board's 0 and 1
  (control-scaled scores: ``mean`` is the negative control; ``ridge``, ``ridge-smooth``, ``knn``
  the positive ones). Ranked like methods.
- ``null``: an image-free null control, an ordinary method that sees no test data (``random-spot``,
  ``gene-prior``): the score a metric gives for no image information; calibration's zero.
- ``truth_null``: a null built from the test truth (the truth shuffled or rotated on its slide).
- ``oracle``: a prediction computed from the test truth: a reference for the metrics.

Nulls and oracles are references: shown on every board, never ranked. A role is what a card says;
whether the harness hands a method the test truth is not: the registry grants that to built-in
names only (``catalog.TRUTH_RECEIVERS``), whatever a card declares.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping


class Role(str, enum.Enum):
    METHOD = "method"
    NEGATIVE_CONTROL = "negative_control"
    POSITIVE_CONTROL = "positive_control"
    NULL = "null"
    TRUTH_NULL = "truth_null"
    ORACLE = "oracle"

    def __str__(self) -> str:
        return self.value

    @property
    def is_reference(self) -> bool:
        """Shown on every board, never ranked as a method."""
        return self in REFERENCE_ROLES

    @property
    def board_mark(self) -> str:
        """The text a board row carries for this role: "oracle", "null" (either kind) or ""."""
        return "oracle" if self is Role.ORACLE else "null" if self in NULL_ROLES else ""


NULL_ROLES = frozenset({Role.NULL, Role.TRUTH_NULL})
REFERENCE_ROLES = frozenset({*NULL_ROLES, Role.ORACLE})
# roles whose cards say they read the test truth (a claim: the registry decides who gets it)
TRUTH_ROLES = frozenset({Role.TRUTH_NULL, Role.ORACLE})
CONTROL_ROLES = {Role.NEGATIVE_CONTROL: "negative", Role.POSITIVE_CONTROL: "positive"}

# Records written before the card had a role field: the built-in controls were known by name
# (leaderboard/stats.py) and the references by ``extra['role']`` (+ ``extra['reads_truth']``).
_LEGACY_CONTROLS = {"mean": Role.NEGATIVE_CONTROL, "ridge": Role.POSITIVE_CONTROL,
                    "ridge-smooth": Role.POSITIVE_CONTROL, "knn": Role.POSITIVE_CONTROL}


def parse_role(value: Any, where: str = "role") -> Role:
    """A Role from its value ("oracle") or itself; ValueError naming the known roles otherwise."""
    try:
        return Role(value)
    except ValueError:
        raise ValueError(f"{where}: unknown role {value!r} (roles: {', '.join(r.value for r in Role)})") from None


def recorded_role(card: Mapping[str, Any] | None, method: str = "") -> Role:
    """The role of a card dict as a record stores it (``MethodCard.to_dict``). A record written
    before the role field reads as it did then: ``extra['role']`` for references and card-declared
    controls, else the built-in controls by ``method`` name, else ``method``."""
    card = card if isinstance(card, Mapping) else {}
    if "role" in card:
        return parse_role(card["role"], f"method card '{card.get('name', method)}'")
    extra = card.get("extra")
    extra = extra if isinstance(extra, Mapping) else {}
    old = extra.get("role")
    if old == "oracle":
        return Role.ORACLE
    if old == "null":
        return Role.TRUTH_NULL if extra.get("reads_truth") else Role.NULL
    if old in ("negative_control", "positive_control"):
        return Role(old)
    return _LEGACY_CONTROLS.get(str(card.get("name") or method), Role.METHOD)
