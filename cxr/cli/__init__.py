"""The ``cxr`` command line: the face of the system. Nothing below imports it."""
