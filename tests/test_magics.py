"""``%deploy`` in a real IPython shell."""

from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError
from sklearn.linear_model import LogisticRegression

import nbdeploy
from nbdeploy.store import Store


@pytest.fixture(scope="module")
def shell(ipython):
    ip = ipython
    ip.run_line_magic("load_ext", "nbdeploy")
    return ip


@pytest.fixture
def ns(shell, iris, tmp_path):
    X, y, model = iris
    shell.user_ns.update({"X": X, "y": y, "model": model})
    shell.run_line_magic("config", f"DeployMagics.home = {str(tmp_path)!r}")
    yield shell.user_ns
    nbdeploy.shutdown(str(tmp_path))


@pytest.mark.server
def test_deploy_from_a_line_and_list(shell, ns, tmp_path, capsys):
    shell.run_line_magic("deploy", "model --name iris --sample X")
    dep = nbdeploy.get("iris", home=str(tmp_path))
    assert dep.version == 1 and dep.status == "ready"
    shell.run_line_magic("deploy", "list")
    shell.run_line_magic("deploy", "stop iris")
    assert nbdeploy.deployments(home=str(tmp_path)) == []


def test_a_comment_after_the_line_is_not_an_argument(shell, ns, capsys):
    # as the README writes them: `%deploy monitor iris   # live: traffic, latency, ...`
    shell.run_line_magic("deploy", "shutdown   # stop the server; models stay stored")
    assert capsys.readouterr().out.strip() == "no server was running"


@pytest.mark.server
def test_export_every_format_from_a_line(shell, ns, tmp_path, capsys):
    shell.run_line_magic("deploy", "model --name iris --sample X")
    out = tmp_path / "exports"
    for fmt, produced in (("bundle", "models/iris/1/model.onnx"), ("docker", "Dockerfile"),
                          ("triton", "iris/config.pbtxt"), ("kserve", "inference-service.yaml")):
        shell.run_line_magic("deploy", f"export iris --to {fmt} {out / fmt}")
        assert (out / fmt / produced).is_file() and (out / fmt / "README.md").is_file()
        assert f"exported 'iris' ({fmt}) to {out / fmt}" in capsys.readouterr().out
    shell.run_line_magic("deploy", f"export iris --version production --to triton {out / 'alias'}")
    assert (out / "alias" / "iris" / "1" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("modle --name iris --sample X", "'modle' is neither a variable nor a subcommand (did you mean 'model'?)"),
        ("nosuch", "'nosuch' is neither a variable nor a subcommand"),
        ("trian model X y --name iris", "(did you mean 'train'?)"),
        ("model --name iris --sample Z", "no variable named 'Z'"),
        ("model --sample X", "the following arguments are required: --name"),
        ("unfitted --name iris --sample X", "not fitted yet"),
        ("notamodel --name iris --sample X", "expected a fitted scikit-learn estimator"),
        ("model --name 'bad name' --sample X", "model name 'bad name' is not valid"),
        ("stop nosuch", "no model named 'nosuch'"),
        ("export iris --to tirton out", "unknown export format 'tirton' (did you mean 'triton'?)"),
        ("export iris out", "the following arguments are required: --to"),
        ("", "expected MODEL --name NAME --sample X"),
        ("serve iris --on ray --autoscale 1", "autoscale takes MIN,MAX replicas"),
        ("serve iris --on ray --autoscale 4,2", "autoscale needs 0 <= MIN <= MAX"),
    ],
)
def test_user_errors_are_one_line_usage_errors(shell, ns, tmp_path, line, needle):
    ns["unfitted"] = LogisticRegression()
    ns["notamodel"] = {"a": 1}
    Store(tmp_path).register("iris", b"onnx", {})
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("deploy", line)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and message.startswith("%deploy")


