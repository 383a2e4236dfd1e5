"""Cloud provider snapshots of whole machines: DigitalOcean, Vultr, Hetzner.

``base`` holds the small interface every provider implements, ``factory``
builds one from a policy's ``snapshot`` source (importing SDKs lazily), and
``retry`` says which answers are retried (through ``drkit.retry``) and how
long a server asks to wait, and follows pagination.
Only ``drkit.actions.provider_snapshot`` combines them with policies.
"""
