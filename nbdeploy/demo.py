"""The README's demo: train, deploy, call the endpoint as an outside client would, stop."""

from __future__ import annotations

import json
import tempfile
import urllib.request


def main() -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from nbdeploy.api import deploy, shutdown

    X, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    with tempfile.TemporaryDirectory(prefix="nbdeploy-demo-") as home:
        dep = deploy(model, X, name="iris", home=home)
        try:
            print(f"deployed iris v{dep.version} in {dep.timings['total_s']:.2f} s at {dep.url}")
            row = X.iloc[[0]]
            request = {"inputs": [{"name": c, "datatype": "FP32", "shape": [1, 1], "data": [float(row[c].iloc[0])]}
                                  for c in X.columns]}
            req = urllib.request.Request(f"{dep.url}/infer", data=json.dumps(request).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                answer = json.load(resp)
            label = answer["outputs"][0]["data"][0]
            print(f"POST {dep.url}/infer -> label {label} (scikit-learn says {model.predict(row)[0]})")
            print(f"probabilities via dep.predict_proba: {dep.predict_proba(row)[0].round(4).tolist()}")
        finally:
            dep.stop()
            shutdown(home)
    print("stopped the server; nothing left running")


if __name__ == "__main__":
    main()
