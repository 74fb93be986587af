"""Method configs and cards: typed presets and overrides, validated needs, the JSON card, seeds."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pytest

from flag_bench.catalog import METHODS
from flag_bench.errors import UserError
from flag_bench.methods.base import NEEDS, PRESETS, Method, MethodCard, PretrainedWeights


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.origin(n) == "built-in"])
def test_builtin_methods_define_every_preset_and_their_values_check(name):
    cls = METHODS.get(name)
    assert set(PRESETS) <= set(cls.presets), f"{name} lacks presets {set(PRESETS) - set(cls.presets)}"
    for preset in cls.presets:  # make_config type-checks every preset value
        assert dataclasses.is_dataclass(cls.make_config(preset))


def test_override_of_the_wrong_type_is_one_line_naming_method_key_and_type():
    flag = METHODS.get("flag")
    with pytest.raises(UserError) as e:
        flag.make_config("small", {"steps": "100"})
    msg = str(e.value)
    assert msg == ("method 'flag': config key 'steps' expects int | None, got str '100' "
                   "([methods.flag] in the config file)")
    with pytest.raises(UserError, match=r"config key 'steps' expects int \| None, got bool True"):
        flag.make_config("small", {"steps": True})  # a bool is not an int
    with pytest.raises(UserError, match=r"'graph_input' expects 'x_t' \| 'cond', got str 'xt'"):
        flag.make_config("small", {"graph_input": "xt"})
    with pytest.raises(UserError, match=r"'lr' expects float, got str '1e-3' \(from the CLI\)"):
        flag.make_config("small", {"lr": "1e-3"}, source="from the CLI")
    with pytest.raises(UserError, match=r"'use_cond_e_in_attn' expects bool, got int 1"):
        flag.make_config("small", {"use_cond_e_in_attn": 1})


def test_accepted_overrides_keep_toml_types():
    flag = METHODS.get("flag")
    cfg = flag.make_config("small", {"lr": 1, "steps": None, "gene_embedding_options": [["rank_dim", 8]]})
    assert cfg.lr == 1 and cfg.steps is None and cfg.gene_embedding_options == (("rank_dim", 8),)
    ridge = METHODS.get("ridge").make_config("small", {"alphas": [1, 2.5]})
    assert ridge.alphas == (1.0, 2.5)
    with pytest.raises(UserError, match=r"'alphas' expects tuple\[float, \.\.\.\], got list \[1, 'a'\]"):
        METHODS.get("ridge").make_config("small", {"alphas": [1, "a"]})
    with pytest.raises(UserError, match=r"'gene_embedding_options' expects tuple\[tuple\[str, Any\], \.\.\.\]"):
        flag.make_config("small", {"gene_embedding_options": {"rank_dim": 8}})


def test_unknown_preset_and_key_name_the_method():
    with pytest.raises(UserError, match=r"method 'knn' has no preset 'larg' \(presets: tiny, small, paper\)"):
        METHODS.get("knn").make_config("larg")
    with pytest.raises(UserError, match=r"method 'knn' has no config key 'kk' \(keys: k, pca_components\)"):
        METHODS.get("knn").make_config("tiny", {"kk": 3})


@dataclass(frozen=True)
class _Inner:
    a: int = 1


@dataclass(frozen=True)
class _Cfg:
    mode: Literal["a", "b"] = "a"
    pairs: tuple[tuple[str, Any], ...] = ()
    fixed: tuple[int, str] = (1, "x")
    inner: _Inner = _Inner()
    maybe: float | None = None


class _Toy(Method):
    card = MethodCard(name="toy", description="config checks", needs=frozenset())
    Config = _Cfg
    presets = {"tiny": {"mode": "c"}, "small": {}, "paper": {}}

    def fit(self, train, val=None):
        return self

    def predict(self, test):
        return []


def test_preset_values_are_checked_and_nested_types_are_supported():
    with pytest.raises(UserError, match=r"method 'toy': config key 'mode' expects 'a' \| 'b', got str 'c' "
                                        r"\(preset 'tiny'\)"):
        _Toy.make_config("tiny")
    cfg = _Toy.make_config("small", {"pairs": [["k", [1, 2]]], "fixed": [2, "y"], "inner": {"a": 3}, "maybe": 2})
    assert cfg.pairs == (("k", [1, 2]),) and cfg.fixed == (2, "y") and cfg.inner == _Inner(3) and cfg.maybe == 2
    for bad in ({"fixed": [1, 2]}, {"fixed": [1]}, {"inner": {"a": "3"}}, {"inner": {"b": 1}}, {"pairs": [["k"]]}):
        with pytest.raises(UserError, match="expects"):
            _Toy.make_config("small", bad)


def test_card_needs_are_validated_and_the_card_is_json():
    with pytest.raises(ValueError, match=r"method card 'typo': unknown needs 'tile'"):
        MethodCard(name="typo", description="", needs=frozenset({"tile"}))
    with pytest.raises(ValueError, match="set of names"):
        MethodCard(name="typo", description="", needs="embeddings")
    assert "region" in NEEDS
    card = MethodCard(name="m", description="d", needs={"region", "coords"},
                      pretrained=[PretrainedWeights("w", "ImageNet", "https://x", "MIT")])
    d = json.loads(json.dumps(card.to_dict()))
    assert d["needs"] == ["coords", "region"] and d["pretrained"] == [
        {"name": "w", "trained_on": "ImageNet", "source": "https://x", "licence": "MIT"}]
    flag = METHODS.get("flag").card.to_dict()
    assert "patients A, D, E, F, G, H" in flag["pretrained"][0]["trained_on"]
    assert METHODS.get("ridge").card.to_dict()["pretrained"] == []  # the encoder's weights are the run's


def test_seed_streams_are_spawned_and_stable():
    m = _Toy(_Toy.make_config("small"), seed=0)
    four = m.seed_streams(4)
    assert len(set(four)) == 4 and m.seed_streams(2) == four[:2]
    expected = [int(c.generate_state(1, dtype=np.uint64)[0]) for c in np.random.SeedSequence(0).spawn(4)]
    assert four == expected
    assert _Toy(_Toy.make_config("small"), seed=1).seed_streams(4) != four
