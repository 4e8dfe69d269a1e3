"""Does a job's archive look like the model's training data? The per-job verdict.

Two one-sided tests, each at ``alpha / 2`` (Bonferroni), against what films like the validation
split would give:

- **the flagged share**: each scored image is flagged when its shift score lies beyond the
  model's threshold percentile; films like the validation split are flagged at a known rate (the
  manifest's ``expected_flag_rate``, 1 % for the 99th percentile). An exact binomial test asks
  whether the job's share is above it: this catches a job holding some films that are nothing
  like the training data (other modalities, photographs, another body part).
- **the whole distribution**: a Mann-Whitney test of the job's raw scores against the validation
  split's (stored in the manifest) asks whether the job's films lie farther from the training
  data *as a whole*. A new hospital's films are rarely far enough to be flagged one by one, but
  many of them each a little farther is a strong signal (measured in docs/SHIFT.md).

``alpha`` is 0.001 by default: a verdict must not fire on a familiar archive by chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

DEFAULT_ALPHA = 0.001


@dataclass(frozen=True)
class ShiftVerdict:
    scored: int  # images with a shift score
    flagged: int
    share: float | None
    expected_share: float
    p_flagged: float | None  # binomial test of the flagged share
    p_distribution: float | None  # Mann-Whitney test of the scores against the validation split's
    shifted: bool  # the archive does not look like the training data

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"message": self.message}

    @property
    def message(self) -> str:
        if not self.shifted or self.share is None:
            return ""
        return (
            f"This archive does not look like the model's training data: {self.flagged} of {self.scored} "
            f"films ({self.share:.0%}) are flagged as unlike it, where about {self.expected_share:.1%} "
            f"of familiar films would be (p = {_p(self.p_flagged)}), and its films as a whole lie "
            f"farther from it than the validation films do (p = {_p(self.p_distribution)}). The model's "
            "published figures do not apply here: validate it on local labels first (docs/NEW_SITE.md)."
        )


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1g}"


def shift_verdict(
    flagged: int,
    scored: int,
    expected_share: float,
    scores: Sequence[float] = (),
    validation_scores: Sequence[float] = (),
    alpha: float = DEFAULT_ALPHA,
) -> ShiftVerdict:
    """The verdict for ``flagged`` of ``scored`` images (raw ``scores`` when known)."""
    if scored == 0:
        return ShiftVerdict(0, 0, None, expected_share, None, None, False)
    from scipy.stats import binomtest, mannwhitneyu

    p_flagged = float(binomtest(flagged, scored, expected_share, alternative="greater").pvalue)
    p_distribution = None
    if len(scores) and len(validation_scores):
        p_distribution = float(mannwhitneyu(scores, validation_scores, alternative="greater").pvalue)
    shifted = min(p_flagged, 1.0 if p_distribution is None else p_distribution) < alpha / 2
    return ShiftVerdict(scored, flagged, flagged / scored, expected_share, p_flagged, p_distribution, shifted)
