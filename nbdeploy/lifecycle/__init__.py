"""A model's life in the store: training, evaluation, the promotion gate, registration, retraining, artifacts."""
