"""Settings, vocabularies and the one error type of the annotate package.

`AnnotateConfig` is the `[annotate]` section to be: it lives here until kaizenlm/config has
an `annotate` section (then `settings_of(cfg)` returns that one and this class moves there
unchanged). Every field has a docstring, as in kaizenlm/config, so `kaizen init` can turn
them into comments.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

KINDS = ("correction", "disagreement", "sample", "blind_pair")
"""What a review item is: a user's correction to check, a turn whose explicit and implicit
feedback disagree, a random sample of served answers, or a blind comparison of two versions."""
VERDICTS = ("accept", "edit", "reject")
"""Verdicts on an answer (items of every kind but blind_pair). `edit` comes with a gold answer."""
BLIND_VERDICTS = ("a", "b", "tie", "both_bad")
"""Verdicts on a blind pair: which of the answers shown as A and B is better."""
DEFAULT_LABELS = ("correct", "incomplete", "wrong", "unsafe", "off-topic")


class AnnotateError(ValueError):
    """Bad input to the annotate package; `field` names what is wrong (e.g. 'rows[3].prompt')."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name}: {problem}")
        self.field, self.problem = field_name, problem


def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        # The config package's error when there is one, so `kaizen` reports it as a config error.
        from kaizenlm.config import ConfigError

        raise ConfigError(f"config key '{key}': {problem}")


@dataclass
class AnnotateConfig:
    """Human review and annotation: the review queue, labels, agreement (docs/ANNOTATION.md)."""

    min_kappa: float = 0.8
    """Least Fleiss' kappa over the overlap items for reviewed labels to enter training (Cohen's 0.8 convention)."""
    overlap: float = 0.1
    """Share of each kind's review items labelled by 2 or more reviewers, so agreement can be measured (0..1)."""
    overlap_reviewers: int = 2
    """Reviewers assigned to each overlap item (an item outside the overlap gets one)."""
    sample_size: int = 100
    """Served answers drawn at random each week into the review queue (kind 'sample')."""
    schema: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
    """The label schema: every reviewed answer gets one of these labels beside its verdict."""
    reviewers: list[str] = field(default_factory=list)
    """Named reviewers that new items are assigned to (empty: assign with `kaizen annotate queue assign --reviewers`)."""

    def __post_init__(self) -> None:
        _check(0.0 < self.min_kappa <= 1.0, "annotate.min_kappa", "must be in (0, 1]")
        _check(0.0 <= self.overlap <= 1.0, "annotate.overlap", "must be in 0..1 (a share of the items)")
        _check(self.overlap_reviewers >= 2, "annotate.overlap_reviewers", "must be >= 2 (agreement needs two)")
        _check(0 <= self.sample_size <= 100_000, "annotate.sample_size", "must be in 0..100000")
        self.schema = [str(s).strip() for s in self.schema]
        _check(len(self.schema) >= 2, "annotate.schema", "must name at least 2 labels")
        _check(all(self.schema), "annotate.schema", "labels must not be empty")
        _check(len(set(self.schema)) == len(self.schema), "annotate.schema", "labels must be distinct")
        _check(all(r.strip() for r in self.reviewers), "annotate.reviewers", "names must not be empty")

    @property
    def label_schema(self) -> LabelSchema:
        return LabelSchema(tuple(self.schema))


@dataclass(frozen=True)
class LabelSchema:
    """The labels a reviewer picks from. Its id is a hash of the labels, so labels given
    under different schemas are never compared by the agreement figures."""

    labels: tuple[str, ...] = DEFAULT_LABELS

    @property
    def schema_id(self) -> str:
        return "schema-" + hashlib.sha256("\n".join(self.labels).encode()).hexdigest()[:10]

    def check(self, label: str | None, field_name: str = "label") -> str:
        if not isinstance(label, str) or label not in self.labels:
            raise AnnotateError(field_name, f"must be one of {', '.join(self.labels)} (got {label!r})")
        return label


def settings_of(cfg) -> AnnotateConfig:
    """The `[annotate]` section of a loaded Config once it has one; the defaults until then."""
    section = getattr(cfg, "annotate", None)
    return section if section is not None else AnnotateConfig()
