"""drkit: backup and disaster recovery for small server fleets."""

__version__ = "0.1.0"
