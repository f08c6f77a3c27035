"""The worker's typed errors: input a model cannot serve, and work its engine stopped, told apart from our own bugs.

The worker imports nothing of the server; `server.status` maps these classes to gRPC codes.
Input errors subclass ValueError, so callers that predate them still catch them.
"""


class WorkerInputError(ValueError):
    """The input cannot be served by this model (a prompt past its context, a token budget below one);
    the message starts with the request field to blame."""


class ContextOverflow(WorkerInputError):
    """The prompt plus the tokens to generate need more positions than the model has."""


class RequestCancelled(RuntimeError):
    """The request was cancelled, or its engine's scheduler closed, before it finished."""


def check_positions(needed: int, max_positions: int) -> None:
    """ContextOverflow unless `needed` positions (prompt plus reserved decode steps) fit the model."""
    if needed > max_positions:
        raise ContextOverflow(
            f"question: the prompt with its retrieved chunks and max_new_tokens needs {needed} positions, "
            f"the model has {max_positions}; shorten the question or ask for fewer chunks or tokens"
        )
