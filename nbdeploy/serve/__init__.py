"""The inference server: HTTP endpoints over a runtime of ONNX Runtime sessions.

Nothing here imports IPython, widgets or scikit-learn, and nothing unpickles.
"""
