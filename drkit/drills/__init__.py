"""Restore drills: rebuild a host in a Docker container from its latest backup.

``engine`` makes sure a Docker engine runs, ``images`` builds the base and
per-host images from ``docker/`` (cached by content hash), ``container``
starts a host's container on an isolated network with its ports on
127.0.0.1 only (``forward`` publishes them) and runs commands in it;
``checks``, ``spec`` and ``report`` are the drill's checks and verdicts.
"""
