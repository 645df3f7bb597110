"""What each handler imports at cold start: a fresh interpreter with a Lambda-like environment (so Powertools' Tracer is
on and patches what it patches on Lambda) imports the handler module as the runtime does, and reports sys.modules.

Speed is measured by bench/cold_start.py, not here; these tests keep the imports that decide it from creeping back:
no handler loads pydantic to start (the API handlers check their typed parameters with `babychain.api.routes`; only
the OpenAPI document's builder turns them into pydantic types; the model schemas, `babychain.chains.param_models`, are
loaded by create_run's first validation, or before a SnapStart snapshot); handlers that never read the model catalog
do not load it; and X-Ray patches only the clients it can trace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = sorted(p.parent.name for p in (REPO / "functions").glob("*/app.py"))
# Reading, listing and cancelling runs, the sweeper, callbacks and provider webhooks never validate a request against
# a model schema nor read the catalog; creating a run validates; executing a step reads the catalog and the families
# (where a producer's output goes in the next request), never their schemas.
NEVER_VALIDATE = ("callback_sender", "cancel_run", "get_run", "list", "provider_webhook", "sweeper")
VALIDATE = ("create_run",)
READ_CATALOG = ("step_executor",)
CATALOG = (
    "babychain.chains.catalog",
    "babychain.chains.families",
    "babychain.chains.requests",
    "babychain.chains.param_models",
    "babychain.api.openapi",
)
VALIDATION = ("pydantic", "babychain.chains.requests", "babychain.chains.param_models")
# What only building the OpenAPI document needs: the response models and Powertools' typed parameters and validation.
DOCUMENT_ONLY = (
    "babychain.api.schemas",
    "aws_lambda_powertools.event_handler.openapi.params",
    "aws_lambda_powertools.event_handler.middlewares.openapi_validation",
)

PROBE = """
import importlib.util, json, sys
task = sys.argv[1]
sys.path.insert(0, task)
spec = importlib.util.spec_from_file_location("app", task + "/app.py")
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
if sys.argv[2] == "warm":  # what SnapStart's before-snapshot hooks run
    from babychain.aws.snapstart import warm
    warm()
from aws_xray_sdk.core import patcher
lean_http = sys.modules.get("babychain.security.lean_http")
traced = lean_http is not None and lean_http._tracer is sys.modules["babychain.observability"]._xray_request
print(json.dumps({"modules": sorted(sys.modules), "patched": sorted(patcher._PATCHED_MODULES), "traced": traced}))
"""


def cold_start(function: str, *, warm: bool = False) -> dict[str, Any]:
    task = REPO / "functions" / function
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "AWS_", "LAMBDA_", "_X_AMZN"))}
    env.update(
        AWS_LAMBDA_FUNCTION_NAME=f"babychain-{function}",
        LAMBDA_TASK_ROOT=str(task),
        AWS_REGION="us-east-1",
        PYTHONPATH=os.pathsep.join([str(REPO / "shared"), env.get("PYTHONPATH", "")]),
    )
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(task), "warm" if warm else "-"],
        cwd=task,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def test_every_handler_is_classified() -> None:
    assert sorted(NEVER_VALIDATE + VALIDATE + READ_CATALOG) == FUNCTIONS


@pytest.mark.parametrize("function", NEVER_VALIDATE)
def test_handlers_that_never_validate_do_not_load_the_catalog(function: str) -> None:
    modules = set(cold_start(function)["modules"])
    assert "babychain.observability" in modules  # the probe did import the handler
    assert not modules & set(CATALOG), sorted(modules & set(CATALOG))
    assert not [m for m in modules if m.startswith("pydantic")]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_no_handler_loads_the_models_that_describe_the_api(function: str) -> None:
    # Powertools' OpenAPI models (about 50 ms to import) are for building the document (babychain.api.openapi), not
    # for validating a request.
    assert "aws_lambda_powertools.event_handler.openapi.models" not in cold_start(function)["modules"]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_no_handler_loads_what_only_the_document_needs(function: str) -> None:
    modules = set(cold_start(function)["modules"])
    assert not modules & set(DOCUMENT_ONLY), sorted(modules & set(DOCUMENT_ONLY))


@pytest.mark.parametrize("function", VALIDATE + READ_CATALOG)
def test_handlers_that_read_the_catalog_start_without_pydantic(function: str) -> None:
    modules = set(cold_start(function)["modules"])
    assert {"babychain.chains.catalog", "babychain.chains.families"} <= modules
    assert not modules & set(VALIDATION), sorted(modules & set(VALIDATION))
    assert not [m for m in modules if m.startswith("pydantic")]


@pytest.mark.parametrize("function", VALIDATE)
def test_handlers_that_validate_load_it_before_a_snapshot(function: str) -> None:
    # SnapStart runs the before-snapshot hooks after init: restored environments validate without loading anything.
    assert set(VALIDATION) <= set(cold_start(function, warm=True)["modules"])


@pytest.mark.parametrize("function", NEVER_VALIDATE + READ_CATALOG)
def test_handlers_that_never_validate_load_nothing_before_a_snapshot(function: str) -> None:
    modules = set(cold_start(function, warm=True)["modules"])
    assert not [m for m in modules if m.startswith("pydantic")]


def test_x_ray_patches_botocore_and_httpx_only() -> None:
    started = cold_start("get_run")
    assert started["patched"] == ["botocore", "httpx"]
    # Powertools' default (patch every supported library that imports) loaded these at cold start for nothing.
    assert "sqlite3" not in started["modules"]
    assert "psycopg" not in started["modules"]


@pytest.mark.parametrize("function", ["step_executor", "callback_sender", "get_run"])
def test_with_tracing_on_the_engines_own_requests_are_traced(function: str) -> None:
    # lean_http's requests (providers, downloads, callbacks) get X-Ray subsegments, as httpx's patch gave them.
    assert cold_start(function)["traced"] is True
