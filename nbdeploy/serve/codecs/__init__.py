"""Wire formats: the Open Inference Protocol V2 (``v2``) and MLflow's scoring formats (``mlflow``)."""
