"""What a host runs, and which of it a policy backs up (``drkit discover``, docs/discover.md).

``script.py``: the one read-only shell script run on the host; ``facts.py``:
its output parsed into ``Facts``; ``coverage.py``: each thing found, with the
policy's sources covering it; ``suggest.py``: sources for the rest, as TOML.
"""
