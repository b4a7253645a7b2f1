"""changegate: two signed approvals for every tier-1 change."""

__version__ = "0.1.0"
