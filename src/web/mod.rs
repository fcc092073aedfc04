//! The dashboard, served by `eigenprune serve` at `/`: server-rendered HTML over the same
//! handlers, validation and visibility rules as the JSON API (a page calls the API's handler,
//! never its own copy), SVG charts drawn here, and one small script for live updates.

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};

use crate::app::AppState;
use crate::http::error::ApiError;
use crate::identity::Caller;
use crate::lab::AuthMode;

pub mod charts;
mod evaluation_pages;
pub mod job_form;
pub mod job_page;
mod jobs_pages;
pub mod layout;
pub mod session;
mod signin;
pub mod stats;
mod variant_pages;
pub mod views;

/// Paths of the dashboard's pages: without a session they redirect to the sign-in page rather
/// than answering the API's 401.
pub fn is_page(path: &str) -> bool {
    path == "/"
        || path == "/signout"
        || ["/jobs", "/variants", "/evaluations"]
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(jobs_pages::list))
        .route(
            "/jobs/new",
            get(jobs_pages::new_form).post(jobs_pages::submit),
        )
        .route("/jobs/{id}", get(jobs_pages::job))
        .route("/variants", get(variant_pages::list))
        .route("/variants/{id}", get(variant_pages::variant))
        .route(
            "/evaluations",
            get(evaluation_pages::list).post(evaluation_pages::submit),
        )
        .route("/evaluations/{id}", get(evaluation_pages::evaluation))
        .route("/signin", get(signin::form).post(signin::submit))
        .route("/signout", post(signin::signout))
        .route("/jobs/{id}/cancel", post(jobs_pages::cancel))
        .route("/ui/dashboard.js", get(script))
        .route_layer(axum::middleware::from_fn(same_origin_posts))
}

/// A form posted from another site is refused (403): the session cookie is SameSite=Strict,
/// but a server on 127.0.0.1 without keys has no cookie to withhold.
async fn same_origin_posts(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST && cross_site(req.headers()) {
        return ApiError::forbidden("cross_site_form", "this form was posted from another site")
            .into_response();
    }
    next.run(req).await
}

/// Whether the browser says the request comes from another origin (Sec-Fetch-Site, else
/// Origin against Host).
fn cross_site(headers: &axum::http::HeaderMap) -> bool {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, h)| h) != Some(host),
        _ => false,
    }
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        layout::SCRIPT,
    )
        .into_response()
}

/// A whole page for `caller`.
fn page(state: &AppState, caller: &Caller, title: &str, body: Markup) -> Response {
    let viewer = layout::Viewer {
        user: &caller.user,
        signed_in: state.auth != AuthMode::None,
    };
    Html(layout::page(title, &viewer, body).into_string()).into_response()
}

/// An API error as a page, with the API's status and code.
fn error_page(state: &AppState, caller: &Caller, e: ApiError) -> Response {
    let status = e.status;
    let mut r = page(
        state,
        caller,
        "Error",
        html! {
            h1 { "Not possible" }
            p class="error" role="alert" { (e.message) " " code { "(" (e.code) ")" } }
            p { a href="/" { "Back to the jobs" } }
        },
    );
    *r.status_mut() = status;
    r
}

/// A page with a status other than 200 (a form shown again with its errors).
fn with_status(mut r: Response, status: StatusCode) -> Response {
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::cross_site;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forms_from_other_sites_are_told_apart() {
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(!cross_site(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        // Not a browser (curl, the tests' client): nothing to judge by.
        assert!(!cross_site(&HeaderMap::new()));
    }
}
