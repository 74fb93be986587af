"""Gene sets (GMT) for pathway scores: files and registered sets pinned by content hash (issue 25).

``--gene-sets file:SETS.gmt`` reads a GMT file; ``--gene-sets NAME`` a set file a package
registers in ``catalog.GENE_SETS`` (entry-point group ``flag_bench.gene_sets``). A registered
entry is a package resource and its sha256 (``GeneSetEntry``, or a ``(resource, sha256)`` pair):
loading verifies the bytes against the pin, so a set a cell was scored with cannot change under
the same name. What a cell scores enters its id as ``GeneSets.identity`` (name and content hash,
never a path); the protocol card holds ``GeneSets.card`` (spec, source, sha256, number of sets,
the min-genes rule), from which ``spec_from_protocol`` gives back the ``--gene-sets`` value.

GMT (the Broad's format): one set a line, ``NAME<TAB>DESCRIPTION<TAB>GENE<TAB>GENE...``; blank
lines are skipped, a repeated gene within a set is kept once, a repeated set name is an error.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from flag_bench.errors import UserError

FILE_PREFIX = "file:"
PROTOCOL_KEY = "gene_sets"  # the protocol card's entry (GeneSets.card)

GeneSetTuple = tuple[tuple[str, tuple[str, ...]], ...]  # ((set name, its genes), ...) in file order


@dataclass(frozen=True)
class GeneSetEntry:
    """A registered set file: ``resource`` is ``"package:relative/path"`` inside an installed
    package, ``sha256`` the hex digest of its bytes (a mismatch is refused)."""

    resource: str
    sha256: str
    description: str = ""


@dataclass(frozen=True)
class GeneSets:
    """The sets of one GMT file, read and hashed."""

    name: str  # the registered name, or "file"
    spec: str  # the --gene-sets value that reads the same file again (a file's absolute path)
    source: str  # the file's absolute path, or "package:resource"
    sha256: str  # of the file's bytes
    sets: GeneSetTuple

    @property
    def identity(self) -> str:
        """What enters a cell id: name and content hash, never a path."""
        return f"{self.name}@{self.sha256}"

    def eligible(self, genes: Sequence[str], min_genes: int) -> GeneSetTuple:
        """The sets with at least ``min_genes`` of their genes among ``genes`` (a dataset's gene pool:
        a panel is drawn from it, so no other set can ever be scored), in file order."""
        pool = set(genes)
        return tuple((n, g) for n, g in self.sets if sum(x in pool for x in g) >= min_genes)

    def card(self, min_genes: int, n_eligible: int | None = None) -> dict[str, Any]:
        """The protocol card's ``gene_sets`` entry."""
        out: dict[str, Any] = {
            "spec": self.spec, "name": self.name, "source": self.source, "sha256": self.sha256,
            "n_sets": len(self.sets), "min_genes": int(min_genes),
            "score": "per spot, the mean over a set's panel genes of the gene's z-score over the slide's spots "
                     "(truth and prediction each standardised by their own mean and sd; a constant gene is 0)",
            "pathway_pcc": f"Pearson r over spots of truth vs predicted set score, for each set with >= {min_genes} "
                           "panel genes whose truth score varies; mean over those sets, then mean over test slides",
        }
        if n_eligible is not None:
            out["n_sets_in_gene_pool"] = int(n_eligible)
        return out


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_gmt(data: bytes, where: str) -> GeneSetTuple:
    """GMT bytes -> ((name, genes), ...); a malformed line is one UserError naming ``where`` and the line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 text (byte {exc.start}); save the GMT file as UTF-8") from None
    sets: list[tuple[str, tuple[str, ...]]] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.split("\t")
        name = fields[0].strip()
        genes = [g.strip() for g in fields[2:] if g.strip()]
        if len(fields) < 3 or not genes:
            raise UserError(f"{where} line {i}: expected NAME<TAB>DESCRIPTION<TAB>GENE..., found {len(fields)} "
                            f"tab-separated field(s){' and no gene' if len(fields) >= 3 else ''}; GMT separates "
                            "fields with tabs, one gene set a line")
        if not name:
            raise UserError(f"{where} line {i}: the gene set has no name (first field); name it")
        if name in seen:
            raise UserError(f"{where} line {i}: gene set '{name}' is also on line {seen[name]}; "
                            "give each set its own name")
        seen[name] = i
        sets.append((name, tuple(dict.fromkeys(genes))))
    if not sets:
        raise UserError(f"{where}: no gene set in the file; a GMT file has one set a line")
    return tuple(sets)


def read_gmt_file(path: str | Path, spec: str | None = None) -> GeneSets:
    """A GMT file on disk -> GeneSets named "file" (a missing or malformed file is a UserError)."""
    p = Path(path).expanduser()
    what = f"--gene-sets {spec or FILE_PREFIX + str(path)}"
    if not p.is_file():
        raise UserError(f"{what}: no such file ({p}); give file:PATH of a GMT file or a registered set's name")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(f"{what}: cannot read {p} ({exc.strerror})") from None
    resolved = p.resolve()
    return GeneSets("file", FILE_PREFIX + str(resolved), str(resolved), sha256_hex(data),
                    parse_gmt(data, f"--gene-sets {FILE_PREFIX}{p}"))


def _entry(name: str, obj: Any) -> GeneSetEntry:
    if isinstance(obj, GeneSetEntry):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(x, str) for x in obj):
        return GeneSetEntry(str(obj[0]), str(obj[1]))
    raise UserError(f"gene set '{name}' is registered as {type(obj).__name__}; a gene-set entry is a "
                    "GeneSetEntry or a (\"package:path\", sha256) pair: fix the package that registers it")


def read_resource(resource: str, where: str) -> bytes:
    """The bytes of ``"package:relative/path"`` inside an installed package."""
    package, sep, rel = resource.partition(":")
    if not sep or not package or not rel:
        raise UserError(f"{where}: resource '{resource}' is not \"package:relative/path\"; fix its registration")
    try:
        return importlib.resources.files(package).joinpath(rel).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise UserError(f"{where}: cannot read {resource} ({type(exc).__name__}); reinstall the package that "
                        "ships it") from None


def load_registered(name: str) -> GeneSets:
    """A registered set file, its bytes checked against the pinned sha256."""
    from flag_bench.catalog import GENE_SETS

    try:
        GENE_SETS.check(name)
    except UserError as exc:
        raise UserError(f"--gene-sets: {exc}; or give file:PATH of a GMT file") from None
    entry = _entry(name, GENE_SETS.get(name))
    where = f"gene set '{name}' ({entry.resource})"
    data = read_resource(entry.resource, where)
    digest = sha256_hex(data)
    if digest != entry.sha256.lower():
        raise UserError(f"{where}: content sha256 {digest[:16]}... differs from the pinned {entry.sha256[:16]}...; "
                        "the file was changed after it was registered: reinstall the package that ships it")
    return GeneSets(name, name, entry.resource, digest, parse_gmt(data, where))


def resolve_gene_sets(spec: str) -> GeneSets:
    """``file:PATH`` or a registered name -> GeneSets (every problem a one-line UserError)."""
    text = str(spec).strip()
    if not text:
        raise UserError("--gene-sets: empty value; give file:PATH of a GMT file or a registered set's name")
    if text.startswith(FILE_PREFIX):
        path = text[len(FILE_PREFIX):]
        if not path:
            raise UserError("--gene-sets file:: no path after file:; give file:PATH of a GMT file")
        return read_gmt_file(path, text)
    return load_registered(text)


def spec_from_protocol(protocol: Mapping[str, Any]) -> str | None:
    """The ``--gene-sets`` value a record was scored with (from its protocol card), or None when the
    cell scored no gene sets. A file spec holds the file's absolute path; whoever reruns the cell
    checks ``expected_sha256_from_protocol`` against the file found there."""
    card = protocol.get(PROTOCOL_KEY) if isinstance(protocol, Mapping) else None
    return str(card["spec"]) if isinstance(card, Mapping) and card.get("spec") else None


def expected_sha256_from_protocol(protocol: Mapping[str, Any]) -> str | None:
    card = protocol.get(PROTOCOL_KEY) if isinstance(protocol, Mapping) else None
    return str(card["sha256"]) if isinstance(card, Mapping) and card.get("sha256") else None


# the built-in set file (flag_bench/data/gene_sets/README.md says where its sets come from)
HER2_BREAST = GeneSetEntry(
    "flag_bench:data/gene_sets/her2_breast.gmt",
    "f2d52fb180445af83f88277ab8b82b628f9a94bc55ff0cefefbe733aa4482529",
    "nine programmes of HER2+ breast cancer sections (ERBB2 amplicon, luminal, plasma cell, T cell, MHC II, "
    "stroma, proliferation, adipocyte, macrophage), her2st-mini's gene symbols",
)
