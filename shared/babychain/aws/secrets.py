"""Secrets from AWS Secrets Manager: one JSON secret named by BABYCHAIN_SECRETS_ID, cached by Powertools.

Its keys are the same names as the environment variables (BABYCHAIN_API_KEY, DATABASE_URL, BFL_API_KEY, ...), so
the rest of the engine reads one kind of configuration. A variable already set in the environment wins; one set to
the empty string counts as unset, as everywhere in the settings (the template sets UPSTASH_REDIS_REST_URL from a
parameter that may be empty, and the secret may hold the URL instead).
"""

from __future__ import annotations

import os
from typing import Any

from babychain import config
from babychain.errors import ConfigurationError

SECRETS_ID = config.BY_FIELD["secrets_id"].env
CACHE_SECONDS = 300


def load_secrets_into_environment() -> list[str]:
    """Returns the names it set (never the values)."""
    # Read alone: the other settings may still be waiting for this secret.
    secret_id = config.read("secrets_id")
    if not secret_id:
        return []
    from aws_lambda_powertools.utilities import parameters

    values: Any = parameters.get_secret(secret_id, transform="json", max_age=CACHE_SECONDS)
    if not isinstance(values, dict):
        raise ConfigurationError(f"The secret {SECRETS_ID} names must be a JSON object of variable names to values.")
    loaded = []
    for name, value in values.items():
        if isinstance(value, str) and not os.environ.get(name, "").strip():
            os.environ[name] = value
            loaded.append(name)
    return loaded
