"""Which URL the user's browser can reach: the proxied one on a remote Jupyter, else the local one."""

from __future__ import annotations

import json
import os

import pytest

from nbdeploy.display.card import card_bundle, card_html
from nbdeploy.serve.urls import browser_hosts, jupyter_server_info, proxy_installed, public_url

LOCAL = "http://127.0.0.1:8123/v2/models/iris"


def test_jupyter_server_proxy_is_installed_for_these_tests():
    assert proxy_installed()  # a dev dependency: without it every case below answers the local URL


@pytest.mark.parametrize(("env", "expected"), [
    ({}, LOCAL),
    ({"NBDEPLOY_PUBLIC_URL": "https://hub.example.org/user/alice/proxy/{port}/"},
     "https://hub.example.org/user/alice/proxy/8123/v2/models/iris"),
    ({"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}, "/user/alice/proxy/8123/v2/models/iris"),
    ({"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/", "JUPYTERHUB_PUBLIC_URL": "https://hub.example.org/user/alice/"},
     "https://hub.example.org/user/alice/proxy/8123/v2/models/iris"),
    ({"JUPYTERHUB_SERVICE_PREFIX": "/user/bob", "NBDEPLOY_PUBLIC_URL": "https://gw.example.org/p/{port}"},
     "https://gw.example.org/p/8123/v2/models/iris"),  # the explicit template wins
    ({"JPY_PARENT_PID": "1"}, LOCAL),  # a kernel whose parent is no Jupyter server (nbval, jupyter console)
])
def test_public_url(env, expected, tmp_path):
    assert public_url(LOCAL, {**env, "JUPYTER_RUNTIME_DIR": str(tmp_path)}) == expected


def test_kernel_of_a_jupyter_server_uses_its_url_and_base_url(tmp_path):
    pid = str(os.getpid())
    info = {"pid": int(pid), "url": "http://127.0.0.1:8888/lab-base/", "base_url": "/lab-base/", "port": 8888}
    (tmp_path / f"jpserver-{pid}.json").write_text(json.dumps(info))
    env = {"JPY_PARENT_PID": pid, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    assert jupyter_server_info(env) == info
    assert public_url("http://127.0.0.1:8123", env) == "http://127.0.0.1:8888/lab-base/proxy/8123"
    assert browser_hosts(env) == ["127.0.0.1"]


def test_urls_without_a_port_are_left_alone():
    assert public_url("http://localhost/v2", {"JUPYTERHUB_SERVICE_PREFIX": "/user/a/"}) == "http://localhost/v2"


def test_browser_hosts_are_the_public_names_known():
    env = {"NBDEPLOY_PUBLIC_URL": "https://gw.example.org/p/{port}",
           "JUPYTERHUB_PUBLIC_URL": "https://hub.example.org/user/alice/"}
    assert browser_hosts(env) == ["gw.example.org", "hub.example.org"]
    assert browser_hosts({"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}) == []


def test_card_shows_the_browser_url_and_both_calls():
    info = {"name": "iris", "version": 2, "status": "ready", "url": LOCAL,
            "browser_url": "/user/alice/proxy/8123/v2/models/iris",
            "curl": f"curl -s -X POST {LOCAL}/infer",
            "browser_curl": "curl -s -X POST https://YOUR-JUPYTER-HOST/user/alice/proxy/8123/v2/models/iris/infer"}
    text = card_html(info)
    assert '<a href="/user/alice/proxy/8123/v2/models/iris" target="_blank">' in text
    assert "Endpoint (kernel)" in text and "Endpoint (browser)" in text
    assert "From elsewhere, through jupyter-server-proxy:" in text and "YOUR-JUPYTER-HOST/user/alice" in text
    assert "(browser: /user/alice/proxy/8123/v2/models/iris)" in card_bundle(info)["text/plain"]
    plain = card_html({**info, "browser_url": None, "browser_curl": None})
    assert "Endpoint (browser)" not in plain and "jupyter-server-proxy" not in plain
