"""Where drkit keeps its own files (XDG base directories) and finds the ones it ships."""

from __future__ import annotations

import importlib.resources
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
    """``$DRKIT_STATE_DIR`` or ``$XDG_STATE_HOME/drkit`` (catalog, restore progress),
    created if missing and made private (0700): what is in it names hosts, databases
    and failures, for its owner only."""
    override = os.environ.get("DRKIT_STATE_DIR")
    path = Path(override) if override else _xdg("XDG_STATE_HOME", ".local/state") / "drkit"
    private_dir(path)
    return path


def private_dir(path: Path) -> None:
    """Create ``path`` as 0700, or take group and other access off it if it exists.

    Errors are left to whoever writes there next (they name what failed).
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError:
        pass


def private_file(path: Path) -> None:
    """Create ``path`` empty as 0600, or take group and other access off it if it exists
    (a catalog made by an older drkit was world-readable). OSError if it cannot."""
    fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def shipped(name: str) -> Path:
    """A directory drkit ships beside its code: ``docker`` (drill images),
    ``restore_drills`` (the seed hosts' drill files) or ``policies`` (example policies).

    From an installed wheel it is package data, ``<site-packages>/drkit/data/<name>``
    (pyproject.toml's force-include puts it there); running from a checkout (an
    editable install, as ``make test`` has) it is ``<checkout>/<name>``, where the
    docs name it and where developers edit it.
    """
    packaged = importlib.resources.files("drkit") / "data" / name
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / name


def default_identity_file() -> Path:
    return config_dir() / "identity.txt"


def default_catalog_url() -> str:
    url = os.environ.get("DRKIT_CATALOG_URL")
    return url if url else f"sqlite:///{state_dir() / 'catalog.sqlite'}"
