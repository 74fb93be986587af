"""docs/record.schema.json describes the records flag-bench writes (ok and failed, with and without
gene sets): a field added to CellRecord fails here until the schema describes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flag_bench.catalog import METHODS
from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanConfig, MeanControl

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "record.schema.json").read_text())


class FailsInFit(MeanControl):
    card = MethodCard(name="schema-fails", description="test: always fails in fit", needs=frozenset(),
                      default_run=False)
    Config = MeanConfig

    def fit(self, train, val=None):
        raise RuntimeError("boom")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    from flag_bench.datasets.synthetic import load

    genes = list(load(n_slides=3, spots_per_slide=30, n_genes=12, seed=1).genes)
    (tmp / "sets.gmt").write_text("SET\ttest\t" + "\t".join(genes[:6]) + "\n")
    METHODS.register("schema-fails", FailsInFit)
    try:
        for name, extra in (("plain", {}), ("sets", {"gene_sets": f"file:{tmp / 'sets.gmt'}"})):
            cfg = RunConfig(datasets=("synthetic:n_slides=3,spots_per_slide=30,n_genes=12,seed=1",),
                            methods=("mean", "ridge", "schema-fails"), genes=(12,), folds=(0,), encoder="color-stats",
                            preset="tiny", device="cpu", results_dir=str(tmp / name), **extra)
            Driver(cfg).run()
    finally:
        METHODS.unregister("schema-fails")
    out = {}
    for path in sorted(tmp.glob("*/cells/*.json")):
        out[f"{path.parent.parent.name}/{path.name}"] = json.loads(path.read_text())
    return out


def test_every_record_written_validates(records):
    kinds = {(d["status"], bool(d["cell"].get("gene_sets"))) for d in records.values()}
    assert kinds == {("ok", False), ("ok", True), ("failed", False), ("failed", True)}
    for name, doc in records.items():
        errors = [e.message for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc)]
        assert not errors, f"{name}: {errors[:3]}"


def test_the_schema_catches_drift(records):
    doc = next(d for d in records.values() if d["status"] == "ok")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert validator.is_valid(doc)
    assert not validator.is_valid({**doc, "new_field": 1})  # a new record field must be described
    assert not validator.is_valid({**doc, "cell": {**doc["cell"], "new_axis": "x"}})
    assert not validator.is_valid({k: v for k, v in doc.items() if k != "scores"})
    assert not validator.is_valid({**doc, "schema_version": 2})
