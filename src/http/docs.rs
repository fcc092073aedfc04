//! GET /docs: the API's reference, rendered in the browser by RapiDoc from /openapi.json. The
//! renderer is served from the binary (assets/rapidoc, gzip as published), so the page works
//! without internet access.

use axum::http::header;
use axum::response::{Html, IntoResponse};

const RAPIDOC_GZ: &[u8] = include_bytes!("../../assets/rapidoc/rapidoc-min.js.gz");

pub async fn page() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>eigenprune API</title>
<script type="module" src="/docs/rapidoc-min.js"></script>
</head>
<body>
<rapi-doc spec-url="/openapi.json" render-style="read" show-header="false" allow-try="true"></rapi-doc>
<noscript>The API reference needs JavaScript; the document itself is at <a href="/openapi.json">/openapi.json</a>.</noscript>
</body>
</html>
"#,
    )
}

pub async fn rapidoc() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CONTENT_ENCODING, "gzip"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        RAPIDOC_GZ,
    )
}
