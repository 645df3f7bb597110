"""The one-machine shape. Importing it quiets the Lambda-oriented telemetry: no EMF metrics on stdout, warnings-only
JSON logs and no X-Ray, unless the environment already says otherwise (`babychain.config.POWERTOOLS_VARIABLES`)."""

import os

from babychain.config import POWERTOOLS_VARIABLES

for _variable in POWERTOOLS_VARIABLES:
    if _variable.local:
        os.environ.setdefault(_variable.env, _variable.local)
