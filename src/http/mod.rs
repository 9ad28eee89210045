//! The HTTP side of the gateway (axum): the REST API, the admin
//! routes, the embedded web app, and the WebSocket transport.

mod api;
mod args;
mod assets;
mod ops;
mod read_ahead;
mod serve;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method, request::Parts};
use axum::middleware;
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::{Client, OriginPolicy, OriginVerdict, ProxyPolicy};
use crate::core::Hub;
use crate::core::wire::HttpError;

pub(crate) use api::error_response;
pub use args::HttpArgs;
pub use ops::{
    DEFAULT_LOG_FILTER, LogFormat, OperationArgs, Operations, router as operations_router,
};
pub use serve::{TcpLimits, serve_tcp};
pub use websocket::WebSocketSettings;

/// What the WebTransport endpoint looks like from a page: served by
/// `/v1/cert-hash` so a browser can pin the certificate and find the port.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// SHA-256 of the served certificate, base64.
    pub sha256_base64: String,
    /// The same, hex.
    pub sha256_hex: String,
    /// Whether it is the self-signed development certificate (pin it).
    pub development: bool,
    /// UDP port of WebTransport.
    pub webtransport_port: u16,
    /// The host browsers reach this node's WebTransport under
    /// (`--advertise-host`); `None`: the host the page came from.
    pub webtransport_host: Option<String>,
}

/// What `GET /v1/user` answers when the request carries no valid token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownUserStatus {
    /// `404 NOT_FOUND`: the documented contract (the seed's README).
    #[default]
    #[value(name = "404")]
    NotFound,
    /// `401 UNAUTHORIZED`: what the seed's server answered, and the only
    /// status on which the seed's web app goes back to its register page.
    #[value(name = "401")]
    Unauthorized,
}

impl UnknownUserStatus {
    /// The row of the HTTP error table this answer is.
    pub fn http_error(self) -> HttpError {
        match self {
            UnknownUserStatus::NotFound => HttpError::NotFound,
            UnknownUserStatus::Unauthorized => HttpError::Unauthorized,
        }
    }
}

/// Everything the HTTP handlers share.
#[derive(Debug)]
pub struct HttpContext {
    /// The routing core.
    pub hub: Arc<Hub>,
    /// Which browser origins may act.
    pub origins: OriginPolicy,
    /// Bearer token for admin routes, if configured (a reload replaces it).
    pub admin_token: ArcSwapOption<String>,
    /// Reverse proxies whose forwarding headers are believed.
    pub proxies: ProxyPolicy,
    /// Names the gateway is reached under besides loopback ones
    /// (`--public-host`), for the admin routes.
    pub public_hosts: Vec<String>,
    /// Whether the TCP listener speaks TLS (cookies get `Secure`).
    pub secure: bool,
    /// The certificate WebTransport serves (a reload replaces it).
    pub cert: ArcSwap<CertInfo>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time allowed for a request body to arrive.
    pub body_timeout: std::time::Duration,
    /// WebSocket transport settings.
    pub websocket: WebSocketSettings,
    /// What `GET /v1/user` answers for a missing or unknown token.
    pub unknown_user_status: UnknownUserStatus,
    /// Metrics and probes.
    pub operations: Operations,
}

impl HttpContext {
    /// The authority a request addressed and whether over a secure scheme:
    /// from a trusted proxy, the host and scheme it reports (so that a page
    /// served through the proxy is the gateway's own), else the `Host`
    /// header and this listener's scheme. `client` is `None` when the peer
    /// is unknown: no proxy is believed then.
    fn addressed<'a>(
        &self,
        client: Option<&'a Client>,
        headers: &'a HeaderMap,
    ) -> (Option<&'a str>, bool) {
        let host = headers.get(HOST).and_then(|v| v.to_str().ok());
        match client {
            Some(client) => client.addressed(host, self.secure),
            None => (host, self.secure),
        }
    }

    /// The verdict on a request's `Origin`, against what it addressed.
    fn judge_origin(&self, client: Option<&Client>, headers: &HeaderMap) -> OriginVerdict {
        let origin = headers.get(ORIGIN).map(|v| v.to_str().unwrap_or("invalid"));
        let (authority, secure) = self.addressed(client, headers);
        self.origins.judge(origin, authority, secure)
    }
}

/// Shared handler state.
pub type AppState = Arc<HttpContext>;

/// The complete HTTP application. Routes that act on an identity (register,
/// user, ICE servers, connect, admin) refuse foreign origins; the web app and health
/// check are public.
pub fn router(ctx: AppState) -> Router {
    let guarded = Router::new()
        .route("/v1/register", axum::routing::post(api::register))
        .route("/v1/user", get(api::user))
        .route("/v1/ice-servers", get(api::ice_servers))
        .route("/v1/connect", get(websocket::connect))
        .merge(
            Router::new()
                .route("/v1/kick-active-users", get(api::kick).post(api::kick))
                .route("/v1/users", get(api::list_users).delete(api::delete_users))
                .route("/v1/stats", get(api::stats))
                .route("/v1/nodes", get(api::nodes))
                .route("/v1/rooms", get(api::rooms))
                .route("/v1/users/{name}/kick", axum::routing::post(api::kick_user))
                .merge(ops::metrics(ctx.operations.clone()))
                .route_layer(middleware::from_fn_with_state(
                    ctx.clone(),
                    api::admin_guard,
                )),
        )
        .route_layer(middleware::from_fn_with_state(
            ctx.clone(),
            api::origin_guard,
        ));

    let mut app = Router::new()
        .route("/healthcheck", get(api::healthcheck))
        .merge(ops::probes(ctx.operations.clone()))
        .route("/v1/cert-hash", get(api::cert_hash))
        .merge(assets::routes())
        .merge(guarded)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(cors_layer(&ctx));
    if ctx.secure {
        let alt_svc = format!("h3=\":{}\"; ma=86400", ctx.cert.load().webtransport_port);
        if let Ok(value) = HeaderValue::from_str(&alt_svc) {
            app = app.layer(SetResponseHeaderLayer::overriding(
                axum::http::HeaderName::from_static("alt-svc"),
                value,
            ));
        }
    }
    app.with_state(ctx)
}

