"""Every operation of the live /openapi.json, with positive and negative data.

Two properties, kept apart so that one cannot hide the other (schemathesis stops an
operation at its first failing case): no answer is a server error and every answer matches
its documented body and content type; and every status code that comes back is documented.
"""

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Each test walks every operation in one pytest item (about 20 s when it passes): the cap
# keeps the tier within its 4-minute CI budget and fails loudly if it ever grows past it.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(100)]

# The event streams answer text/event-stream and the project's stays open: a fuzz case would
# wait on it forever. tests/acceptance/test_events.py covers them, bad ids included.
schema = schemathesis.pytest.from_fixture("fuzz_schema").exclude(path_regex=r"/events$")


@schema.parametrize()
def test_no_server_error_and_conforming_answers(
    case: schemathesis.Case, fuzz_headers: dict[str, str]
) -> None:
    case.call_and_validate(
        headers=fuzz_headers,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )


@schema.parametrize()
def test_status_codes_documented(case: schemathesis.Case, fuzz_headers: dict[str, str]) -> None:
    case.call_and_validate(headers=fuzz_headers, checks=[status_code_conformance])
