"""Schemathesis against the service's own OpenAPI document, on a real server process.

Every operation /openapi.json declares gets generated requests (valid and invalid by the
schema, bounded in examples); no answer may be a 5xx, every status must be one the document
declares for the operation, and every answer must match the schema declared for its status.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from reliability_kit import Summary
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from testkit import MODELS, LiveServer, ServerFactory

from service.app import create_app
from service.config import Settings

pytestmark = pytest.mark.slow

EXAMPLES = 25  # per operation; CI has two cores and a budget
TALLY: dict[str, int] = {}


@pytest.fixture(scope="module")
def fuzzed_server(module_server_factory: ServerFactory) -> LiveServer:
    return module_server_factory()


# The document the live server serves is the one its app builds; building an app loads no
# model (that happens in its lifespan), so the schema is ready at collection time.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(providers="cpu", model_dir=MODELS)).openapi()
)


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_5xx_and_every_answer_matches_its_schema(
    fuzzed_server: LiveServer, case: schemathesis.Case
) -> None:
    response = case.call(base_url=fuzzed_server.url, timeout=30)
    TALLY[f"{response.status_code // 100}xx"] = TALLY.get(f"{response.status_code // 100}xx", 0) + 1
    TALLY["requests"] = TALLY.get("requests", 0) + 1
    case.validate_response(
        response,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )
    TALLY["passed"] = TALLY.get("passed", 0) + 1


def test_fuzzing_left_the_server_healthy(fuzzed_server: LiveServer, summary: Summary) -> None:
    operations = len(list(schema.get_all_operations()))
    tracebacks = fuzzed_server.log().count("Traceback")
    summary.row(
        "fuzz/schemathesis",
        area="fuzzing",
        tried=f"Schemathesis {schemathesis.__version__}: {operations} operations of "
        f"/openapi.json, up to {EXAMPLES} examples each; checks not_a_server_error, "
        "status_code_conformance and response_schema_conformance",
        held=TALLY.get("requests", 0) == TALLY.get("passed", -1) and not TALLY.get("5xx"),
        operations=operations,
        **TALLY,
        tracebacks_in_log=tracebacks,
    )
    assert tracebacks == 0, fuzzed_server.log()[-3000:]
    assert fuzzed_server.process.poll() is None
