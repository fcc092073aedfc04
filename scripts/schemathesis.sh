#!/usr/bin/env bash
# schemathesis on the generated OpenAPI document against a live `eigenprune serve` (the tiny
# llama fixture, SQLite), with real ids seeded: a data set, a pruning job run to success, its
# variant and an evaluation. Fails on any 5xx or any response that breaks the document's schema.
# Usage: scripts/schemathesis.sh [BIN] [MAX_EXAMPLES]   (needs `pip install schemathesis`)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/eigenprune}
MAX_EXAMPLES=${2:-25}
ST=${ST:-python3 -m schemathesis.cli}
PORT=${PORT:-18571}
BASE="http://127.0.0.1:$PORT"
DIR=$(mktemp -d)
"$BIN" serve --preload "llama=tests/fixtures/llama" --data-dir "$DIR" --bind "127.0.0.1:$PORT" \
  --workers 1 >"$DIR/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
[ -x "$BIN" ] || { echo "no eigenprune binary at $BIN"; exit 1; }
up=0
for _ in $(seq 100); do curl -sf "$BASE/health" >/dev/null && { up=1; break; }; sleep 0.2; done
[ "$up" = 1 ] || { echo "the server did not start:"; cat "$DIR/serve.log"; exit 1; }

field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
rows=$(for i in $(seq 0 9); do echo "{\"prompt\": \"$i x 7 =\", \"answer\": \" $((i * 7))\"}"; done)
export DATASET_ID=$(printf '%s\n' "$rows" | curl -sf "$BASE/v1/datasets?name=seed" \
  -H 'content-type: application/jsonl' --data-binary @- | field '["id"]')
export JOB_ID=$(curl -sf "$BASE/v1/pruning/jobs" -H 'content-type: application/json' \
  -d "{\"model\": \"llama\", \"dataset\": \"$DATASET_ID\", \"hyperparameters\": {\"batch_size\": 2}}" | field '["id"]')
for _ in $(seq 300); do
  status=$(curl -sf "$BASE/v1/pruning/jobs/$JOB_ID" | field '["status"]')
  [ "$status" = succeeded ] && break
  [ "$status" = failed ] && { echo "seed job failed"; exit 1; }
  sleep 0.2
done
export VARIANT_ID=$(curl -sf "$BASE/v1/pruning/jobs/$JOB_ID" | field '["pruned_model"]')
export EVAL_ID=$(curl -sf "$BASE/v1/evaluations" -H 'content-type: application/json' \
  -d "{\"model\": \"$VARIANT_ID\", \"dataset\": \"$DATASET_ID\"}" | field '["id"]')
for v in "$DATASET_ID" "$JOB_ID" "$VARIANT_ID" "$EVAL_ID"; do
  case "$v" in ""|None) echo "seeding failed"; cat "$DIR/serve.log"; exit 1 ;; esac
done
echo "seeded: dataset $DATASET_ID, job $JOB_ID, variant $VARIANT_ID, evaluation $EVAL_ID"

cat >"$DIR/schemathesis.toml" <<TOML
# Bodies mostly name things that exist, so that requests reach the models and the jobs.
[dictionaries.models]
values = ["llama", "\${VARIANT_ID}"]
[dictionaries.datasets]
values = ["\${DATASET_ID}"]
[parameters]
"body.model" = { dictionary = "models", probability = 0.9 }
"body.dataset" = { dictionary = "datasets", probability = 0.5 }

[[operations]]
include-path-regex = "^/v1/pruning/jobs/\\\\{id\\\\}"
parameters = { "path.id" = "\${JOB_ID}" }
[[operations]]
include-path = "/v1/evaluations/{id}"
parameters = { "path.id" = "\${EVAL_ID}" }
[[operations]]
include-path = "/v1/datasets/{id}"
parameters = { "path.id" = "\${DATASET_ID}" }
[[operations]]
include-path-regex = "^/v1/models/\\\\{id\\\\}"
parameters = { "path.id" = "\${VARIANT_ID}" }
TOML
$ST --config-file "$DIR/schemathesis.toml" run "$BASE/openapi.json" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "$MAX_EXAMPLES" --seed 1 --workers 1 --request-timeout 60
