"""Remote Jupyter: a real Jupyter server with jupyter-server-proxy on loopback, a real kernel it
started, and the endpoint reached the way the user's browser reaches it, through the proxy."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import nbdeploy
from nbdeploy import client

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, token: str | None, body: dict | None = None, host: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    if host:
        headers["Host"] = host
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # a login redirect is an answer too


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, iris) -> Iterator[dict]:
    """iris served from a store; the server knows the hub's public name through NBDEPLOY_PUBLIC_URL."""
    home = str(tmp_path_factory.mktemp("remote-home"))
    X, _, model = iris
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NBDEPLOY_PUBLIC_URL", "http://hub.example.org/user/alice/proxy/{port}")
        dep = nbdeploy.deploy(model, X, name="iris", home=home)
    yield {"home": home, "dep": dep, "port": int(dep.server_url.rsplit(":", 1)[1]), "X": X}
    nbdeploy.shutdown(home)


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``jupyter server`` on 127.0.0.1 with a token, as a remote Jupyter would run; shut down after."""
    tmp = tmp_path_factory.mktemp("jupyter")
    token, port = secrets.token_hex(16), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "NBDEPLOY_PUBLIC"))}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
               IPYTHONDIR=str(tmp / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    (tmp / "root").mkdir()
    command = [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={tmp / 'root'}", "--ServerApp.allow_remote_access=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (tmp / "jupyter.log").open("wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while not (_up(port) and _call(f"{base}api/status", token)[0] == 200):
            assert proc.poll() is None, (tmp / "jupyter.log").read_text()
            assert time.monotonic() < deadline, "jupyter server did not start in 60 s"
            time.sleep(0.2)
        yield {"url": base, "token": token, "runtime": tmp / "runtime"}
    finally:
        if proc.poll() is None:  # kernels first: they outlive a server that is killed
            for kernel in json.loads(_call(f"{base}api/kernels", token)[1]):
                delete = urllib.request.Request(f"{base}api/kernels/{kernel['id']}", method="DELETE",
                                                headers={"Authorization": f"token {token}"})
                urllib.request.urlopen(delete, timeout=30).close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _up(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_endpoint_answers_through_the_proxy(jupyter, deployed):
    proxied = f"{jupyter['url']}proxy/{deployed['port']}"
    status, body = _call(f"{proxied}/v2/health/live", jupyter["token"])
    assert status == 200 and json.loads(body) == {"live": True}
    status, _ = _call(f"{proxied}/v2/models/iris?token={jupyter['token']}", None)
    assert status == 200
    assert _call(f"{proxied}/v2/models/iris", None)[0] in (302, 403)  # behind Jupyter's login
    X = deployed["X"].iloc[:20]
    payload = {"inputs": client.v2_inputs(deployed["dep"].signature, X)}
    status, body = _call(f"{proxied}/v2/models/iris/infer", jupyter["token"], payload)
    assert status == 200
    outputs = client.outputs_by_name(json.loads(body))
    np.testing.assert_array_equal(outputs["label"], deployed["dep"].predict(X))


KERNEL_CODE = """
import json, nbdeploy
info = nbdeploy.get("iris", home={home!r}).info()
print(json.dumps({{k: info[k] for k in ("url", "browser_url", "browser_curl")}}))
"""


def test_kernel_shows_the_proxied_url_and_it_works(jupyter, deployed):
    """In a kernel the Jupyter server started, the card's browser URL and curl go through the proxy."""
    from jupyter_client import BlockingKernelClient

    status, body = _call(f"{jupyter['url']}api/kernels", jupyter["token"], {"name": "python3"})
    assert status == 201, body
    connection = Path(jupyter["runtime"]) / f"kernel-{json.loads(body)['id']}.json"
    kc = BlockingKernelClient(connection_file=str(connection))
    kc.load_connection_file()
    kc.start_channels()
    try:
        deadline = time.monotonic() + 60
        while True:  # the heartbeat may not beat yet while the kernel imports: ask again
            try:
                kc.wait_for_ready(timeout=10)
                break
            except RuntimeError:
                assert time.monotonic() < deadline, "the kernel did not answer in 60 s"
        printed: list[str] = []
        reply = kc.execute_interactive(KERNEL_CODE.format(home=deployed["home"]), timeout=60,
                                       output_hook=lambda msg: printed.append(msg["content"].get("text", "")))
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
    info = json.loads("".join(printed))
    assert info["url"] == f"http://127.0.0.1:{deployed['port']}/v2/models/iris"
    assert info["browser_url"] == f"{jupyter['url']}proxy/{deployed['port']}/v2/models/iris"
    status, body = _call(info["browser_url"], jupyter["token"])
    assert status == 200 and json.loads(body)["name"] == "iris"
    curl = info["browser_curl"].replace("YOUR-JUPYTER-TOKEN", jupyter["token"])
    answer = json.loads(subprocess.run(shlex.split(curl), capture_output=True, check=True, timeout=30).stdout)
    assert answer["model_name"] == "iris" and answer["outputs"][0]["name"] == "label"


def test_a_hub_public_host_reaches_the_endpoint(jupyter, deployed):
    """On a hub the browser's Host is the hub's name, and jupyter-server-proxy passes it on."""
    proxied = f"{jupyter['url']}proxy/{deployed['port']}"
    status, body = _call(f"{proxied}/v2/models/iris", jupyter["token"], host="hub.example.org")
    assert status == 200, body
