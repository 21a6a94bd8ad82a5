"""Compiled backends (issue #20): built once per machine as AOTInductor packages in the disk
cache, loaded by later processes without dynamo or inductor; torch.compile where a module
cannot be exported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import seamline.core.optimise.backends as backends
from seamline.core.demo.unet import ConvNet
from seamline.core.diskcache import cache_dir
from seamline.core.optimise.backends import compiled, forget_compiled


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ConvNet(bands=6, classes=3, width=8, depth=2).eval()


def _tiles(n: int = 2, side: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(n * side)
    x = torch.randn(n, 6, side, side, generator=gen)
    return x.contiguous(memory_format=torch.channels_last)


def _packages() -> set:
    return set((cache_dir() / "compiled").glob("*.pt2"))


def _run(fast, x):
    with torch.inference_mode():
        return fast(x)


def test_a_package_is_built_once_then_loaded(net, monkeypatch):
    x = _tiles()
    before = _packages()
    fast = compiled(net, batch=2)
    out = _run(fast, x)
    assert list(fast.module.built.values()) == ["compiled"]
    assert len(_packages() - before) == 1  # one package for the one shape
    with torch.inference_mode():
        torch.testing.assert_close(out, net(x), atol=1e-4, rtol=1e-4)

    forget_compiled()

    def no_compile(*args, **kwargs):
        raise AssertionError("a package on disk is loaded, not compiled again")

    monkeypatch.setattr(backends, "_package_runner", no_compile)
    again = compiled(net, batch=2)
    assert again is not fast
    torch.testing.assert_close(_run(again, x), out, atol=0, rtol=0)  # the very same code
    assert list(again.module.built.values()) == ["loaded"]
    assert torch.equal(_run(again, x[:1]), out[:1])  # a short batch is padded, not recompiled
    assert len(again.module.built) == 1


def test_a_new_process_loads_the_package_without_dynamo_or_inductor(net, tmp_path):
    x = _tiles()
    _run(compiled(net, batch=2), x)  # built here (or by the test above)
    torch.save({"net": net, "x": x}, tmp_path / "case.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from seamline.core.optimise.backends import compiled
        case = torch.load({str(tmp_path / "case.pt")!r}, weights_only=False)
        fast = compiled(case["net"], batch=2)
        with torch.inference_mode():
            out = fast(case["x"])
        torch.save(out, {str(tmp_path / "out.pt")!r})
        print(list(fast.module.built.values()), "torch._dynamo" in sys.modules,
              "torch._inductor" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.split("\n")[0] == "['loaded'] False False", done.stdout + done.stderr
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), _run(compiled(net, batch=2), x),
                               atol=0, rtol=0)  # fmt: skip


def test_a_damaged_package_is_built_again(net):
    forget_compiled()
    x = _tiles(side=32)  # a shape no other test compiles
    before = _packages()
    _run(compiled(net, batch=2), x)
    (new,) = _packages() - before
    new.write_bytes(b"not a package")
    forget_compiled()
    fast = compiled(net, batch=2)
    out = _run(fast, x)
    assert list(fast.module.built.values()) == ["compiled"]
    assert new.read_bytes()[:2] == b"PK"  # a zip archive again
    with torch.inference_mode():
        torch.testing.assert_close(out, net(x), atol=1e-4, rtol=1e-4)


def test_without_the_cache_nothing_is_kept(net):
    forget_compiled()
    before = _packages()
    fast = compiled(net, batch=1, cache=False)
    x = _tiles(n=1, side=48)
    out = _run(fast, x)
    assert list(fast.module.built.values()) == ["compiled"] and _packages() == before
    with torch.inference_mode():
        torch.testing.assert_close(out, net(x), atol=1e-4, rtol=1e-4)


class DataDependent(torch.nn.Module):
    """A branch on the values: torch.export cannot capture it, torch.compile can."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out if bool(x.mean() > -10) else -out


def test_a_module_export_cannot_capture_falls_back_to_torch_compile(net):
    module = DataDependent(net).eval()
    fast = compiled(module, batch=2)
    x = _tiles()
    out = _run(fast, x)
    assert list(fast.module.built.values()) == ["jit"]
    with torch.inference_mode():
        torch.testing.assert_close(out, module(x), atol=1e-4, rtol=1e-4)
