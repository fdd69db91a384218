"""The ``kserve`` export: an ``InferenceService`` for the ONNX model on KServe's Triton runtime (V2).

Layout::

    inference-service.yaml      the manifest: modelFormat onnx, protocolVersion v2, storageUri to fill in
    model-repository/NAME/...   the Triton repository (see :mod:`nbdeploy.exporters.triton`)
    request.json                one example V2 request, inputs named as Triton names them
    README.md                   the commands to copy the repository, apply the manifest and call it

The storage layout is the Triton repository: KServe downloads ``storageUri`` to ``/mnt/models``
and its ``kserve-tritonserver`` runtime serves that directory, so the V2 path is
``/v2/models/NAME/infer`` with the nbdeploy model name.

The serving container runs locked down: not as root (the Triton image's own ``triton-server``
user, uid 1000; the image itself starts as root), no privilege escalation, no capabilities, the
default seccomp profile, and a read-only root filesystem with an in-memory ``/tmp``: Triton reads
the model from the volume KServe mounts and writes nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

from nbdeploy.exporters import describe, triton
from nbdeploy.store import VersionRecord

REPOSITORY = "model-repository"
RUNTIME = "kserve-tritonserver"
TRITON_UID = 1000  # the triton-server user of NVIDIA's tritonserver images
STORAGE_PLACEHOLDER = "s3://BUCKET/PATH/" + REPOSITORY


def service_name(name: str) -> str:
    """A Kubernetes name (DNS-1123 label, kept short for KServe's generated hostnames)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:45].strip("-")
    return slug if slug and slug[0].isalpha() else f"model-{slug}".strip("-")


def label_value(text: str) -> str:
    """A Kubernetes label value: at most 63 characters, alphanumeric at both ends."""
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63])


def manifest(record: VersionRecord) -> str:
    return f"""# KServe InferenceService for nbdeploy model {record.name!r} version {record.version} (see README.md).
# Fill in storageUri: where you copied {REPOSITORY}/ (s3://, gs://, pvc://NAME/PATH, https://...).
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {service_name(record.name)}
  labels:
    nbdeploy/model: "{label_value(record.name)}"
    nbdeploy/version: "{record.version}"
spec:
  predictor:
    model:
      modelFormat:
        name: onnx
      protocolVersion: v2
      runtime: {RUNTIME}
      storageUri: "{STORAGE_PLACEHOLDER}"
      resources:
        requests:
          cpu: "1"
          memory: 1Gi
        limits:
          cpu: "2"
          memory: 2Gi
      securityContext:
        runAsNonRoot: true
        runAsUser: {TRITON_UID}          # the image's triton-server user (the image starts as root)
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: ["ALL"]
        seccompProfile:
          type: RuntimeDefault
      volumeMounts:
        - name: tmp
          mountPath: /tmp         # the root filesystem is read-only: scratch space only here
    volumes:
      - name: tmp
        emptyDir:
          medium: Memory
          sizeLimit: 64Mi
"""


def write_kserve(record: VersionRecord, directory: Path) -> None:
    triton.write_model(record, directory / REPOSITORY)
    (directory / "inference-service.yaml").write_text(manifest(record))
    (directory / "request.json").write_text(describe.request_json(record, onnx_names=True))
    (directory / "README.md").write_text(readme(record))


def readme(record: VersionRecord) -> str:
    name, isvc = record.name, service_name(record.name)
    return f"""# `{name}` version {record.version} on KServe

{describe.summary(record)}

`inference-service.yaml` serves `{REPOSITORY}/` (a Triton model repository) with KServe's
`{RUNTIME}` runtime on the Open Inference Protocol (V2). You need a cluster with KServe installed
and `kubectl` pointing at it.

## 1. Copy the model repository to storage the cluster can read

```bash
aws s3 cp --recursive {REPOSITORY}/ s3://BUCKET/PATH/{REPOSITORY}/   # S3 (or MinIO with --endpoint-url)
gsutil cp -r {REPOSITORY} gs://BUCKET/PATH/                             # Google Cloud Storage
```

or onto a PersistentVolumeClaim, through any pod that mounts it:

```bash
kubectl cp {REPOSITORY} POD:MOUNT_PATH/{REPOSITORY}   # a pod that mounts the PVC at MOUNT_PATH
```

Then set `storageUri` in `inference-service.yaml` to that place: `s3://BUCKET/PATH/{REPOSITORY}`,
`gs://BUCKET/PATH/{REPOSITORY}` or `pvc://PVC_NAME/{REPOSITORY}`. A private bucket needs
credentials: add `serviceAccountName: SA` under `predictor:` for a service account that carries them
(see KServe's storage documentation).

## 2. Create the InferenceService

```bash
kubectl apply -f inference-service.yaml
kubectl wait --for=condition=Ready inferenceservice/{isvc} --timeout=600s
kubectl get inferenceservice {isvc}
```

The serving container runs as the Triton image's unprivileged user (uid {TRITON_UID}), with no
privilege escalation, no capabilities and a read-only root filesystem (`/tmp` is an in-memory
volume): see `securityContext` in the manifest. A runtime image of your own that runs as another
user needs its uid in `runAsUser`.

## 3. Call it through the ingress

```bash
gateway() {{ kubectl -n istio-system get service istio-ingressgateway -o jsonpath="$1"; }}
INGRESS_HOST=$(gateway '{{.status.loadBalancer.ingress[0].ip}}')
INGRESS_PORT=$(gateway '{{.spec.ports[?(@.name=="http2")].port}}')
SERVICE_HOSTNAME=$(kubectl get inferenceservice {isvc} -o jsonpath='{{.status.url}}' | cut -d / -f 3)
curl -s -H "Host: $SERVICE_HOSTNAME" "http://$INGRESS_HOST:$INGRESS_PORT/v2/models/{name}/ready"
curl -s -H "Host: $SERVICE_HOSTNAME" -H 'Content-Type: application/json' \\
  "http://$INGRESS_HOST:$INGRESS_PORT/v2/models/{name}/infer" -d @request.json
```

Without a load balancer, forward the gateway first
(`kubectl -n istio-system port-forward service/istio-ingressgateway 8080:80`) and use
`INGRESS_HOST=127.0.0.1 INGRESS_PORT=8080`.

## Inputs: Triton names them as the ONNX graph does

{describe.inputs_table(record, triton=True)}

The model is addressed as `{name}` (its Triton directory), the service as `{isvc}`. Shapes are full
shapes, batch first: `[n, 1]` per column.

## Outputs

{describe.outputs_text(record)}
"""
