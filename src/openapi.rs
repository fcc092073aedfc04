//! The OpenAPI document, generated from the handlers' own types by [`crate::app::routes`] and
//! committed as openapi/openapi.json (`eigenprune openapi > openapi/openapi.json`;
//! tests/openapi.rs fails when the committed copy is stale).

use serde_json::Value;

pub fn spec() -> Value {
    serde_json::to_value(crate::app::openapi()).expect("the OpenAPI document serialises")
}
