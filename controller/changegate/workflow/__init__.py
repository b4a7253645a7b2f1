"""The workflow client: what `changegate request/approve/apply/preflight/list/status` do
against the API server. The decisions (digests, statements, signatures, verification) come
from `changegate.core`; this package only fetches, dry-runs and writes.
"""
