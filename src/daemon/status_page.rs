//! `GET /`: the status page. Plain HTML, CSS and a little JavaScript, built into the binary
//! (`status_page/`): it reads `/status`, `/connections` and `/metrics` from the same admin
//! listener every few seconds and fetches nothing from anywhere else (its Content-Security-Policy
//! says so to the browser too). Read-only: closing a connection stays a POST with the token.

use super::admin::Response;

const INDEX: &str = include_str!("status_page/index.html");
const STYLE: &str = include_str!("status_page/style.css");
const SCRIPT: &str = include_str!("status_page/app.js");

/// The paths the page is made of.
pub(super) fn serves(path: &str) -> bool {
    asset_for(path).is_some()
}

fn asset_for(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX)),
        "/ui/style.css" => Some(("text/css; charset=utf-8", STYLE)),
        "/ui/app.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        _ => None,
    }
}

pub(super) fn asset(path: &str) -> Response {
    match asset_for(path) {
        Some((content_type, body)) => Response {
            status: 200,
            content_type,
            body: body.to_string(),
        },
        None => Response::text(404, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        for path in ["/", "/ui/style.css", "/ui/app.js"] {
            assert!(serves(path), "{path}");
        }
        assert!(!serves("/ui/other.js"));
        for text in [INDEX, STYLE, SCRIPT] {
            for outside in ["http://", "https://", "//cdn", "@import"] {
                let found = text
                    .lines()
                    .filter(|l| l.contains(outside))
                    // The footer shows a curl command; it is text, not something loaded.
                    .filter(|l| !l.contains("curl "))
                    .collect::<Vec<_>>();
                assert!(found.is_empty(), "{outside} in a page file: {found:?}");
            }
        }
        assert!(INDEX.contains("src=\"/ui/app.js\"") && INDEX.contains("href=\"/ui/style.css\""));
        assert!(
            !SCRIPT.contains("innerHTML"),
            "text goes in through textContent"
        );
    }
}
