"""Where drkit keeps its own files (XDG base directories)."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def config_dir() -> Path:
    """``$DRKIT_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/drkit``."""
    override = os.environ.get("DRKIT_CONFIG_DIR")
    return Path(override) if override else _xdg("XDG_CONFIG_HOME", ".config") / "drkit"


def state_dir() -> Path:
    """``$DRKIT_STATE_DIR`` or ``$XDG_STATE_HOME/drkit`` (catalog, restore progress)."""
    override = os.environ.get("DRKIT_STATE_DIR")
    return Path(override) if override else _xdg("XDG_STATE_HOME", ".local/state") / "drkit"


def default_identity_file() -> Path:
    return config_dir() / "identity.txt"


def default_catalog_url() -> str:
    url = os.environ.get("DRKIT_CATALOG_URL")
    return url if url else f"sqlite:///{state_dir() / 'catalog.sqlite'}"
