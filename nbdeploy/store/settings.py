"""Settings from the environment: a frozen dataclass's fields, each read from ``<PREFIX><FIELD>``.

The one reading of ``NBDEPLOY_*`` variables, for the server's settings and the prediction log's, so both
accept and refuse values the same way and say so in the same words.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from nbdeploy.errors import InvalidInput

_WHAT = {int: "an integer", float: "a number", str: "a string"}


def read_env(cls: type, prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields of dataclass ``cls`` set in the environment, typed as their defaults.

    An integer field takes ``3`` (and ``3.0``, what a shell script may compute); a bad value is an
    :class:`InvalidInput` naming the variable and what it must be.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        name = f"{prefix}{f.name.upper()}"
        raw = env.get(name)
        if raw is None:
            continue
        kind = type(f.default)
        try:
            if kind is int:
                number = float(raw)
                if not number.is_integer():
                    raise ValueError(raw)
                values[f.name] = int(number)
            else:
                values[f.name] = kind(raw)
        except ValueError:
            raise InvalidInput(f"{name} must be {_WHAT.get(kind, 'a string')}, got {raw!r}") from None
    return values
