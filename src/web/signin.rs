//! Sign-in with an API key (kept server-side; the browser holds a session id), and sign-out.

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::{layout, session};
use crate::app::AppState;
use crate::identity::key_hash;
use crate::lab::AuthMode;

#[derive(Deserialize)]
pub struct SignIn {
    key: String,
}

fn signin_page(message: Option<&str>, open: bool) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if open {
            p { "This server runs without keys (" code { "--auth none" } "): " a href="/" { "go to the jobs" } "." }
        } @else {
            p { "Sign in with your API key (" code { "ep-..." } "). It stays on the server; your browser keeps only a session cookie." }
            form id="signin-form" class="stack" method="post" action="/signin" {
                @if let Some(m) = message { p class="error field-error" role="alert" id="key-error" { (m) } }
                div class="field" {
                    label for="key" { "API key" }
                    input id="key" name="key" type="password" autocomplete="off" required
                        aria-invalid=[message.map(|_| "true")] aria-describedby=[message.map(|_| "key-error")];
                }
                button type="submit" { "Sign in" }
            }
        }
    };
    Html(layout::standalone("Sign in · eigenprune", body).into_string()).into_response()
}

pub async fn form(State(state): State<AppState>) -> Response {
    signin_page(None, state.auth == AuthMode::None)
}

pub async fn submit(State(state): State<AppState>, Form(f): Form<SignIn>) -> Response {
    let key = f.key.trim();
    let hash = key_hash(key);
    let known = !key.is_empty()
        && key.len() <= 256
        && matches!(state.db.key_by_hash(&hash).await, Ok(Some(_)));
    if !known {
        let mut r = signin_page(
            Some("That key is not valid (unknown, revoked or mistyped)."),
            false,
        );
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let id = state.sessions.open(hash);
    (
        [(header::SET_COOKIE, session::cookie(Some(&id)))],
        Redirect::to("/"),
    )
        .into_response()
}

pub async fn signout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = session::session_id(&headers) {
        state.sessions.close(id);
    }
    (
        [(header::SET_COOKIE, session::cookie(None))],
        Redirect::to("/signin"),
    )
        .into_response()
}
