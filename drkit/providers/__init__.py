"""Cloud provider snapshots of whole machines: DigitalOcean, Vultr, Hetzner.

``base`` holds the small interface every provider implements, ``factory``
builds one from a policy's ``snapshot`` source (importing SDKs lazily), and
``retry`` holds bounded retries and pagination shared by the HTTP clients.
Only ``drkit.actions.provider_snapshot`` combines them with policies.
"""
