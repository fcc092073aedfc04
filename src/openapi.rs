//! The OpenAPI document of the HTTP API, built here and committed as openapi/openapi.json
//! (`eigenprune openapi > openapi/openapi.json`; tests/openapi.rs fails when it is stale and
//! checks that every documented route is served).

use serde_json::{json, Value};

/// (path, method, summary, request schema, success schema)
pub const OPERATIONS: &[(&str, &str, &str, Option<&str>, &str)] = &[
    ("/health", "get", "The process answers", None, "Status"),
    (
        "/ready",
        "get",
        "Database and object store reachable (503 when not)",
        None,
        "Readiness",
    ),
    ("/metrics", "get", "Prometheus metrics (text)", None, "Text"),
    (
        "/v1/pruning/jobs",
        "post",
        "Create a pruning job",
        Some("CreatePruningJob"),
        "Job",
    ),
    (
        "/v1/pruning/jobs",
        "get",
        "List pruning jobs, newest first (?after=&limit=)",
        None,
        "JobList",
    ),
    ("/v1/pruning/jobs/{id}", "get", "A pruning job", None, "Job"),
    (
        "/v1/pruning/jobs/{id}/cancel",
        "post",
        "Cancel (queued: at once; running: between batches)",
        None,
        "Job",
    ),
    (
        "/v1/pruning/jobs/{id}/events",
        "get",
        "Progress events of a job",
        None,
        "EventList",
    ),
    (
        "/v1/evaluations",
        "post",
        "Create an evaluation job",
        Some("CreateEvaluation"),
        "Job",
    ),
    (
        "/v1/evaluations/{id}",
        "get",
        "An evaluation job",
        None,
        "Job",
    ),
    (
        "/v1/models",
        "get",
        "Base models and pruned variants",
        None,
        "ModelList",
    ),
    ("/v1/models/{id}", "get", "A model", None, "Model"),
    (
        "/v1/models/{id}",
        "delete",
        "Delete a pruned variant",
        None,
        "Deleted",
    ),
    (
        "/v1/completions",
        "post",
        "OpenAI-compatible completions",
        Some("CompletionRequest"),
        "Completion",
    ),
    (
        "/v1/datasets",
        "post",
        "Upload a JSONL data set (body: JSONL; ?name=)",
        Some("Jsonl"),
        "Dataset",
    ),
    ("/v1/datasets", "get", "List data sets", None, "DatasetList"),
    ("/v1/datasets/{id}", "get", "A data set", None, "Dataset"),
];

