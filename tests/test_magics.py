"""``%deploy`` in a real IPython shell."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython
from sklearn.linear_model import LogisticRegression

import nbdeploy


@pytest.fixture(scope="module")
def shell():
    ip = start_ipython()
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


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("modle --name iris --sample X", "no variable named 'modle' for the model (did you mean 'model'?)"),
        ("model --name iris --sample Z", "no variable named 'Z'"),
        ("model --sample X", "the following arguments are required: --name"),
        ("unfitted --name iris --sample X", "not fitted yet"),
        ("notamodel --name iris --sample X", "expected a fitted scikit-learn estimator"),
        ("model --name 'bad name' --sample X", "model name 'bad name' is not valid"),
        ("stop nosuch", "no model named 'nosuch'"),
        ("", "expected MODEL --name NAME --sample X"),
    ],
)
def test_user_errors_are_one_line_usage_errors(shell, ns, line, needle):
    ns["unfitted"] = LogisticRegression()
    ns["notamodel"] = {"a": 1}
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("deploy", line)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and message.startswith("%deploy")
