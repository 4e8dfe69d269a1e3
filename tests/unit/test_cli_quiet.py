"""TensorFlow's start-up lines (absl, oneDNN) are kept off a command's stderr, while Python's
own output on stderr still gets through."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import sys
from cxr.cli.quiet import silence_tensorflow_startup
silence_tensorflow_startup()
import tensorflow as tf
tf.constant([1.0]) + 1.0
print("after import", file=sys.stderr)
"""


def test_tensorflow_starts_without_its_native_lines():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, check=True)  # fmt: skip
    assert "after import" in done.stderr
    assert "absl::InitializeLog" not in done.stderr and "oneDNN custom operations" not in done.stderr