@pytest.mark.server
def test_train_test_promote_rollback_and_list_from_lines(shell, ns, tmp_path, capsys):
    from sklearn.tree import DecisionTreeClassifier

    ns["tree"] = DecisionTreeClassifier(max_depth=1)
    ns["logreg"] = LogisticRegression(max_iter=500)
    shell.run_line_magic("deploy", "train tree X y --name iris --stratify --cv 3 --seed 1")
    assert hasattr(ns["tree"], "tree_")  # the fitted model is back in the namespace
    shell.run_line_magic("deploy", "model --name iris --sample X")  # no run for `model`: not gated
    capsys.readouterr()
    shell.run_line_magic("deploy", "tree --name iris --sample X")  # gated on the stump's run: refused as v2
    assert "'iris' version 2 was not promoted" in capsys.readouterr().out
    shell.run_line_magic("deploy", "train logreg X y --name iris --stratify --seed 1")
    shell.run_line_magic("deploy", "logreg --name iris --sample X")
    home = str(tmp_path)
    assert nbdeploy.get("iris", home=home).version == 3
    shell.run_line_magic("deploy", "test iris X y")
    shell.run_line_magic("deploy", "test logreg X y")
    shell.run_line_magic("deploy", "rollback iris")
    assert nbdeploy.get("iris", home=home).version == 1
    capsys.readouterr()
    shell.run_line_magic("deploy", "promote iris 3")
    assert "production -> version 3" in capsys.readouterr().out
    shell.run_line_magic("deploy", "list")
    shell.run_line_magic("deploy", "promote iris 2")  # refused: shows the decision, raises nothing
    assert "was not promoted" in capsys.readouterr().out
    assert nbdeploy.get("iris", home=home).version == 3
    shell.run_line_magic("deploy", "retrain iris --data X y")  # registered as v4, not promoted
    assert [v.version for v in Store(home).versions("iris")] == [1, 2, 3, 4]
    assert nbdeploy.get("iris", home=home).version == 3


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("train model X y", "the following arguments are required: --name"),
        ("train model X y --name iris --test-size 2", "test_size"),
        ("test nosuch X y", "'nosuch' is neither a variable nor a stored model"),
        ("test modle X y", "'modle' is neither a variable nor a stored model (did you mean 'model'?)"),
        ("promote iris notanumber", "invalid int value"),
        ("rollback nosuch", "no model named 'nosuch'"),
        ("retrain nosuch", "no model named 'nosuch'"),
        ("shadow nosuch 2", "no model named 'nosuch'"),
        ("serve nosuch --on ray", "no model named 'nosuch'"),
        ("serve iris --on mars", "invalid choice: 'mars'"),
        ("shadow iris", "give a VERSION to shadow with, or --stop"),
        ("shadow iris 2 --stop", "--stop ends the running shadow: give no VERSION"),
        ("canary iris 2 --stop", "--stop ends the running canary: give no VERSION"),
        ("help", "'help' is neither a variable nor a subcommand (%deploy --help lists the subcommands)"),
        ("retrain iris --data X", "expected 2 arguments"),
    ],
)
def test_registry_subcommand_errors_are_one_line(shell, ns, line, needle):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("deploy", line)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.server
def test_monitor_from_a_line(shell, ns, tmp_path, capsys):
    shell.run_line_magic("deploy", "model --name iris --sample X")
    shell.run_line_magic("deploy", "monitor iris --interval 60")
    shell.run_line_magic("deploy", "monitor iris --stop")
    assert "stopped the monitor of 'iris'" in capsys.readouterr().out
    with pytest.raises(UsageError, match="interval must be a positive"):
        shell.run_line_magic("deploy", "monitor iris --interval 0")


def test_alerts_from_a_line(shell, ns, tmp_path, capsys):
    from nbdeploy.store.alerts import record_alert

    store = Store(tmp_path)
    store.register("iris", b"not read here", {"task": "classification"})
    record_alert(store, "iris", "WARN", ["p99 latency 140 ms"], source="monitor")
    shell.run_line_magic("deploy", "alerts iris --webhook https://hooks.example.com/services/secret")
    assert "'iris': alerts are sent to https://hooks.example.com/… (JSON POST)" in capsys.readouterr().out
    result = shell.run_line_magic("deploy", "alerts iris")  # displayed, as a table
    assert result is None and "p99 latency 140 ms" in capsys.readouterr().out
    shell.run_line_magic("deploy", "alerts iris --no-webhook")
    assert "'iris': alerts are no longer sent" in capsys.readouterr().out
    for line, needle in (("alerts iris --webhook ftp://example.org/x", "(got ftp:)"),
                         ("alerts iris --webhook https://a.example --no-webhook", "not allowed with argument"),
                         ("alerts irsi", "did you mean 'iris'")):
        with pytest.raises(UsageError, match=re.escape(needle)) as info:
            shell.run_line_magic("deploy", line)
        assert "\n" not in str(info.value)


def test_help_is_printed_not_raised(shell, ns, capsys):
    from nbdeploy.magics import SUBCOMMANDS

    shell.run_line_magic("deploy", "--help")
    overview = capsys.readouterr().out
    assert all(f"%deploy {command} " in overview or f"%deploy {command}\n" in overview for command in SUBCOMMANDS)
    shell.run_line_magic("deploy", "serve --help")
    assert "--autoscale  autoscale between MIN and MAX replicas" in capsys.readouterr().out
    shell.run_line_magic("deploy", "model --help")
    assert "--max-diff" in capsys.readouterr().out


def test_the_docstring_lists_every_subcommand(shell):
    from nbdeploy.magics import SUBCOMMANDS

    doc = shell.find_line_magic("deploy").__doc__
    assert {"list", "delete", "prune"} <= set(SUBCOMMANDS) and all(f"%deploy {c}" in doc for c in SUBCOMMANDS)
