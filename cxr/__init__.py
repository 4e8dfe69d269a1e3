"""cxr: batch screening of chest X-ray archives. Research use only, not for clinical decisions."""

__version__ = "0.1.0"

INTENDED_USE = "Research use only. Not a medical device; not for clinical decisions."
