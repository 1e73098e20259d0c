"""Typed configuration: `kaizen.toml` -> dataclasses, with environment overrides.

Every field carries a docstring (the string right below it); `kaizen init` turns those
docstrings into the comments of the default file, so the file and the code cannot drift.
Validation errors name the key (``section.key``) and the problem.

What lives where (everything public is re-exported here: ``from kaizenlm.config import X``):

* ``core.py``     -- ConfigError, the ``_check`` validator, and the service sections
  PathsConfig, KafkaConfig, AuthConfig, GatewayConfig, ControllerConfig, DashboardConfig.
* ``data.py``     -- RewardsConfig, CurationConfig, DEFAULT_BOILERPLATE and AnnotateConfig.
* ``training.py`` -- BaseModelConfig, LoraSFTConfig, LoraDPOConfig, RetrainConfig, EvalConfig.
* ``serving.py``  -- KnowledgeConfig, ABConfig, ServingConfig, ScheduleConfig.
* ``loader.py``   -- the root Config, ENV_OVERRIDES, from_dict, load, with_overrides, field_docs, default_toml.
* ``cron.py``     -- crontab lines -> APScheduler triggers (validates ``[schedule]``).
* ``cli.py``      -- the `kaizen init` command.
"""

from __future__ import annotations

from kaizenlm.config.core import (
    AuthConfig,
    ConfigError,
    ControllerConfig,
    DashboardConfig,
    GatewayConfig,
    KafkaConfig,
    PathsConfig,
)
from kaizenlm.config.data import DEFAULT_BOILERPLATE, AnnotateConfig, CurationConfig, RewardsConfig
from kaizenlm.config.loader import ENV_OVERRIDES, Config, default_toml, field_docs, from_dict, load, with_overrides
from kaizenlm.config.serving import ABConfig, KnowledgeConfig, ScheduleConfig, ServingConfig
from kaizenlm.config.training import BaseModelConfig, EvalConfig, LoraDPOConfig, LoraSFTConfig, RetrainConfig

__all__ = [
    "DEFAULT_BOILERPLATE",
    "ENV_OVERRIDES",
    "ABConfig",
    "AnnotateConfig",
    "AuthConfig",
    "BaseModelConfig",
    "Config",
    "ConfigError",
    "ControllerConfig",
    "CurationConfig",
    "DashboardConfig",
    "EvalConfig",
    "GatewayConfig",
    "KafkaConfig",
    "KnowledgeConfig",
    "LoraDPOConfig",
    "LoraSFTConfig",
    "PathsConfig",
    "RetrainConfig",
    "RewardsConfig",
    "ScheduleConfig",
    "ServingConfig",
    "default_toml",
    "field_docs",
    "from_dict",
    "load",
    "with_overrides",
]
