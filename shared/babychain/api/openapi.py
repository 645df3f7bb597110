"""The API's OpenAPI 3.1 document, generated from the code.

Each API function (`functions/*/app.py`) declares its routes with the light types of `babychain.api.routes`, which
its handler checks requests against at run time; here each declaration becomes a Powertools route with the matching
typed parameters and the models of `babychain.api.schemas` (a typed twin of the handler, never called), and
Powertools' OpenAPI merge joins them into one document. Added here: what no single route
knows, the chain input schemas generated from the model catalog (each model family's parameter schema, and per chain
its step models and params), and the document's own info. Powertools' 422 "validation error" answers are taken out:
this API answers validation errors with a 400 in its one error shape.

    python -m babychain.api.openapi > docs/openapi.json

The committed `docs/openapi.json` is what `GET /api/v1/openapi.json` serves (the layer build puts a copy beside this
module); a test fails when it drifts from what this module generates.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
from functools import cache
from pathlib import Path
from typing import Annotated, Any, NoReturn, get_type_hints

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from babychain.api import schemas
from babychain.api.http import Api, Caller, Declared
from babychain.api.routes import SECURITY_SCHEME, Body, Param, parameter_spec
from babychain.api.schemas import COMPONENTS
from babychain.chains.catalog import IMAGE_TO_IMAGE, models_for
from babychain.chains.families import FAMILIES
from babychain.chains.templates import CHAIN_VERSION, TEMPLATES, ChainTemplate
from babychain.errors import ConfigurationError
from babychain.security.urls import MAX_URL_LENGTH

# Where the document is read from: beside this module in the Lambda layer (the layer build copies it there), the
# repository's docs/ in a checkout.
PACKAGED_DOCUMENT = Path(__file__).with_name("openapi.json")
REPOSITORY_DOCUMENT = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
MODES = ("byok", "babysea")  # local mode takes the BYOK schemas

DESCRIPTION = """\
A durable model-chain engine for generative media. One call names a chain template, the model for each step and each
step's parameters; the engine stores a durable run, executes the steps one after another, hands each step's output to
the next step, and sends **one** signed callback (Standard Webhooks) when the run ends. Poll, list and cancel runs.

Every route but health, this document and the provider webhooks needs `Authorization: Bearer <API key>`; each names
the key scope it needs. Every error, on every route, has one shape: `{"error": {"type", "code", "message", "field"?}}`
with the offending field where there is one. With rate limiting on, every authenticated answer carries
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, and a 429 carries `Retry-After`.

Step parameters use the selected model's provider-native schema (`GET /api/v1/chains` lists the ones this deployment
takes, for its mode); the engine injects each step's input file from the previous step.
"""


def _family_schemas() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each family's parameter schema as a component (with the models they nest), and a reference to it by family
    name."""
    models: list[type[BaseModel]] = []
    for family in FAMILIES.values():
        if family.schema not in models:
            models.append(family.schema)
    refs, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template=COMPONENTS + "{model}"
    )
    by_family = {name: refs[(family.schema, "validation")] for name, family in FAMILIES.items()}
    return definitions.get("$defs", {}), by_family


