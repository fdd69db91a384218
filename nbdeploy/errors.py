"""Errors that carry an HTTP status, so every layer can raise and one handler renders them."""

from __future__ import annotations


class NbdeployError(Exception):
    """Base error: a message for the user and the HTTP status it maps to."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class InvalidInput(NbdeployError):
    """The request or argument does not match what was expected (400)."""

    status = 400


class NotFound(NbdeployError):
    """A model, version, alias or record does not exist (404)."""

    status = 404


class ConversionError(NbdeployError):
    """A model could not be converted to ONNX, or failed the fidelity check (422)."""

    status = 422


class Unavailable(NbdeployError):
    """The server or model is not ready, or is overloaded (503)."""

    status = 503
