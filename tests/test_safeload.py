"""Weights files (issue 23, item 2): one loader (flag_bench.safeload) for every checkpoint a user
gives; a pickled file (.pt/.pth/.bin/.ckpt) is refused on a torch whose ``weights_only`` loader
is not a safe boundary (< 2.10), before it is opened; ``.safetensors`` is read without torch.load.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch

from flag_bench.errors import UserError

OLD_TORCH = "2.5.1+cpu"


def _saved(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    torch.save({"w": torch.arange(4.0)}, path)
    return path


def _refusal(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert "torch>=2.10" in msg and ".safetensors" in msg and "CVE-2025-32434" in msg, msg
    return msg


@pytest.fixture
def old_torch(monkeypatch):
    """torch reports an old version, and torch.load must not be reached."""
    calls = []
    monkeypatch.setattr(torch, "__version__", OLD_TORCH)
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or pytest.fail("torch.load was called"))
    return calls


def test_pyproject_floor_is_the_loader_floor():
    from flag_bench.safeload import MIN_TORCH

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    torch_dep = [d for d in deps if re.match(r"torch\s*[><=]", d)]
    assert torch_dep == [f"torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}"] and MIN_TORCH >= (2, 10)
    assert any(d.startswith("safetensors") for d in deps)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickled_weights_refused_on_an_old_torch(tmp_path, suffix, old_torch):
    from flag_bench.safeload import load_weights

    path = _saved(tmp_path, f"model{suffix}")
    with pytest.raises(UserError) as exc:
        load_weights(path)
    _refusal(exc, path)
    assert not old_torch


def test_safetensors_read_without_torch_load_even_on_an_old_torch(tmp_path, old_torch):
    from safetensors.torch import save_file

    from flag_bench.safeload import load_weights

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(4.0)}, str(path))
    got = load_weights(path)
    assert set(got) == {"w"} and torch.equal(got["w"], torch.arange(4.0)) and not old_torch


def test_pickled_weights_read_on_this_torch(tmp_path):
    from flag_bench.safeload import MIN_TORCH, load_weights, torch_version

    assert torch_version() >= MIN_TORCH
    got = load_weights(_saved(tmp_path, "model.pt"))
    assert torch.equal(got["w"], torch.arange(4.0))


def _triplex(path):
    from flag_bench.methods.triplex.backbones import load_ciga_resnet18

    load_ciga_resnet18(str(path))


def _bleep(path):
    from flag_bench.methods.bleep.nets import load_resnet50

    load_resnet50(str(path))


def _fm(path):
    from flag_bench.datasets.fm_encoders import read_state_dict

    read_state_dict(path)


def _efficientnet(path, monkeypatch):
    from flag_bench.datasets.encoders import EfficientNetLite0

    monkeypatch.setattr(EfficientNetLite0, "weights_path", staticmethod(lambda: path))
    EfficientNetLite0().build()


@pytest.mark.parametrize("site,name", [(_triplex, "tenpercent_resnet18.ckpt"), (_bleep, "resnet50.pth"),
                                       (_fm, "pytorch_model.bin"), (_efficientnet, "efficientnet_lite0.pth")])
def test_every_call_site_goes_through_the_loader(tmp_path, monkeypatch, site, name, old_torch):
    path = _saved(tmp_path, name)
    with pytest.raises(UserError) as exc:
        site(path, monkeypatch) if site is _efficientnet else site(path)
    _refusal(exc, path)
