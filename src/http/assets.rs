//! The browser client, the demo app and the bench page, embedded in the
//! binary so the gateway is one file to deploy.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const CALL_JS: &str = include_str!("../../web/call.js");
const CLIENT_JS: &str = include_str!("../../web/client.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");
const BENCH_HTML: &str = include_str!("../../web/bench.html");
const BENCH_JS: &str = include_str!("../../web/bench.js");
const ROOM_HTML: &str = include_str!("../../web/room.html");
const ROOM_JS: &str = include_str!("../../web/room.js");

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const COOP: &str = "cross-origin-opener-policy";
const COEP: &str = "cross-origin-embedder-policy";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
}

/// The bench page is cross-origin isolated: Chromium then gives
/// `performance.now()` 5 µs resolution instead of 100 µs, which matters for
/// round trips of a fraction of a millisecond. It loads nothing from other
/// origins, so isolation costs it nothing.
fn isolated_page(body: &'static str) -> impl IntoResponse {
    (
        [(COOP, "same-origin"), (COEP, "require-corp")],
        asset(HTML, body),
    )
}

/// `/`, `/client.js`, `/app.js`, `/call.js`, `/style.css`, `/bench`, `/bench.js`,
/// `/room`, `/room.js`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset(HTML, INDEX_HTML) }))
        .route("/client.js", get(|| async { asset(JS, CLIENT_JS) }))
        .route("/app.js", get(|| async { asset(JS, APP_JS) }))
        .route("/call.js", get(|| async { asset(JS, CALL_JS) }))
        .route("/style.css", get(|| async { asset(CSS, STYLE_CSS) }))
        .route("/bench", get(|| async { isolated_page(BENCH_HTML) }))
        .route("/bench.js", get(|| async { asset(JS, BENCH_JS) }))
        .route("/room", get(|| async { asset(HTML, ROOM_HTML) }))
        .route("/room.js", get(|| async { asset(JS, ROOM_JS) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get_headers(path: &str) -> axum::http::HeaderMap {
        let response = routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.headers().clone()
    }

    #[tokio::test]
    async fn bench_page_is_cross_origin_isolated() {
        let page = get_headers("/bench").await;
        assert_eq!(page[CONTENT_TYPE], HTML);
        assert_eq!(page[COOP], "same-origin");
        assert_eq!(page[COEP], "require-corp");
        assert_eq!(get_headers("/bench.js").await[CONTENT_TYPE], JS);
        // Only the bench page opts in.
        let demo = get_headers("/").await;
        assert!(!demo.contains_key(COOP));
    }
}
