"""The ChangeApproval API's names and changegate's annotation, defined once (SPEC §2, §4).

The core needs them to recognise a ChangeApproval and break-glass; every adapter imports
them from here rather than spelling them again.
"""

from __future__ import annotations

GROUP = "changegate.io"
VERSION = "v1alpha1"
PLURAL = "changeapprovals"
KIND = "ChangeApproval"
API_VERSION = f"{GROUP}/{VERSION}"
BREAK_GLASS = f"{GROUP}/break-glass"  # annotation: the incident reference
