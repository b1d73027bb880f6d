"""The HTTP API fuzzed from its own OpenAPI schema: valid and invalid requests, never a 5xx.

Schemathesis generates requests for every operation, positive ones from the schema and negative
ones that break it, and sends them in-process through ASGI to a real tiny student.
"""

import os

import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

schemathesis = pytest.importorskip("schemathesis")

# Cases per operation and mode: the slow run sends thousands.
EXAMPLES = int(os.environ.get("DSBS_FUZZ_EXAMPLES", "40"))
API_KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def api_schema(trained_student):
    from dsbs.configs import ServeConfig
    from dsbs.serve import create_app

    # with the API key set, as a deployed service runs; the test client calls itself "testserver"
    app = create_app(ServeConfig(model=trained_student, max_inputs=8, max_input_chars=200, api_key=API_KEY,
                                 allowed_hosts="testserver"))
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


def fuzz(api_schema, examples: int) -> dict:
    counts = {"cases": 0, "2xx": 0, "4xx": 0}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        # a GET without parameters has no request to break: only POST bodies get negative cases
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
            def send(case):
                response = case.call(timeout=120, headers=AUTH)  # a slow answer on a loaded machine is no failure
                counts["cases"] += 1
                counts["2xx" if response.status_code < 300 else "4xx"] += response.status_code < 500
                assert response.status_code < 500, (
                    f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text[:300]}")
                positive = mode is schemathesis.GenerationMode.POSITIVE  # noqa: B023 - send() runs in this iteration
                if positive and response.status_code < 300:
                    case.validate_response(response)  # answers match the schema the service publishes

            send()
    return counts


def test_generated_requests_never_get_a_server_error(api_schema):
    counts = fuzz(api_schema, EXAMPLES)
    print(f"fuzz: {counts}")
    assert counts["cases"] >= 3 * EXAMPLES and counts["2xx"] > 0 and counts["4xx"] > 0


@pytest.mark.slow
def test_thousands_of_generated_requests_never_get_a_server_error(api_schema):
    counts = fuzz(api_schema, 600)
    print(f"fuzz: {counts}")
    assert counts["cases"] >= 2000
