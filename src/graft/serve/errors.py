"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with a string code.

Every failure a client can cause is an ``APIError`` with its HTTP status (400, 401, 404, 413, 503);
the app turns it into a JSON response. Anything else is a 500 that shows a request id only.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A request the server refuses, with the status and OpenAI error fields to answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        #: extra response headers (``Retry-After`` on a full queue, ``WWW-Authenticate`` on 401)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    """A 400 for a request field the server cannot take."""
    return APIError(400, message, code, param)
