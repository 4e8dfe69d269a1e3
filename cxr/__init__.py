"""cxr: batch screening of chest X-ray archives. Research use only, not for clinical decisions."""

import os

__version__ = "0.1.0"

INTENDED_USE = "Research use only. Not a medical device; not for clinical decisions."

# TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512 VNNI/BF16 or
# AMX. On AVX2-only servers (the AMD EPYC development machine, many cloud CPU workers) they run
# MobileNetV2 about 1.7x faster than TensorFlow's default kernels (bench/throughput.py, see
# docs/WORKER.md). The variable is read once, when TensorFlow is first imported, so it is set
# here, before any cxr module can import it; a value already in the environment wins
# (TF_ENABLE_ONEDNN_OPTS=0 turns them off).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
