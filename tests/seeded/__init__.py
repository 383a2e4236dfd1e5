"""Seeded hosts: containers of a host's drill image holding what its seed documents describe.

Issue 15 item 4: each seed host's scenario backs up a container of its
``docker/hosts/<host>`` image, seeded as the seed documents describe the real
machine, with the policy from ``policies/`` unchanged except its machine-local
tables (``policy.py``), then restores it onto a fresh container and drills it.

- ``containers.py``: containers of a host image started in the background and
  removed at exit whatever happened; SSH login keys and known_hosts for them.
- ``policy.py``: the shipped policy with only ``[connection]``, ``[repository]``
  and ``[encryption]`` rewritten, checked to be otherwise byte-identical.
- ``tls.py``: certificates made at test time, the fingerprint a TLS server
  presents for a name (``openssl s_client`` inside the container).
- ``tree.py``: files written into a container as one tar (owners, modes, symlinks), Caddy's
  Caddyfile and data dir with certificates, Caddy restarted until it serves them.
- ``scenario.py``: seed, back up, restore onto a fresh container and drill, for
  any host (the visualkit-hetzner, conversational-platform and e2i-droplet tests;
  ``only``: the sources a host's image allows).
- ``vultr.py``: the vultr box (seeds 000 and 003).
- ``visualkit.py``: the visualkit-hetzner box (seed 004).
- ``conversational.py``: the conversational-platform box (seed 001).
- ``e2i.py``: the e2i-droplet box (seed 002): Supabase, nginx + certbot, app files.
"""
