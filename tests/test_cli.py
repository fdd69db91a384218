"""The ``nbdeploy`` command: argument handling, list/stop/logs, and serve's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbdeploy import cli
from nbdeploy.serve.config import ServeConfig
from nbdeploy.store import Store


def test_serve_passes_host_port_and_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    seen = {}

    def fake_run(home, host, port, log_level, config, allow_hosts):
        seen.update(home=home, host=host, port=port, config=config, allow_hosts=allow_hosts)

    monkeypatch.setattr("nbdeploy.serve.server.run", fake_run)
    monkeypatch.setenv("NBDEPLOY_MAX_QUEUE_ROWS", "128")
    code = cli.main(["serve", "--home", str(tmp_path), "--host", "127.0.0.1", "--port", "0", "--batching", "off",
                     "--max-batch-wait-ms", "2.5", "--allow-host", "box.local"])
    assert code == 0
    assert seen["home"] == str(tmp_path) and seen["port"] == 0 and seen["allow_hosts"] == ("box.local",)
    config: ServeConfig = seen["config"]
    assert (config.batching, config.max_batch_wait_ms, config.max_queue_rows) == ("off", 2.5, 128)


def test_bad_settings_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys):
    monkeypatch.setenv("NBDEPLOY_MAX_BATCH_ROWS", "lots")
    assert cli.main(["serve", "--home", str(tmp_path)]) == 2
    assert "NBDEPLOY_MAX_BATCH_ROWS must be an integer, got 'lots'" in capsys.readouterr().err


def test_list_stop_and_logs(tmp_path: Path, capsys):
    home = str(tmp_path)
    assert cli.main(["list", "--home", str(tmp_path / "typo")]) == 2  # a missing store is not made here
    assert "no nbdeploy store at" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    store = Store(home)
    assert cli.main(["list", "--home", home]) == 0
    assert "no models in this store" in capsys.readouterr().out
    assert cli.main(["stop", "nope", "--home", home]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
    store.register("iris", b"onnx", {"signature": {"frame": False, "inputs": []}})
    assert cli.main(["list", "--home", home]) == 0
    assert "iris: stopped; versions 1 (registered)" in capsys.readouterr().out
    (store.home / "server.log").write_text(
        "x INFO nbdeploy.server: loaded iris version 1 (single row 0.010 ms, batching off)\n"
        "x INFO nbdeploy.server: loaded other version 1\n"
        "x ERROR nbdeploy.server: cannot load iris version 2: does not match its recorded sha256\n")
    assert cli.main(["logs", "iris", "--home", home, "-n", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "loaded iris" in out[0] and "sha256" in out[1]
    assert cli.main(["logs", "iris", "--home", home, "-n", "1"]) == 0
    assert capsys.readouterr().out.count("\n") == 1


def test_cli_needs_a_command(capsys):
    with pytest.raises(SystemExit):
        cli.main([])
