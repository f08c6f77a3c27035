"""The one table from every package's typed errors to gRPC status codes.

Each package raises its own classes (store and index import nothing of ours; worker and kvcodec
never import the server), and this table alone says what a client sees. An exception not in it
is a bug of ours: INTERNAL, with the request id in the reply and the trace in the log.
"""

import grpc

import kvcodec
from store import errors
from worker.errors import RequestCancelled, WorkerInputError

STATUS_BY_ERROR: dict[type[Exception], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Corrupted: grpc.StatusCode.DATA_LOSS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    WorkerInputError: grpc.StatusCode.INVALID_ARGUMENT,
    RequestCancelled: grpc.StatusCode.UNAVAILABLE,  # model work cut short by a worker stopping
    kvcodec.CorruptBlobError: grpc.StatusCode.DATA_LOSS,
    NotImplementedError: grpc.StatusCode.UNIMPLEMENTED,  # what generated servicer stubs raise for a method left out
}


MAX_DETAILS_CHARS = 1024  # messages quote client input; gRPC refuses status metadata past 8 KiB


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status code and message for an expected error; None for a bug (the caller logs it)."""
    for kind in type(exc).__mro__:
        if kind in STATUS_BY_ERROR:
            message = str(exc)
            if len(message) > MAX_DETAILS_CHARS:
                message = message[: MAX_DETAILS_CHARS - 3] + "..."
            return STATUS_BY_ERROR[kind], message
    return None