def chain_input_schema(template: ChainTemplate, family_refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The `input` of a create request for one chain: a model per step from the catalog, and per step the parameter
    schemas of the models it allows (the selected model's schema applies)."""
    models: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for key in template.step_keys:
        allowed = sorted({m.id for mode in ("byok", "babysea", "local") for m in models_for(key, mode)})
        models[f"{key}_model"] = {"type": "string", "enum": allowed}
        families = sorted({m.family(mode).name for mode in MODES for m in models_for(key, mode)})
        properties[f"{key}_params"] = {
            "description": f"The {key} step's parameters in the schema of the model in chain_models.{key}_model.",
            "anyOf": [family_refs[name] for name in families],
        }
    schema: dict[str, Any] = {
        "title": f"{template.slug.capitalize()}Input",
        "description": f"{template.slug} ({template.alias}): {template.title}.",
        "type": "object",
        "additionalProperties": False,
        "required": ["chain_models", *properties],
        "properties": {
            "chain_models": {
                "type": "object",
                "additionalProperties": False,
                "required": list(models),
                "properties": models,
            },
            **properties,
        },
    }
    if template.step_keys[0] == IMAGE_TO_IMAGE:
        schema["properties"]["source_image_url"] = {
            "type": "string",
            "format": "uri",
            "maxLength": MAX_URL_LENGTH,
            "description": "Your HTTPS image for the first step (or set it in that step's params).",
        }
    return schema


def _typed(annotation: Any) -> Any:
    """A handler parameter's `routes` type as the Powertools typed parameter (or body model) it stands for."""
    from aws_lambda_powertools.event_handler.openapi import params

    spec = parameter_spec(annotation)
    if isinstance(spec, Body):
        return Annotated[getattr(schemas, spec.model), params.Body(openapi_examples=spec.openapi_examples)]
    if not isinstance(spec, Param):
        raise ConfigurationError(f"not a routes parameter type: {annotation!r}")
    base = annotation.__origin__
    given: dict[str, Any] = {
        "alias": spec.alias,
        "pattern": spec.pattern,
        "ge": spec.ge,
        "le": spec.le,
        "max_length": spec.max_length,
        "description": spec.description or None,
        "json_schema_extra": {"enum": list(spec.documented_enum)} if spec.documented_enum else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return base
    kind = {"path": params.Path, "query": params.Query, "header": params.Header}[spec.where]
    return Annotated[base, kind(**given)]


def _with_models(answer: dict[str, Any]) -> dict[str, Any]:
    """A declared answer with its model's name replaced by the model."""
    answer = copy.deepcopy(answer)
    for content in answer.get("content", {}).values():
        if isinstance(content.get("model"), str):
            content["model"] = getattr(schemas, content["model"])
    return answer


def _typed_twin(route: Declared) -> Any:
    """A function with the handler's signature in Powertools' types, for the document alone."""
    from aws_lambda_powertools.event_handler import Response

    def twin(**_: Any) -> NoReturn:
        raise NotImplementedError("describes a route; the handler serves it")

    hints = get_type_hints(route.func, include_extras=True)
    parameters = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=parameter.default, annotation=_typed(hints[name])
        )
        for name, parameter in inspect.signature(route.func).parameters.items()
        if hints[name] is not Caller
    ]
    success = next(answer for status, answer in route.openapi["responses"].items() if status < 300)
    model = getattr(schemas, success["content"]["application/json"]["model"])
    twin.__name__ = route.func.__name__
    returns = Response[model]  # type: ignore[valid-type]
    twin.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
    return twin


def typed_resolver(api: Api) -> Any:
    """The resolver Powertools describes an API function's routes with: typed, validating, with the security scheme
    their routes name (`routes.requires`)."""
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

    resolver = APIGatewayHttpResolver(enable_validation=True)
    resolver.configure_openapi(security_schemes={SECURITY_SCHEME: HTTPBearer(description="Your API key.")})
    for route in api.routes:
        declared = {**route.openapi, "responses": {s: _with_models(a) for s, a in route.openapi["responses"].items()}}
        resolver.route(route.path, route.method, security=route.security, **declared)(_typed_twin(route))
    return resolver


def _api_resolvers() -> list[Any]:
    """The API functions' routes, typed."""
    from babychain.local.lambda_shim import API_FUNCTIONS, load_function

    return [typed_resolver(load_function(function).api) for function in API_FUNCTIONS]


def _tidy_operations(document: dict[str, Any]) -> None:
    """Takes out Powertools' 422 answers and their schemas (validation errors here are 400s in the one error shape),
    and the `null` alternative of optional parameters (an absent parameter is not a null one)."""
    for path_item in document["paths"].values():
        for operation in path_item.values():
            operation["responses"].pop("422", None)
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                alternatives = [a for a in schema.get("anyOf", []) if a != {"type": "null"}]
                if len(alternatives) == 1 and len(schema["anyOf"]) == 2:
                    del schema["anyOf"]
                    parameter["schema"] = {**alternatives[0], **schema}
    for name in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        document["components"]["schemas"].pop(name, None)


def build() -> dict[str, Any]:
    """The document, from the API functions' resolvers and the model catalog."""
    from aws_lambda_powertools.event_handler.openapi.merge import OpenAPIMerge
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, Tag

    from babychain.local.lambda_shim import ROUTES

    merge = OpenAPIMerge(
        title="BabyChain API",
        version=CHAIN_VERSION,
        summary="Durable image and video model chains: one request, one signed callback.",
        description=DESCRIPTION,
        security_schemes={SECURITY_SCHEME: HTTPBearer(description="Your API key: `Authorization: Bearer <key>`.")},
        tags=[
            Tag(name="runs", description="Create, get, list and cancel runs."),
            Tag(name="chains", description="The chain templates and the model catalog."),
            Tag(name="service", description="Health and this document."),
            Tag(name="provider webhooks", description="Where providers report; not for callers."),
        ],
        on_conflict="error",
    )
    for resolver in _api_resolvers():
        merge.add_schema(resolver.get_openapi_schema())
    document: dict[str, Any] = json.loads(merge.get_openapi_json_schema())
    _tidy_operations(document)
    family_defs, family_refs = _family_schemas()
    schemas = document["components"]["schemas"]
    schemas.update(family_defs)
    for template in TEMPLATES:
        schemas[f"{template.slug.capitalize()}Input"] = chain_input_schema(template, family_refs)
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    # The paths in the routing table's order (the local runner's and template.yaml's).
    order = [route for _method, route, _function in ROUTES]
    document["paths"] = dict(sorted(document["paths"].items(), key=lambda item: order.index(item[0])))
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


@cache
def published_document() -> str:
    """The committed document, as `GET /api/v1/openapi.json` serves it."""
    for path in (PACKAGED_DOCUMENT, REPOSITORY_DOCUMENT):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise ConfigurationError(f"no OpenAPI document at {PACKAGED_DOCUMENT} or {REPOSITORY_DOCUMENT}")


def main() -> None:
    sys.stdout.write(render(build()))


if __name__ == "__main__":
    main()
