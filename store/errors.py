"""One exception hierarchy for tenantkv; the server maps each class to one gRPC status code."""


class TenantKVError(Exception):
    """Base of every error tenantkv raises on purpose."""


class InvalidArgument(TenantKVError):
    """The request is malformed; the message names the field."""


class NotFound(TenantKVError):
    """The object does not exist, or belongs to a tenant the caller may not see."""


class AlreadyExists(TenantKVError):
    """An object with this name exists already."""


class Unauthenticated(TenantKVError):
    """No credentials, or credentials that are unknown or revoked."""


class PermissionDenied(TenantKVError):
    """Valid credentials that do not allow this call."""


class QuotaExceeded(TenantKVError):
    """A tenant quota or a size limit would be exceeded; the message names which."""


class FailedPrecondition(TenantKVError):
    """The system is not in a state that allows the call (e.g. wrong embedding dimension for this store)."""


class Corrupted(TenantKVError):
    """Stored bytes fail their checksum or cannot be parsed."""


class Unavailable(TenantKVError):
    """The service cannot answer yet (still loading) or any more (shutting down); retry later."""
