"""Errors that carry an HTTP status, so every layer can raise and one handler renders them."""

from __future__ import annotations

from collections.abc import Iterable


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


class UnknownName(NotFound):
    """A name that is none of the known ones: ``no model named 'irsi' (did you mean 'iris'?)``.

    It keeps the name and the known names, so a caller that knows other places the name could
    come from (the ``%deploy`` magic: the user's variables) can suggest among all of them.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind, self.name, self.known = kind, name, list(known)
        super().__init__(f"no {kind} named {name!r}{did_you_mean(name, self.known)}")


class Conflict(NbdeployError):
    """The request clashes with the store's state, e.g. a second canary while one runs (409)."""

    status = 409


class ConversionError(NbdeployError):
    """A model could not be converted to ONNX, or failed the fidelity check (422)."""

    status = 422


class Unavailable(NbdeployError):
    """The server or model is not ready, or is overloaded (503)."""

    status = 503


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'iris'?)`` for the candidate closest to ``name``, or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
