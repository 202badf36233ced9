#!/usr/bin/env bash
# Contract check of a running hub's HTTPS API against its own OpenAPI document:
#   1. openapi-spec-validator: the served document is valid OpenAPI 3.1;
#   2. schemathesis: property-based requests to every operation, failing on any 5xx, an undeclared status code,
#      a body that does not match the declared schema, a wrong Content-Type, or a request the schema refuses
#      that the hub accepts (negative data must get a 4xx: the request schemas are never looser than the hub).
#
# Usage: ci/api-fuzz.sh BASE_URL CA_FILE [TOKEN]
#   BASE_URL  e.g. https://localhost:8443 (a host name in the server certificate)
#   CA_FILE   the hub's {data_dir}/tls/server-ca.pem
#   TOKEN     operator token (hop_...): the run is authenticated; without it the run is anonymous
# Env: VENV (default target/api-venv; created from ci/requirements-api.txt if missing),
#      MAX_EXAMPLES (default 30 per operation), SEED (default 1), REPORT_DIR (default target/api-fuzz).
# Exit: 0 clean; non-zero on any failure (schemathesis: 1 = failures found, 2 = could not run).
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 BASE_URL CA_FILE [TOKEN]" >&2; exit 2; }
BASE_URL=${1%/} CA_FILE=$(realpath "$2") TOKEN=${3:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/target/api-venv}
REPORT_DIR=${REPORT_DIR:-$ROOT/target/api-fuzz}

# Pinned, hash-checked tools (same set everywhere).
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --require-hashes -r "$ROOT/ci/requirements-api.txt"
fi

# 1. Fetch the served document (trusting only the hub's CA) and validate it as OpenAPI 3.1.
mkdir -p "$REPORT_DIR"
SPEC=$REPORT_DIR/openapi.json
curl -sSf --cacert "$CA_FILE" -o "$SPEC" "$BASE_URL/api/v1/openapi.json"
"$VENV/bin/openapi-spec-validator" --schema 3.1 --validation-errors all "$SPEC"

# 2. Fuzz. Owner run with the token, anonymous run without (operator endpoints must then declare their 401).
if [ -n "$TOKEN" ]; then AUTH=(-H "Authorization: Bearer $TOKEN"); NAME=owner; else AUTH=(); NAME=anonymous; fi
# Bounded and reproducible: --max-examples per operation and a fixed --seed, one worker, no --max-time
# (with --max-time schemathesis repeats the fuzzing phase until the budget is spent).
# Excluded: revoking tokens could revoke the run's own token (renew runs; without a client certificate it answers 401).
# (From the report directory: schemathesis keeps a `.schemathesis/` cache in its working directory.)
cd "$REPORT_DIR"
timeout 1200 "$VENV/bin/schemathesis" run "$SPEC" \
    --url "$BASE_URL" \
    --tls-verify "$CA_FILE" \
    "${AUTH[@]}" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --max-examples "${MAX_EXAMPLES:-30}" --seed "${SEED:-1}" --workers 1 --continue-on-failure \
    --request-timeout 10 --generation-database none \
    --exclude-path-regex '^/api/v1/tokens/\{id\}/revoke$' \
    --report junit --report-junit-path "$REPORT_DIR/junit-$NAME.xml" \
    --no-color
