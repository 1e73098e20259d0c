"""Settings, vocabularies and the error types of the annotate package.

The settings are the `[annotate]` section of the configuration (`kaizenlm.config.AnnotateConfig`,
re-exported here): `settings_of(cfg)` returns it, `label_schema(settings)` the `LabelSchema`
its `schema` names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from kaizenlm.config import AnnotateConfig
from kaizenlm.config.data import DEFAULT_REVIEW_LABELS

KINDS = ("correction", "disagreement", "sample", "blind_pair")
"""What a review item is: a user's correction to check, a turn whose explicit and implicit
feedback disagree, a random sample of served answers, or a blind comparison of two versions."""
VERDICTS = ("accept", "edit", "reject")
"""Verdicts on an answer (items of every kind but blind_pair). `edit` comes with a gold answer."""
BLIND_VERDICTS = ("a", "b", "tie", "both_bad")
"""Verdicts on a blind pair: which of the answers shown as A and B is better."""
DEFAULT_LABELS = DEFAULT_REVIEW_LABELS


class AnnotateError(ValueError):
    """Bad input to the annotate package; `field` names what is wrong (e.g. 'rows[3].prompt')."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name}: {problem}")
        self.field, self.problem = field_name, problem


class NotFound(AnnotateError):
    """An item id that names no review item (HTTP 404)."""


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
    """The `[annotate]` section of a loaded Config (the defaults for anything without one)."""
    section = getattr(cfg, "annotate", None)
    return section if section is not None else AnnotateConfig()


def label_schema(settings: AnnotateConfig) -> LabelSchema:
    """The LabelSchema of the configured `annotate.schema`."""
    return LabelSchema(tuple(settings.schema))


__all__ = ["BLIND_VERDICTS", "DEFAULT_LABELS", "KINDS", "VERDICTS", "AnnotateConfig", "AnnotateError", "LabelSchema",
           "NotFound", "label_schema", "settings_of"]