fn schemas() -> Value {
    let obj = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
    let job_or_null = json!({"type": ["object", "null"]});
    json!({
        "Error": obj(json!({"error": obj(json!({"code": {"type": "string"}, "message": {"type": "string"}, "type": {"type": "string"}}), &["code", "message"])}), &["error"]),
        "Hyperparameters": obj(json!({
            "portion": {"oneOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "string", "enum": ["auto"]}], "default": 0.2},
            "batch_size": {"type": "integer", "minimum": 2, "default": 5},
            "components": {"type": "array", "items": {"type": "string", "enum": ["k", "q", "v", "o", "mlp_in", "mlp_out"]}, "default": ["k"]},
            "method": {"type": "string", "enum": ["attribution", "random", "smallest"], "default": "attribution"},
            "input": {"type": "string", "enum": ["normed", "resid_pre"], "default": "normed"},
            "aggregate": {"type": "string", "enum": ["max", "mean", "mean_abs"], "default": "max"},
            "bias": {"type": "string", "enum": ["mean", "none"], "default": "mean"},
            "seed": {"type": "integer", "default": 42},
            "scoring_batches": {"type": ["integer", "null"], "minimum": 1},
            "eval_batch_size": {"type": "integer", "default": 16},
            "finetune": {"oneOf": [{"type": "null"}, obj(json!({
                "epochs": {"type": "integer", "minimum": 1}, "lr": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "batch_size": {"type": "integer", "minimum": 1, "default": 8}, "weight_decay": {"type": "number", "minimum": 0, "default": 0.01}
            }), &["epochs", "lr"])], "default": null}
        }), &[]),
        "CreatePruningJob": obj(json!({
            "model": {"type": "string"}, "task": {"type": "string", "enum": ["int-sum", "int-mult", "cb", "copa", "rte"]},
            "dataset": {"type": "string"}, "hyperparameters": {"$ref": "#/components/schemas/Hyperparameters"},
            "suffix": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
        }), &["model"]),
        "CreateEvaluation": obj(json!({"model": {"type": "string"}, "task": {"type": "string"}, "dataset": {"type": "string"},
                                       "split": {"type": "string", "enum": ["test", "train"], "default": "test"}}), &["model"]),
        "Job": obj(json!({
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["pruning.job", "evaluation"]},
            "model": {"type": "string"}, "task": {"type": ["string", "null"]}, "dataset": {"type": ["string", "null"]},
            "hyperparameters": {"$ref": "#/components/schemas/Hyperparameters"},
            "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
            "created_at": {"type": "integer"}, "started_at": {"type": ["integer", "null"]}, "finished_at": {"type": ["integer", "null"]},
            "pruned_model": {"type": ["string", "null"]}, "result": job_or_null, "error": job_or_null
        }), &["id", "object", "model", "status", "created_at"]),
        "JobList": obj(json!({"object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}, "has_more": {"type": "boolean"}}), &["data", "has_more"]),
        "EventList": obj(json!({"data": {"type": "array", "items": obj(json!({"id": {"type": "integer"}, "phase": {"type": "string"}, "fraction": {"type": "number"}, "message": {"type": "string"}, "created_at": {"type": "integer"}}), &["phase", "fraction"])}}), &["data"]),
        "Model": obj(json!({"id": {"type": "string"}, "object": {"const": "model"}, "parent": {"type": ["string", "null"]}, "owned_by": {"type": "string"}}), &["id", "object"]),
        "ModelList": obj(json!({"data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}), &["data"]),
        "Deleted": obj(json!({"id": {"type": "string"}, "deleted": {"type": "boolean"}}), &["id", "deleted"]),
        "CompletionRequest": obj(json!({
            "model": {"type": "string"},
            "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "array", "items": {"type": "integer"}}, {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]},
            "max_tokens": {"type": "integer", "default": 16, "maximum": 2048}, "temperature": {"type": "number", "default": 1.0},
            "top_p": {"type": "number", "default": 1.0}, "seed": {"type": "integer"}, "n": {"type": "integer", "default": 1, "maximum": 8},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "echo": {"type": "boolean", "default": false}, "logprobs": {"type": "integer", "maximum": 20},
            "stream": {"type": "boolean", "default": false, "description": "Server-Sent Events: text deltas, then `data: [DONE]`; not with logprobs or echo"},
            "stream_options": obj(json!({"include_usage": {"type": "boolean", "default": false}}), &[])
        }), &["model", "prompt"]),
        "Completion": obj(json!({"id": {"type": "string"}, "object": {"const": "text_completion"}, "model": {"type": "string"},
            "choices": {"type": "array", "items": obj(json!({"text": {"type": "string"}, "index": {"type": "integer"}, "finish_reason": {"type": "string"}}), &["text", "index"])},
            "usage": obj(json!({"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}), &[])}), &["choices"]),
        "Jsonl": {"type": "string", "description": "rows of {\"prompt\", \"answer\"} or {\"prompt\", \"choices\", \"label\"}"},
        "Dataset": obj(json!({"id": {"type": "string"}, "name": {"type": "string"}, "rows": {"type": "integer"}, "bytes": {"type": "integer"}}), &["id", "rows"]),
        "DatasetList": obj(json!({"data": {"type": "array", "items": {"$ref": "#/components/schemas/Dataset"}}}), &["data"]),
        "Status": obj(json!({"status": {"type": "string"}}), &["status"]),
        "Readiness": obj(json!({"database": {"type": "boolean"}, "object_store": {"type": "boolean"}}), &["database", "object_store"]),
        "Text": {"type": "string"},
        "Binary": {"type": "string", "format": "binary"}
    })
}

pub fn spec() -> Value {
    let mut paths = serde_json::Map::new();
    for (path, method, summary, request, response) in OPERATIONS {
        let mut op = json!({
            "summary": summary,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{response}")}}}},
                "4XX": {"description": "Bad input, with a stable code", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if let Some(r) = request {
            let media = if *r == "Jsonl" {
                "application/jsonl"
            } else {
                "application/json"
            };
            op["requestBody"] = json!({"required": true, "content": {media: {"schema": {"$ref": format!("#/components/schemas/{r}")}}}});
        }
        if path.contains("{id}") {
            op["parameters"] = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "eigenprune", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Eigenpruning jobs, pruned variants, completions and evaluations."},
        "paths": paths,
        "components": {"schemas": schemas()}
    })
}
