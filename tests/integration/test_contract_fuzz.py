"""Fuzzing from the contract: schemathesis generates requests for every route of docs/openapi.json, sends them with a
valid key to the local stack (the real handlers over HTTP), and checks every answer against the document: no 5xx,
documented status codes, content types, headers and bodies; requests the document forbids are refused with a 4xx.

Valid requests (positive) and requests that break the document (negative) are generated for each operation, with a
fixed seed so a CI run is reproducible; BABYCHAIN_FUZZ_SEED picks another one. The case count and the time are
printed in pytest's terminal summary (and, with `-s`, per route and status as the test ends).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from babychain.local.lambda_shim import ROUTES
from babychain.local.runner import LocalEngine
from tests.conftest import KEY_A

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
# At most this many cases per operation and generation mode. The six routes with parameters or a body get up to
# 6 x 2 x 120 = 1,440 (fewer where a route's request space is smaller: the webhooks' path parameters are plain
# strings, with nothing to break); the four without (health, the document, two listings) have one request each.
EXAMPLES_PER_MODE = 120
MIN_CASES = 1000
FUZZ_SEED = int(os.environ.get("BABYCHAIN_FUZZ_SEED", "20260523"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
AUTH = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture(scope="module")
def schema() -> Any:
    loaded = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text(encoding="utf-8")))
    # Unknown query parameters and headers are ignored, as HTTP APIs do: not a request the document forbids.
    loaded.config.generation.update(allow_extra_parameters=False)
    return loaded


@pytest.fixture
def engine(make_engine: Callable[..., LocalEngine]) -> Iterator[LocalEngine]:
    # No queue workers: created runs stay queued (the fuzzer is about the API, and the media stack would take the
    # CPU); one API worker, as Lambda runs one invocation per container. No rate limiting, whatever the environment
    # says: 1,200 requests in a minute from one key would be 429s.
    yield make_engine(workers=False, upstash_redis_rest_url="", upstash_redis_rest_token="")


class Tally:
    def __init__(self) -> None:
        self.cases: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.by_label: Counter[tuple[str, int]] = Counter()
        self.run_ids: list[str] = []  # of the runs the requests created

    def record(self, label: str, response: requests.Response) -> None:
        self.cases[label] += 1
        self.statuses[response.status_code] += 1
        self.by_label[(label, response.status_code)] += 1
        if response.status_code == 202:
            self.run_ids.append(response.json()["id"])


def send(case: Any, label: str, checks: list[Any], base_url: str, session: requests.Session, tally: Tally) -> None:
    response = case.call(base_url=base_url, session=session, timeout=30)
    tally.record(label, response)
    case.validate_response(response, checks=checks, headers=AUTH)


def send_examples(operation: Any, base_url: str, session: requests.Session, tally: Tally) -> None:
    """The document's own request examples, each to the chain it is written for."""
    content = operation.definition.raw.get("requestBody", {}).get("content", {}).get("application/json", {})
    for name, example in content.get("examples", {}).items():
        slug = "chain1" if name == "seed" else name
        case = operation.Case(
            path_parameters={"slug": slug}, headers=AUTH, body=example["value"], media_type="application/json"
        )
        send(case, f"{operation.label} (examples)", CHECKS, base_url, session, tally)


def fuzz(operation: Any, mode: GenerationMode, base_url: str, session: requests.Session, tally: Tally) -> None:
    """Up to EXAMPLES_PER_MODE generated requests for one operation, each answer checked against the document. On
    the routes of one run, valid requests name the runs created so far as often as random ids."""
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    label = f"{operation.label} ({mode.value})"
    cases = operation.as_strategy(generation_mode=mode, headers=AUTH)
    if mode is GenerationMode.POSITIVE and "{run_id}" in operation.path and tally.run_ids:
        existing = st.sampled_from(tally.run_ids).flatmap(
            lambda run_id: operation.as_strategy(generation_mode=mode, headers=AUTH, path_parameters={"run_id": run_id})
        )
        cases = st.one_of(cases, existing)

    @seed(FUZZ_SEED)
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def run(case: Any) -> None:
        send(case, label, checks, base_url, session, tally)

    try:
        run()
    except Unsatisfiable:
        # A route with no parameters and no body has nothing to break: there is no negative request for it.
        assert mode is GenerationMode.NEGATIVE and not tally.cases[label], label


def test_every_route_answers_as_documented_under_generated_requests(
    engine: LocalEngine, schema: Any, record_property: Callable[[str, object], None]
) -> None:
    session = requests.Session()
    tally = Tally()
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(ROUTES)
    # Create first, so that get and cancel also meet runs that exist.
    operations.sort(key=lambda op: op.label != "POST /api/v1/chains/{slug}/runs")
    for operation in operations:
        send_examples(operation, engine.base_url, session, tally)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, engine.base_url, session, tally)
    elapsed = time.monotonic() - started
    total = sum(tally.cases.values())
    line = (
        f"schemathesis: {total} generated cases on {len(operations)} operations in {elapsed:.1f} s, no 5xx; "
        f"statuses {dict(sorted(tally.statuses.items()))}"
    )
    record_property("summary", line)  # printed in the terminal summary (tests/conftest.py), xdist or not
    print("\n" + line)
    for (label, status), count in sorted(tally.by_label.items()):
        print(f"  {label}: {count} x {status}")
    assert total >= MIN_CASES, tally.cases
    assert not [s for s in tally.statuses if s >= 500]
    # The fuzzer reached past validation: runs were created, then found and canceled.
    assert tally.statuses[202] and tally.statuses[200]