/// CORS for allow-listed foreign origins, so a page elsewhere can register
/// and connect with credentials. Same-origin requests need no CORS. With
/// `--allow-origin '*'` every foreign origin gets `*` and no credentials:
/// echoing any origin with credentials would let every site read answers
/// made with the user's cookies.
fn cors_layer(ctx: &AppState) -> CorsLayer {
    let common = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([CONTENT_TYPE, AUTHORIZATION])
        .max_age(std::time::Duration::from_secs(600));
    if ctx.origins.allows_any() {
        return common.allow_origin(AllowOrigin::any());
    }
    let ctx = ctx.clone();
    common
        .allow_origin(AllowOrigin::predicate(
            move |_: &HeaderValue, parts: &Parts| {
                let client = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(peer)| ctx.proxies.client(peer.ip(), &parts.headers));
                ctx.judge_origin(client.as_ref(), &parts.headers) == OriginVerdict::Allowed
            },
        ))
        .allow_credentials(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Limits;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Request, StatusCode};
    use std::net::SocketAddr;
    use tower::ServiceExt;

    fn app(admin_token: Option<&str>) -> Router {
        app_with(admin_token, false)
    }

    fn app_with(admin_token: Option<&str>, secure: bool) -> Router {
        let hub = Hub::new(
            Limits::default(),
            crate::core::Identities::in_memory(
                &Limits::default(),
                &crate::core::clock::Clock::system(),
            ),
            Arc::new(crate::turn::IceProvider::new(
                Vec::new(),
                Vec::new(),
                None,
                std::time::Duration::from_secs(3600),
            )),
        );
        router(Arc::new(HttpContext {
            hub: hub.clone(),
            origins: OriginPolicy::default(),
            admin_token: ArcSwapOption::from_pointee(admin_token.map(str::to_owned)),
            proxies: ProxyPolicy::default(),
            public_hosts: Vec::new(),
            secure,
            cert: ArcSwap::from_pointee(CertInfo {
                sha256_base64: String::new(),
                sha256_hex: String::new(),
                development: true,
                webtransport_port: 8000,
                webtransport_host: None,
            }),
            max_body_bytes: 1024,
            body_timeout: std::time::Duration::from_secs(1),
            websocket: WebSocketSettings::default(),
            unknown_user_status: UnknownUserStatus::default(),
            operations: Operations::new(hub.clone()),
        }))
    }

    async fn status(app: Router, peer: &str, auth: Option<&str>) -> StatusCode {
        status_for(app, peer, auth, &[("host", "localhost:8000")]).await
    }

    async fn status_for(
        app: Router,
        peer: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
    ) -> StatusCode {
        let mut request = Request::get("/v1/users");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let mut request = request.body(Body::empty()).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        app.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn admin_routes_without_a_token_answer_only_loopback() {
        assert_eq!(
            status(app(None), "127.0.0.1:5000", None).await,
            StatusCode::OK
        );
        assert_eq!(status(app(None), "[::1]:5000", None).await, StatusCode::OK);
        assert_eq!(
            status(app(None), "192.0.2.7:5000", None).await,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn admin_routes_refuse_a_dns_rebinding_page() {
        let local = "127.0.0.1:5000";
        let rebound = [
            ("host", "evil.example:8000"),
            ("origin", "http://evil.example:8000"),
        ];
        assert_eq!(
            status_for(app(None), local, None, &rebound).await,
            StatusCode::FORBIDDEN
        );
        let foreign_page = [
            ("host", "localhost:8000"),
            ("origin", "http://evil.example:8000"),
        ];
        assert_eq!(
            status_for(app(None), local, None, &foreign_page).await,
            StatusCode::FORBIDDEN
        );
        let own_page = [
            ("host", "localhost:8000"),
            ("origin", "http://localhost:8000"),
        ];
        assert_eq!(
            status_for(app(None), local, None, &own_page).await,
            StatusCode::OK
        );
        assert_eq!(
            status_for(app(None), local, None, &[("host", "[::1]:8000")]).await,
            StatusCode::OK
        );
        assert_eq!(
            status_for(app(None), local, None, &[]).await,
            StatusCode::FORBIDDEN,
            "no Host at all"
        );
    }

    #[tokio::test]
    async fn admin_token_works_from_anywhere() {
        let remote = "192.0.2.7:5000";
        assert_eq!(
            status(app(Some("t")), remote, Some("Bearer t")).await,
            StatusCode::OK
        );
        assert_eq!(
            status(app(Some("t")), remote, None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(app(Some("t")), "127.0.0.1:1", None).await,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn alt_svc_is_advertised_only_over_tls() {
        let request = || {
            let mut r = Request::get("/healthcheck").body(Body::empty()).unwrap();
            r.extensions_mut()
                .insert(ConnectInfo("127.0.0.1:1".parse::<SocketAddr>().unwrap()));
            r
        };
        let plain = app(None).oneshot(request()).await.unwrap();
        assert!(plain.headers().get("alt-svc").is_none());
        let tls = app_with(None, true).oneshot(request()).await.unwrap();
        assert_eq!(tls.headers()["alt-svc"], "h3=\":8000\"; ma=86400");
    }
}
