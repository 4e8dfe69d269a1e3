"""The shared core: settings, errors, object storage, SQL schema, image decoding/preprocessing.

Nothing in here imports a role package (worker, scheduler, modelstore, training_jobs) or the CLI,
and nothing here imports TensorFlow at module import time.
"""
