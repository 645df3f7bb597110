"""Secrets from AWS Secrets Manager: one JSON secret named by BABYCHAIN_SECRETS_ID, cached by Powertools.

Its keys are the same names as the environment variables (BABYCHAIN_API_KEY, DATABASE_URL, BFL_API_KEY, ...), so
the rest of the engine reads one kind of configuration. A variable already set in the environment wins.
"""

from __future__ import annotations

import os
from typing import Any

SECRETS_ID = "BABYCHAIN_SECRETS_ID"
CACHE_SECONDS = 300


def load_secrets_into_environment() -> list[str]:
    """Returns the names it set (never the values)."""
    secret_id = os.environ.get(SECRETS_ID)
    if not secret_id:
        return []
    from aws_lambda_powertools.utilities import parameters

    values: Any = parameters.get_secret(secret_id, transform="json", max_age=CACHE_SECONDS)
    if not isinstance(values, dict):
        raise ValueError(f"The secret {SECRETS_ID} names must hold a JSON object of variable names to values.")
    loaded = []
    for name, value in values.items():
        if isinstance(value, str) and name not in os.environ:
            os.environ[name] = value
            loaded.append(name)
    return loaded
