"""Does a job's archive look like the model's training data? The per-job verdict.

Each scored image carries a flag: its shift score lies beyond the model's threshold percentile of
the validation split's scores. Films like the validation split are flagged at a known rate (the
manifest's ``expected_flag_rate``, 1 % for the 99th percentile). A job whose flagged share is
significantly above that rate (one-sided exact binomial test, ``alpha`` 0.001 by default: a
verdict must not fire on a familiar archive by chance) holds films unlike the training data, and
the model's published figures do not apply to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_ALPHA = 0.001


@dataclass(frozen=True)
class ShiftVerdict:
    scored: int  # images with a shift score
    flagged: int
    share: float | None
    expected_share: float
    p_value: float | None
    shifted: bool  # the archive does not look like the training data

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def message(self) -> str:
        if not self.shifted or self.share is None:
            return ""
        return (
            f"{self.flagged} of {self.scored} films ({self.share:.0%}) are unlike the model's training "
            f"data, against {self.expected_share:.1%} expected (binomial p = {self.p_value:.1g}): the "
            "model's published figures do not apply to this archive. Validate it on local labels "
            "first (docs/NEW_SITE.md)."
        )


def shift_verdict(
    flagged: int, scored: int, expected_share: float, alpha: float = DEFAULT_ALPHA
) -> ShiftVerdict:
    """The verdict for ``flagged`` of ``scored`` images, against ``expected_share``."""
    if scored == 0:
        return ShiftVerdict(0, 0, None, expected_share, None, False)
    from scipy.stats import binomtest

    p_value = float(binomtest(flagged, scored, expected_share, alternative="greater").pvalue)
    return ShiftVerdict(scored, flagged, flagged / scored, expected_share, p_value, p_value < alpha)
