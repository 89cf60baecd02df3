#!/usr/bin/env bash
# Property-based API testing of the release server against its own /openapi.json
# (`make schemathesis`): schemathesis generates requests for every documented operation —
# valid and invalid — and checks every answer (no 5xx, documented status, documented content
# type and headers, body matches the schema, invalid input refused, valid input accepted).
#
#   scripts/schemathesis.sh                       # 30 examples per operation, killed at 15 min
#   SCHEMATHESIS_EXAMPLES=100 scripts/schemathesis.sh
#   scripts/schemathesis.sh --include-path-regex '^/v1/series'   # extra schemathesis flags
#
# Installs schemathesis (and openapi-spec-validator, which checks the document first) into a
# venv under target/ from PyPI, starts the release server on a free loopback port in mock mode
# with a temporary data dir, and stops it afterwards. Nothing is excluded;
# scripts/schemathesis.toml says which operations may also answer 400 to a schema-valid
# request, and why. Reports (JUnit XML, and a pytest file reproducing each failure) go to
# target/schemathesis/. Variables: SCHEMATHESIS_EXAMPLES (30), SCHEMATHESIS_SEED (1),
# SCHEMATHESIS_MAX_TIME (900 s, a hard bound), DALLESERVER_BIN (skip the build, use this binary).
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV=target/schemathesis-venv
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-30}
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-900}
REPORT=target/schemathesis

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION" ||
    ! "$VENV/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$VERSION" "openapi-spec-validator==0.9.*"
fi

# The document itself first: valid OpenAPI 3.1 (the file is written by hand).
"$VENV/bin/python" -c 'import json, sys
from openapi_spec_validator import validate
validate(json.load(open(sys.argv[1])))
print("src/http/openapi.json: valid OpenAPI", file=sys.stderr)' src/http/openapi.json

# shellcheck source=lib/server.sh
. scripts/lib/server.sh
# Mock images only, even if the caller's shell has a key (the environment is scrubbed anyway).
start_server

mkdir -p "$REPORT"
status=0
# timeout(1) bounds the run (schemathesis' own --max-time would instead keep fuzzing until
# the budget is spent).
timeout --kill-after=30 "$MAX_TIME" \
    "$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$BASE/openapi.json" \
    --checks all \
    --max-examples "$EXAMPLES" \
    --request-timeout 30 \
    --workers 1 \
    --seed "${SCHEMATHESIS_SEED:-1}" \
    --report junit,pytest --report-dir "$REPORT" \
    "$@" || status=$?

if grep -q "panicked" "$WORK/server.log"; then
    echo "!! the server panicked:" >&2
    grep -A5 "panicked" "$WORK/server.log" >&2
    status=1
fi
exit $status
