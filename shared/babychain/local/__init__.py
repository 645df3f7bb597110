"""The one-machine shape. Importing it quiets the Lambda-oriented telemetry: no EMF metrics on stdout, warnings-only
JSON logs and no X-Ray, unless the environment already says otherwise."""

import os

for _name, _value in (
    ("POWERTOOLS_METRICS_DISABLED", "true"),
    ("POWERTOOLS_TRACE_DISABLED", "true"),
    ("POWERTOOLS_LOG_LEVEL", "WARNING"),
):
    os.environ.setdefault(_name, _value)
