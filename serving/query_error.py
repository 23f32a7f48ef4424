"""The one refusal every query path raises: an HTTP status and a message fit for the user.

Its own module so that the modules ``serving.queries`` imports (``mixed_search``) and the route
modules beside it (``explain_routes``, ``focus_search``) raise the same exception, which the app
answers like an HTTPException and the CLI and ``imgsearch.api`` turn into their own errors.
"""

from __future__ import annotations


class QueryError(Exception):
    """A query that cannot be answered; ``status`` is the HTTP status it maps to."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def as_user_error(self) -> Exception:
        """The exception a command line or library caller gets instead (KeyError: not found)."""
        kind = {400: ValueError, 404: KeyError, 422: ValueError}.get(self.status, RuntimeError)
        return kind(self.message)
