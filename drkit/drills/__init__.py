"""Restore drills: rebuild a host in a Docker container from its latest backup.

``engine`` makes sure a Docker engine runs, ``images`` builds the base and
per-host images from ``docker/`` (cached by content hash), ``container``
starts a host's container with ports on 127.0.0.1 only and runs commands in it.
"""
