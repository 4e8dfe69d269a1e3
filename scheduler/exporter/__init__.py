"""The cluster-state exporter: what Redis and SQL say about the whole system, for Prometheus.

Workers export what happens inside them (throughput, latency, failures); this process exports
what no single worker knows: queue backlogs, jobs and images still to do, training runs and the
share of each predicted label per model version. ``cxr exporter --port N`` serves it.
"""

from scheduler.exporter.collector import ClusterCollector, make_registry
from scheduler.exporter.server import serve

__all__ = ["ClusterCollector", "make_registry", "serve"]
