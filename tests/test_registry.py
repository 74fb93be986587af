import warnings

import pytest

from flag_bench import registry as reg_mod
from flag_bench.errors import UserError
from flag_bench.registry import Registry


class _FakeEP:
    def __init__(self, name, value, group, exc=None, obj=None):
        self.name, self.value, self.group, self._exc, self._obj = name, value, group, exc, obj

    def load(self):
        if self._exc:
            raise self._exc
        return self._obj


class _FakeEPs(list):
    def select(self, group):
        return [e for e in self if e.group == group]


@pytest.fixture
def fake_plugins(monkeypatch):
    eps = _FakeEPs([
        _FakeEP("mine", "pkg:Mine", "flag_bench.things", obj="MINE"),
        _FakeEP("broken", "pkg:Broken", "flag_bench.things", exc=ImportError("no module named pkg")),
        _FakeEP("json", "pkg:Json", "flag_bench.things", obj="SHADOW"),
    ])
    monkeypatch.setattr(reg_mod, "_entry_points", lambda: eps)


def test_builtins_are_lazy_and_resolve():
    r = Registry("things", {"json": "json:dumps"})
    assert r.names() == ["json"]
    import json

    assert r.get("json") is json.dumps


def test_unknown_name_suggests_close_match():
    r = Registry("methods", {"ridge": "json:dumps", "knn": "json:loads"})
    with pytest.raises(UserError, match="did you mean 'ridge'"):
        r.check("ridgee")


def test_plugins_builtins_win_and_broken_plugin_warns(fake_plugins):
    r = Registry("things", {"json": "json:dumps"})
    with pytest.warns(UserWarning, match="clashes with a built-in"):
        names = r.names()
    assert set(names) == {"json", "mine", "broken"}
    assert r.get("mine") == "MINE"
    assert r.origin("mine").startswith("plugin")
    import json

    assert r.get("json") is json.dumps  # the built-in, not the shadowing plugin
    with pytest.warns(UserWarning, match="cannot be imported") as caught:
        loaded = r.load_all()
        r.load_all()
    assert len(caught) == 1, "one warning per process, not one per call"
    assert "broken" not in loaded and "mine" in loaded


def test_broken_plugin_is_listed_with_its_reason_and_one_error_when_used(fake_plugins):
    r = Registry("things", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # naming it is an error, never a warning first
        assert "broken" in r.names()
        assert r.broken("mine") is None
        assert r.broken("broken") == "ImportError: no module named pkg"
        for _ in range(2):  # the same error every time, still listed afterwards
            with pytest.raises(UserError, match=r"thing plugin 'broken' \(pkg:Broken\) cannot be imported: "
                                                r"ImportError: no module named pkg; fix or uninstall"):
                r.get("broken")
        assert "broken" in r.names()


def test_describe_reads_the_light_object_without_importing_the_entry():
    r = Registry("things", {"heavy": "flag_bench_no_such_module:Heavy"})
    r.set_light({"heavy": "json:__name__"})
    assert r.describe("heavy", "card") == "json"  # the implementation module is never imported


def test_register_refuses_duplicates():
    r = Registry("things", {"a": "json:dumps"})
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", object())
