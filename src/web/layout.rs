//! The page shell: semantic HTML, one inline style sheet (no CDN, nothing to build), the
//! navigation, and the small script that makes lists and progress live.

use maud::{html, Markup, PreEscaped, DOCTYPE};

const STYLE: &str = include_str!("../../assets/dashboard/style.css");
/// Live updates (SSE), the playground's streams; the pages read fine without it.
pub const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");

/// Who is signed in, for the header (None: the server runs without keys).
pub struct Viewer<'a> {
    pub user: &'a str,
    pub signed_in: bool,
}

/// The document's head: the style inline, the script only for pages of the service.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) }
            style { (PreEscaped(STYLE)) }
            @if script { script src="/ui/dashboard.js" defer {} }
        }
    }
}

/// A page of the service.
pub fn page(title: &str, viewer: &Viewer, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&format!("{title} · eigenprune"), true))
            body {
                header {
                    nav aria-label="main" {
                        a class="brand" href="/" { "eigenprune" }
                        a href="/" { "Jobs" }
                        a href="/variants" { "Variants" }
                        a href="/evaluations" { "Evaluations" }
                        a href="/docs" { "API" }
                        span class="who" {
                            (viewer.user)
                            @if viewer.signed_in {
                                form method="post" action="/signout" class="inline" { button type="submit" { "Sign out" } }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page that stands alone as a file (the CLI's `--report`): the same style, no links.
pub fn standalone(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body { main { (body) } }
        }
    }
}
