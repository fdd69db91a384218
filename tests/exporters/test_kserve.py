"""The KServe export: a manifest that parses as an InferenceService on the V2 protocol, over a Triton
repository that parses with Triton's own protobuf, with the commands a user runs on a cluster."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import nbdeploy
from nbdeploy.exporters.kserve import label_value, service_name

DNS_1123 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_manifest_is_an_inference_service_on_v2_over_the_triton_repository(source, out):
    path = nbdeploy.export("iris", "kserve", out, home=source["home"])
    doc = yaml.safe_load((path / "inference-service.yaml").read_text())
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert DNS_1123.match(doc["metadata"]["name"]) and doc["metadata"]["labels"] == {
        "nbdeploy/model": "iris", "nbdeploy/version": "2"}
    model = doc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "onnx"} and model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver"
    assert model["storageUri"] == "s3://BUCKET/PATH/model-repository"  # the placeholder the README explains
    config = text_format.Parse((path / "model-repository" / "iris" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert config.name == "iris" and (path / "model-repository" / "iris" / "2" / "model.onnx").is_file()
    request = json.loads((path / "request.json").read_text())
    assert [i["name"] for i in request["inputs"]] == [i.name for i in config.input]


def test_readme_has_the_cluster_commands(source, out):
    text = (nbdeploy.export("pets", "kserve", out, home=source["home"]) / "README.md").read_text()
    for command in ("aws s3 cp --recursive model-repository/ s3://BUCKET/PATH/model-repository/",
                    "kubectl apply -f inference-service.yaml",
                    "kubectl wait --for=condition=Ready inferenceservice/pets",
                    '"http://$INGRESS_HOST:$INGRESS_PORT/v2/models/pets/infer" -d @request.json',
                    "pvc://PVC_NAME/model-repository"):
        assert command in text, command


@pytest.mark.parametrize(("name", "service", "label"), [
    ("iris", "iris", "iris"),
    ("Churn_Model.v2", "churn-model-v2", "Churn_Model.v2"),
    ("9lives", "model-9lives", "9lives"),
    ("x" * 64, "x" * 45, "x" * 63),
    ("trailing-", "trailing", "trailing"),
])
def test_kubernetes_names(name, service, label):
    assert service_name(name) == service and DNS_1123.match(service)
    assert label_value(name) == label


def test_the_serving_container_runs_locked_down(source, out):
    path = nbdeploy.export("iris", "kserve", out, home=source["home"])
    predictor = yaml.safe_load((path / "inference-service.yaml").read_text())["spec"]["predictor"]
    context = predictor["model"]["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 1000  # tritonserver's own user, not root
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]} and context["seccompProfile"] == {"type": "RuntimeDefault"}
    # the one writable place a read-only root leaves: an in-memory /tmp
    (mount,) = predictor["model"]["volumeMounts"]
    (volume,) = predictor["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/tmp"} and volume["emptyDir"]["medium"] == "Memory"
    assert "uid 1000" in (path / "README.md").read_text()
