"""The worker role: the Celery app (``celery -A worker worker -Q gpu``), its tasks, the model
cache and the batched inference engine. Importing this package stays light (no TensorFlow)."""

from worker.app import app

celery = app

__all__ = ["app", "celery"]
