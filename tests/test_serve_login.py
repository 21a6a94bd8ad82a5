"""``seamline serve``: data roots and Panel's own login (--basic-auth), on loopback."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from seamline.app.cli import build_parser, main, serve_command
from seamline.app.cli_args import MODELS_ENV, TRUST_MODEL_ENV
from seamline.core.data.limits import DEFAULT_BUDGET
from seamline.core.data.paths import DATA_ROOTS_ENV
from seamline.core.demo.unet import UNet
from seamline.core.errors import InputFileError, UntrustedModelError
from seamline.core.serve.cache import ModelCache
from tests.conftest import foreign_model

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 180  # imports and the numba warm-up on a busy 2-core machine: a generous bound


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_passes_roots_and_login_to_panel(tmp_path):
    args = build_parser().parse_args(
        ["serve", "--data-root", str(tmp_path), "--data-root", str(tmp_path), "--basic-auth",
         "users.json"]
    )  # fmt: skip
    command, env = serve_command(args)
    assert command[command.index("--basic-auth") + 1] == "users.json"
    assert env[DATA_ROOTS_ENV] == str(tmp_path.resolve())
    assert len(env["PANEL_COOKIE_SECRET"]) >= 32  # random when not given
    assert "PANEL_COOKIE_SECRET" not in " ".join(command)  # not in argv: `ps` shows argv
    plain = serve_command(build_parser().parse_args(["serve"]))
    assert "--basic-auth" not in plain[0] and plain[1][DATA_ROOTS_ENV] == ""


def test_serve_refuses_a_missing_data_root(tmp_path, capsys):
    with pytest.raises(InputFileError):
        serve_command(build_parser().parse_args(["serve", "--data-root", str(tmp_path / "x")]))
    assert main(["serve", "--data-root", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[str]:
    """`seamline serve --basic-auth FILE` on a free loopback port; stopped afterwards."""
    folder = tmp_path_factory.mktemp("login")
    users = folder / "users.json"
    users.write_text(json.dumps({"ana": "correct horse battery"}))
    users.chmod(0o600)
    port = _free_port()
    log = (folder / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seamline.app.cli", "serve", "--port", str(port), "--basic-auth",
         str(users), "--data-root", str(folder)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert proc.poll() is None, (folder / "serve.log").read_text()
            try:
                httpx.get(f"{url}/login", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_the_app_needs_a_login(served):
    with httpx.Client(base_url=served, timeout=60) as client:
        page = client.get("/dashboard")
        assert page.status_code == 302 and "login" in page.headers["location"]
        wrong = client.post("/login", data={"username": "ana", "password": "wrong"})
        assert wrong.status_code == 302 and "error=" in wrong.headers["location"]
        assert client.get("/dashboard").status_code == 302  # still out
        right = client.post("/login", data={"username": "ana", "password": "correct horse battery"})
        assert right.status_code == 302 and "error" not in right.headers["location"]
        page = client.get("/dashboard")
        assert page.status_code == 200 and "<title>Seamline</title>" in page.text


def test_another_user_or_a_forged_cookie_gets_nothing(served):
    with httpx.Client(base_url=served, timeout=60) as client:
        bad = client.post("/login", data={"username": "bob", "password": "correct horse battery"})
        assert "error=" in bad.headers["location"]
        client.cookies.set("user", "ana")  # unsigned: the cookie secret signs real ones
        assert client.get("/dashboard").status_code == 302


def test_serve_offers_the_models_it_was_given_and_refuses_a_bad_one(tmp_path, capsys):
    path = foreign_model(tmp_path)
    args = build_parser().parse_args(["serve", "--model", str(path), "--model", "demo"])
    _, env = serve_command(args)
    assert env[MODELS_ENV].split(os.pathsep) == [str(path), "demo"]
    assert env[TRUST_MODEL_ENV] == ""
    command, env = serve_command(build_parser().parse_args(["serve"]))
    assert env[MODELS_ENV] == "demo"
    # an upload of the whole input budget fits one websocket message (base64, 4/3)
    limit = int(command[command.index("--websocket-max-message-size") + 1])
    assert limit > DEFAULT_BUDGET.max_bytes * 4 / 3 > 20 * 2**20  # Bokeh's default: 20 MiB
    # a model that cannot load is one sentence before any server starts
    assert main(["serve", "--model", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and "does not exist" in err and "Traceback" not in err


def test_the_operator_can_trust_the_dashboards_model_files(tmp_path):
    torch.manual_seed(0)
    full = tmp_path / "full.pt"
    torch.save(UNet(bands=6, classes=5), full)  # a pickled full model runs code when loaded
    with pytest.raises(UntrustedModelError):
        ModelCache().get(str(full))
    assert isinstance(ModelCache(trusted=(str(full),)).get(str(full)).module, UNet)
