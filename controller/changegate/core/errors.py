"""Errors for input that could not be read. ``str(e)`` is the one line a person reads.

A *decision* never raises: a request that fails a rule gets a ``Decision`` with reason
codes. These exceptions mean the input itself (a file, a statement, a key, a policy)
could not be understood.
"""


class ChangeGateError(Exception):
    """Base of every error the project raises on purpose."""


class StatementError(ChangeGateError):
    """A DSSE envelope or in-toto statement that is malformed or not ours."""


class TrustStoreError(ChangeGateError):
    """The trust store does not validate; it is refused as a whole (fail closed)."""


class PolicyError(ChangeGateError):
    """The policy does not validate."""


class KeyFileError(ChangeGateError):
    """A private or public key that cannot be loaded."""


class NotCanonicalError(ChangeGateError):
    """A view with no RFC 8785 form (an integer beyond +-(2**53 - 1), a non-finite float)."""


class ReviewError(ChangeGateError):
    """An AdmissionReview that is not a well-formed admission.k8s.io/v1 request."""
