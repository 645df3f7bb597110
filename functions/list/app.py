"""The read-only listings: chain templates, the caller's runs, the model catalog, and health."""

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.api.http import caller, json_response, make_resolver
from babychain.engine.runs import list_chains, list_models, list_runs
from babychain.observability import instrumented
from babychain.services import services

app = make_resolver()


@app.get("/api/v1/chains")
def chains() -> Response:
    svc, _ = caller(app, "chains:read")
    return json_response(200, list_chains(svc))


@app.get("/api/v1/chains/runs")
def runs() -> Response:
    svc, principal = caller(app, "chains:read")
    return json_response(200, list_runs(svc, principal, dict(app.current_event.query_string_parameters or {})))


@app.get("/api/v1/models")
def models() -> Response:
    svc, _ = caller(app, "chains:read")
    return json_response(200, list_models(svc))


@app.get("/api/health")
def health() -> Response:
    return json_response(200, {"status": "ok", "service": "babychain", **services().store.health()})


@instrumented(correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
