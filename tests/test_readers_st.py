"""Legacy ST: the real STUtility mouse olfactory bulb sections (tests/data/mob), read and run end
to end with mean and ridge over its two animals."""

from __future__ import annotations

from pathlib import Path

import pytest

import layouts
from flag_bench.datasets.readers import legacy_st

DATA = Path(__file__).parent / "data"


def _run_ok(tmp_path: Path, *args: str) -> list[dict]:
    return layouts.run_ok(tmp_path / "r", *args)


@pytest.mark.slow
def test_mob_sections_run_leave_one_animal_out(tmp_path):
    ds = legacy_st.load(root=str(DATA / "mob"))
    assert ds.slide_ids == ("MOB1", "MOB2", "MOB3", "MOB4") and ds.organism == "mouse"
    assert [s.n_spots for s in ds.slides] == [379, 407, 438, 403]  # selected spots (README)
    assert set(ds.patients.values()) == {"animal1", "animal2"}
    assert ds.slide("MOB1").meta["pixel_size_source"] == "estimated from spot spacing"
    cells = _run_ok(tmp_path, "--datasets", f"st:root={DATA / 'mob'}", "--split", "patient")
    assert len(cells) == 4  # 2 animals x 2 methods


def test_gene_names_map_and_missing_spot_table(tmp_path):
    import shutil

    import pytest

    from flag_bench.errors import UserError

    names = tmp_path / "names.tsv"
    names.write_text("Gene stable ID\tGene name\nENSMUSG00000064339\tmt-Rnr2\n")
    ds = legacy_st.load(root=str(DATA / "mob"), gene_names=str(names))
    assert "mt-Rnr2" in ds.genes and "ENSMUSG00000064339.1" not in ds.genes
    assert ds.gene_ids[ds.genes.index("mt-Rnr2")] == "ENSMUSG00000064339.1"
    root = tmp_path / "mob"
    root.mkdir()
    for f in ("MOB1.tsv.gz", "MOB1.jpg"):
        shutil.copy(DATA / "mob" / f, root / f)
    with pytest.raises(UserError, match="alignment_table_MOB1.tsv"):
        legacy_st.load(root=str(root))
