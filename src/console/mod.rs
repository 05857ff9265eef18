//! The console: a page served at `/` on the HTTP listener that watches tagged messages live.
//!
//! Static files compiled into the binary (`index.html`, `console.js`, `console.css`, and
//! `socket-worker.js`, which holds the WebSocket off the page's main thread); no build step,
//! nothing fetched from elsewhere. The page talks only to
//! `/subscribe/websocket` on the address it came from, with the token the user types or the
//! one in the `#token=` fragment (which browsers never send, so it never reaches a log).
//!
//! Every response carries a strict Content-Security-Policy (no inline script or style, and
//! connections only to this origin), `nosniff`, and an `ETag` computed at compile time from
//! the file, so a browser revalidates cheaply (`304`) and sees a new binary's page at once.
//!
//! [`response`] is pure: the HTTP listener hands it a path and the request headers.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

/// The page's Content-Security-Policy: scripts, styles and connections from this origin only
/// (`connect-src 'self'` also admits `ws:` to the same host and port); no inline code, no
/// plugins, no forms posting anywhere, no framing by other sites.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// One file of the console.
#[derive(Debug)]
pub struct Asset {
    /// The request path it is served at.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
    /// A hash of `body`, the core of its `ETag`.
    pub hash: u64,
}

impl Asset {
    const fn new(path: &'static str, content_type: &'static str, body: &'static str) -> Asset {
        Asset {
            path,
            content_type,
            body,
            hash: fnv1a(body.as_bytes()),
        }
    }

    /// The strong entity tag: `"` + 16 hex digits + `"`.
    pub fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

/// Every file of the console, by path.
pub const ASSETS: [Asset; 4] = [
    Asset::new("/", "text/html; charset=utf-8", include_str!("index.html")),
    Asset::new(
        "/console.js",
        "text/javascript; charset=utf-8",
        include_str!("console.js"),
    ),
    Asset::new(
        "/console.css",
        "text/css; charset=utf-8",
        include_str!("console.css"),
    ),
    Asset::new(
        "/socket-worker.js",
        "text/javascript; charset=utf-8",
        include_str!("socket-worker.js"),
    ),
];

/// The console file served at `path`, if any.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The response to `GET path` when `path` is one of the console's files: `200` with the file,
/// or `304` without a body when `If-None-Match` names its current `ETag`. `None` for any other
/// path. `Content-Length` and `Connection` are the listener's business.
pub fn response(path: &str, headers: &HeaderMap) -> Option<Response<&'static str>> {
    let asset = asset(path)?;
    let etag = asset.etag();
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| etag_matches(v, &etag)));
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, "")
    } else {
        (StatusCode::OK, asset.body)
    };
    let response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, asset.content_type)
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header("cross-origin-resource-policy", "same-origin")
        .header("cross-origin-opener-policy", "same-origin")
        // Revalidate every time: cheap with the ETag, and a new binary's page shows at once.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(
            header::ETAG,
            HeaderValue::from_str(&etag).expect("hex digits are a valid header value"),
        )
        .body(body)
        .expect("static headers are valid");
    Some(response)
}

/// Whether an `If-None-Match` value names `etag`: `*`, or a comma-separated list of entity
/// tags compared weakly (a `W/` prefix is ignored), as RFC 9110 asks for `If-None-Match`.
fn etag_matches(value: &str, etag: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// 64-bit FNV-1a: small enough for a `const fn`, so each file's tag is fixed at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, if_none_match: Option<&str>) -> Option<Response<&'static str>> {
        let mut headers = HeaderMap::new();
        if let Some(v) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        }
        response(path, &headers)
    }

    fn header<'a>(r: &'a Response<&str>, name: &str) -> &'a str {
        r.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
    }

    #[test]
    fn routes_the_console_files_and_nothing_else() {
        let page = get("/", None).unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
        assert!(page.body().contains(r#"<script src="/console.js""#));
        assert!(page.body().contains(r#"href="/console.css""#));
        let js = get("/console.js", None).unwrap();
        assert_eq!(
            header(&js, "content-type"),
            "text/javascript; charset=utf-8"
        );
        assert!(js.body().contains("/subscribe/websocket"));
        let css = get("/console.css", None).unwrap();
        assert_eq!(header(&css, "content-type"), "text/css; charset=utf-8");
        assert!(css.body().contains("prefers-color-scheme: dark"));
        let worker = get("/socket-worker.js", None).unwrap();
        assert_eq!(
            header(&worker, "content-type"),
            "text/javascript; charset=utf-8"
        );
        assert!(worker.body().contains("new WebSocket"));
        for other in [
            "",
            "/index.html",
            "/console.js/",
            "/CONSOLE.JS",
            "//",
            "/console",
            "/favicon.ico",
            "/ping",
            "/subscribe/websocket",
            "/../console.js",
        ] {
            assert!(
                get(other, None).is_none(),
                "{other:?} is not a console file"
            );
        }
    }

    #[test]
    fn every_file_carries_the_security_headers() {
        for a in &ASSETS {
            let r = get(a.path, None).unwrap();
            assert_eq!(header(&r, "content-security-policy"), CSP);
            assert_eq!(header(&r, "x-content-type-options"), "nosniff");
            assert_eq!(header(&r, "etag"), a.etag());
            assert_eq!(header(&r, "cache-control"), "no-cache");
        }
        // The policy forbids inline code and talks only to its own origin.
        assert!(CSP.contains("script-src 'self';"));
        assert!(CSP.contains("connect-src 'self';"));
        assert!(!CSP.contains("unsafe"));
    }

    /// The CSP forbids inline script and style: the page must not need any.
    #[test]
    fn the_page_has_no_inline_code() {
        let html = asset("/").unwrap().body.to_ascii_lowercase();
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains(r#"<script src="/console.js" defer></script>"#));
        assert!(!html.contains("<style"));
        assert!(!html.contains(" style="));
        assert!(
            !has_handler_attribute(&html),
            "no inline event handler attributes"
        );
        assert!(!html.contains("javascript:"));
        for path in ["/console.js", "/socket-worker.js"] {
            let js = asset(path).unwrap().body;
            assert!(!js.contains("innerHTML"), "data is shown as text only");
            assert!(!js.contains("insertAdjacentHTML"));
            assert!(!js.contains("eval("));
        }
    }

    /// Whether `html` has an attribute like ` onclick=`.
    fn has_handler_attribute(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let name: String = html[i + 3..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            !name.is_empty() && html[i + 3 + name.len()..].starts_with('=')
        })
    }

    #[test]
    fn revalidation_answers_304_without_a_body() {
        let tag = asset("/").unwrap().etag();
        assert_eq!(tag.len(), 18);
        for inm in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"other\", {tag}"),
            "*".to_string(),
        ] {
            let r = get("/", Some(&inm)).unwrap();
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{inm}");
            assert_eq!(*r.body(), "");
            assert_eq!(header(&r, "etag"), tag);
        }
        for inm in ["\"other\"", "", &asset("/console.js").unwrap().etag()] {
            let r = get("/", Some(inm)).unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{inm}");
        }
    }

    #[test]
    fn tags_differ_between_files_and_follow_the_content() {
        let tags: Vec<String> = ASSETS.iter().map(Asset::etag).collect();
        assert_ne!(tags[0], tags[1]);
        assert_ne!(tags[1], tags[2]);
        assert_ne!(tags[1], tags[3]);
        // Known FNV-1a values, so the hash is the one documented.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
