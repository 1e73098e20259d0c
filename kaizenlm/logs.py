"""Logging setup shared by every process: a file under $KAIZEN_HOME/logs plus stderr warnings."""

from __future__ import annotations

import logging
from pathlib import Path


def setup_logging(cfg, name: str, level: int = logging.INFO) -> Path:
    log_dir = cfg.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{name}.log"
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(fmt)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(level)
    root.handlers[:] = [file_handler, console]
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO
    return path
