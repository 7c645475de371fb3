"""Fine-tuning, distillation and evaluation. Knows nothing of Celery; the default models are built
with `python -m worker.training.build`, and retraining (worker/retrain.py) reuses the same loop."""
