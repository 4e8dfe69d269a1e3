"""The web front door (``cxr web``): upload one film and see the call, follow jobs, read models,
and a JSON API (``/api/v1``) for a hospital system. A face like ``cxr/cli``: it uses the model
runtime, the scheduler and the model store as they are, and adds no second path to any of them.

Research use only. Not for clinical decisions.
"""
