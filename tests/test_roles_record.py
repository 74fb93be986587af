"""A method's role is a typed card field, stored in the record and read from it: the results row
carries it (``role`` column), the leaderboard ranks or marks rows by it whatever the method's name
or registry entry, and records written before the field read as they did."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from flag_bench.errors import UserError
from flag_bench.leaderboard import stats as S
from flag_bench.leaderboard.calibration import image_free_nulls
from flag_bench.methods.base import MethodCard
from flag_bench.record import CellRecord, MethodInfo
from flag_bench.roles import Role

from test_results_api import make_record


def _with_card(rec: CellRecord, card: dict) -> CellRecord:
    return dataclasses.replace(rec, method=dataclasses.replace(rec.method, card=card))


@pytest.mark.parametrize("role", list(Role))
def test_the_role_is_stored_in_the_record_and_its_row(role):
    card = MethodCard(name="plug", description="x", needs=frozenset(), role=role).to_dict()
    rec = _with_card(make_record("plug", "small", {}, 5, 0), card)
    back = CellRecord.loads(rec.dumps())
    assert back.method.card["role"] == role.value and back.method.role is role
    assert back.to_row()["role"] == role.value


def test_a_record_from_before_the_role_field_reads_as_then():
    old_null = {"name": "null-rotate", "extra": {"role": "null", "reads_truth": True, "note": "x"}}
    rec = _with_card(make_record("null-rotate", "small", {}, 5, 0), old_null)
    assert CellRecord.loads(rec.dumps()).to_row()["role"] == Role.TRUTH_NULL.value
    # the built-in controls had no role on their cards: known by name then, so now
    assert make_record("mean", "small", {}, 5, 0).to_row()["role"] == Role.NEGATIVE_CONTROL.value
    assert make_record("knn", "small", {}, 5, 0).to_row()["role"] == Role.POSITIVE_CONTROL.value
    assert make_record("flag", "small", {}, 5, 0).to_row()["role"] == Role.METHOD.value


def test_a_role_this_version_does_not_know_is_one_clear_error():
    info = MethodInfo("plug", "small", {}, card={"name": "plug", "role": "judge"})
    with pytest.raises(UserError, match="unknown role 'judge'"):
        _ = info.role


def _frame(roles: dict[str, Role]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "role": r.value, "dataset": "d", "n_genes": 5, "fold": f, "seed": 0,
                          "config_hash": "h", "pcc_mean": 0.1} for m, r in roles.items() for f in ("a", "b")])


def test_the_leaderboard_reads_roles_from_the_records_not_names_or_the_registry():
    # "ridge" is a registered positive control, but these records say method; "plug-oracle" is not
    # registered anywhere, and its records say oracle
    frame = _frame({"ridge": Role.METHOD, "mean": Role.NEGATIVE_CONTROL, "plug-oracle": Role.ORACLE,
                    "plug-null": Role.NULL, "gene-prior": Role.TRUTH_NULL, "flag": Role.POSITIVE_CONTROL})
    assert S.control_roles(frame) == {"flag": "positive", "mean": "negative"}
    assert S.reference_roles(frame) == {"gene-prior": "null", "plug-null": "null", "plug-oracle": "oracle"}
    assert S.oracle_methods(frame) == ["plug-oracle"]
    assert image_free_nulls(frame) == ["plug-null"]  # a truth-built null never sets calibration's zero


def test_records_of_one_method_that_disagree_never_rank_a_reference():
    frame = pd.concat([_frame({"m": Role.METHOD}), _frame({"m": Role.ORACLE})])
    assert S.reference_roles(frame) == {"m": "oracle"}
    assert S.method_roles(pd.DataFrame({"method": ["x"]})) == {"x": Role.METHOD}  # no role column: methods
