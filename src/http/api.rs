//! The REST routes: register, user, ICE servers, admin, certificate hash,
//! health.
//!
//! Every error is a JSON body `{"status": CODE, "message": text}` with the
//! matching HTTP status; the README's table lists them.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{AppendHeaders, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::auth::{self, TOKEN_COOKIE, USERNAME_COOKIE};
use crate::core::cluster::ClusterError;
use crate::core::stats::RegistrationOutcome;
use crate::core::store::{Registration, StoreError};
use crate::core::wire::HttpError;
use crate::core::{AdminError, AuthError, Refusal, RegisterError, Report, Users};

/// An error answer: a row of the HTTP error table (`core::wire::HttpError`)
/// and a message, as `{"status", "message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    error: HttpError,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub(crate) fn new(error: HttpError, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            retry_after: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(HttpError::Invalid, message)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self {
            retry_after: refusal.retry_after(),
            ..Self::new(refusal.http_error(), refusal.to_string())
        }
    }
}

impl From<RegisterError> for ApiError {
    fn from(err: RegisterError) -> Self {
        match err {
            RegisterError::Store(err) => err.into(),
            err => Self::new(err.http_error(), err.to_string()),
        }
    }
}

/// What a client reads when identities cannot be read or written: the
/// detail (a file path, a Redis address) is for the log only.
const STORE_UNAVAILABLE: &str = "identities are unavailable right now; try again later";

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "answered 503: identities are unavailable");
                Self::new(HttpError::Unavailable, STORE_UNAVAILABLE)
            }
            err => Self::new(err.http_error(), err.to_string()),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        match err {
            AdminError::Store(err) => err.into(),
            err => Self::new(err.http_error(), err.to_string()),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(err: ClusterError) -> Self {
        Self::new(HttpError::Unavailable, err.to_string())
    }
}

/// The response for `error` with `message`: the one place an HTTP error's
/// status and body are put together, for HTTP/1.1 and HTTP/3 alike.
pub(crate) fn error_response(error: HttpError, message: &str) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = Json(json!({ "status": error.code(), "message": message }));
    (status, body).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = error_response(self.error, &self.message);
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// `GET /healthcheck`: liveness, answered `success` (what existing probes expect).
pub(crate) async fn healthcheck() -> &'static str {
    "success"
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    username: String,
}

/// Characters percent-encoded in the `user_username` cookie value: `;`
/// ends a value; `,` splits it for parsers that fold `Set-Cookie` headers
/// into one line; `"` and `\` are quoting; `%` itself, so that
/// `decodeURIComponent` gives every name back exactly.
const COOKIE_ESCAPED: [char; 5] = ['%', ';', ',', '"', '\\'];

/// The `user_username` cookie value: the name as typed, so that a script
/// reading `document.cookie` raw (as the seed's web app does) shows it, with
/// only what a cookie value cannot carry percent-encoded ([`COOKIE_ESCAPED`],
/// and control characters, which names never contain). Browsers keep inner
/// spaces and UTF-8 in a cookie value, and `document.cookie` decodes it as
/// UTF-8.
fn username_cookie_value(name: &str) -> Cow<'_, str> {
    let escaped = |c: char| COOKIE_ESCAPED.contains(&c) || c.is_control();
    if !name.chars().any(escaped) {
        return Cow::Borrowed(name);
    }
    let mut value = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if escaped(c) {
            for byte in c.encode_utf8(&mut [0; 4]).bytes() {
                value.push_str(&format!("%{byte:02X}"));
            }
        } else {
            value.push(c);
        }
    }
    Cow::Owned(value)
}

fn session_cookies(
    username: &str,
    token: &str,
    secure: bool,
) -> [(axum::http::HeaderName, String); 2] {
    let secure = if secure { "; Secure" } else { "" };
    let name = username_cookie_value(username);
    [
        (
            SET_COOKIE,
            format!("{USERNAME_COOKIE}={name}; Path=/; SameSite=Lax{secure}"),
        ),
        (
            SET_COOKIE,
            format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax{secure}"),
        ),
    ]
}

fn cleared_cookies(secure: bool) -> [(axum::http::HeaderName, String); 2] {
    let secure = if secure { "; Secure" } else { "" };
    [
        (
            SET_COOKIE,
            format!("{USERNAME_COOKIE}=; Path=/; Max-Age=0; SameSite=Lax{secure}"),
        ),
        (
            SET_COOKIE,
            format!("{TOKEN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}"),
        ),
    ]
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The body of `POST /v1/register`, or why it is not one.
async fn register_request(
    ctx: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<RegisterRequest, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::invalid(
            "invalid body: Content-Type must be application/json",
        ));
    }
    let body = read_body(ctx, body).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "invalid body: empty; send {\"username\": \"...\"}",
        ));
    }
    // serde's derived visitor would also take `["alice"]`.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            "invalid body: expected a JSON object like {\"username\": \"...\"}",
        ));
    }
    serde_json::from_slice(&body).map_err(|err| ApiError::invalid(format!("invalid body: {err}")))
}

/// `POST /v1/register` with `{"username": string}`.
pub(crate) async fn register(
    State(ctx): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let client = ctx.proxies.client(peer.ip(), &headers);
    ctx.hub.check_register_rate(client.ip)?;
    let request = match register_request(&ctx, &headers, body).await {
        Ok(request) => request,
        Err(err) => {
            ctx.hub.stats().registration(RegistrationOutcome::Invalid);
            return Err(err);
        }
    };
    let presented = auth::session_token(&headers, None);
    let registration = ctx
        .hub
        .register(&request.username, presented.as_deref(), client.ip)
        .await?;
    let (username, token) = match registration {
        Registration::Created { username, token } | Registration::Reclaimed { username, token } => {
            (username, token)
        }
        Registration::Taken => {
            let body = json!({
                "status": "TAKEN",
                "message": format!(
                    "username \"{}\" is already registered",
                    ctx.hub.registered_name(&request.username)
                ),
            });
            return Ok(Json(body).into_response());
        }
    };
    tracing::debug!(user = %username, "registered");
    let body =
        json!({ "status": "SUCCESS", "message": "", "username": &*username, "token": token });
    Ok((
        AppendHeaders(session_cookies(&username, &token, ctx.secure)),
        Json(body),
    )
        .into_response())
}

/// Reads a request body within `--max-body-bytes` and `--handshake-timeout`:
/// a client dripping its body holds a connection no longer than one
/// dripping its request head.
async fn read_body(ctx: &AppState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(ctx.body_timeout, to_bytes(body, ctx.max_body_bytes)).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) => Err(ApiError::new(
            HttpError::PayloadTooLarge,
            format!("invalid body: larger than {} bytes", ctx.max_body_bytes),
        )),
        Err(_) => Err(ApiError::new(
            HttpError::Timeout,
            format!(
                "the request body did not arrive within {} ms",
                ctx.body_timeout.as_millis()
            ),
        )),
    }
}

/// `GET /v1/user`: who the request's token belongs to, or
/// `--unknown-user-status` (404, or 401 for the seed's web app) with the
/// session cookies cleared.
pub(crate) async fn user(
    State(ctx): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = match auth::session_token(&headers, None) {
        Some(token) => match ctx.hub.authenticate(&token).await {
            Ok(user) => Some(user),
            Err(AuthError::Store(err)) => return Err(err.into()),
            Err(_) => None,
        },
        None => None,
    };
    Ok(match user {
        Some(authenticated) => Json(json!({ "username": &*authenticated.user })).into_response(),
        None => {
            let error = ctx.unknown_user_status.http_error();
            let mut response = (
                AppendHeaders(cleared_cookies(ctx.secure)),
                [(
                    axum::http::HeaderName::from_static("clear-site-data"),
                    "\"cookies\"",
                )],
                ApiError::new(error, "no valid session token; register first"),
            )
                .into_response();
            if error == HttpError::Unauthorized {
                // RFC 9110 §15.5.2; browsers prompt for Basic, never for Bearer.
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    })
}

/// `GET /v1/ice-servers`: the STUN and TURN servers for the token's user,
/// with TURN credentials minted for this request. Never cached: the
/// credentials are the user's own and expire.
pub(crate) async fn ice_servers(State(ctx): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = auth::session_token(&headers, None) else {
        return unauthorized("no token: send Authorization: Bearer <token>");
    };
    match ctx.hub.authenticate(&token).await {
        Ok(authenticated) => (
            [(CACHE_CONTROL, "no-store")],
            Json(ctx.hub.ice_servers(&authenticated.user)),
        )
            .into_response(),
        Err(AuthError::Store(err)) => ApiError::from(err).into_response(),
        Err(refused) => unauthorized(&refused.to_string()),
    }
}

/// `401 UNAUTHORIZED` with the `WWW-Authenticate` challenge it must carry.
fn unauthorized(message: &str) -> Response {
    let mut response = error_response(HttpError::Unauthorized, message);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `GET`/`POST /v1/kick-active-users`: closes every live connection.
pub(crate) async fn kick(State(ctx): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let kicked = ctx.hub.kick_all().await?;
    tracing::info!(kicked, "admin kicked every active user");
    Ok(Json(json!({ "kicked": kicked })))
}

/// `POST /v1/users/{name}/kick`: closes that one user's connection, wherever
/// it is, as `KICKED`, and takes it out of its rooms; `404` when it has no
/// live connection.
pub(crate) async fn kick_user(
    State(ctx): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if ctx.hub.kick_user(&name).await? {
        tracing::info!(user = %name, "admin kicked a user");
        Ok(Json(json!({ "kicked": 1 })))
    } else {
        Err(ApiError::new(
            HttpError::NotFound,
            format!("user {name:?} is not connected"),
        ))
    }
}

/// `GET /v1/rooms`: every room with its members (and, in a cluster, each
/// member's node).
pub(crate) async fn rooms(
    State(ctx): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "rooms": ctx.hub.room_listing().await? })))
}

/// `GET /v1/users`: registered names and live connections.
pub(crate) async fn list_users(State(ctx): State<AppState>) -> Result<Json<Users>, ApiError> {
    Ok(Json(ctx.hub.users().await?))
}

/// `DELETE /v1/users`: forgets every identity and kicks every connection.
pub(crate) async fn delete_users(
    State(ctx): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (deleted, kicked) = ctx.hub.delete_identities().await?;
    tracing::info!(deleted, kicked, "admin deleted every identity");
    Ok(Json(json!({ "deleted": deleted, "kicked": kicked })))
}

/// `GET /v1/nodes`: the cluster's live nodes.
pub(crate) async fn nodes(
    State(ctx): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(match ctx.hub.nodes().await? {
        Some(nodes) => json!({
            "cluster": true,
            "node": ctx.hub.cluster().map(|cluster| cluster.node().to_string()),
            "nodes": nodes,
        }),
        None => json!({ "cluster": false, "nodes": [] }),
    }))
}

/// `GET /v1/stats`: counters and current sizes.
pub(crate) async fn stats(State(ctx): State<AppState>) -> Json<Report> {
    Json(ctx.hub.report().await)
}

/// `GET /v1/cert-hash`: what a page passes to `serverCertificateHashes`.
pub(crate) async fn cert_hash(State(ctx): State<AppState>) -> Response {
    let cert = ctx.cert.load();
    (
        [(CACHE_CONTROL, "no-store")],
        Json(json!({
            "algorithm": "sha-256",
            "value": cert.sha256_base64,
            "hex": cert.sha256_hex,
            "development": cert.development,
            "webtransport": {
                "port": cert.webtransport_port,
                "path": "/v1/connect",
                "host": cert.webtransport_host,
            },
        })),
    )
        .into_response()
}

/// Refuses requests from foreign origins not on the allow-list (403). The
/// gateway's own origin is what the request addressed: behind a trusted
/// proxy, the host and scheme the proxy reports.
pub(crate) async fn origin_guard(
    State(ctx): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let client = ctx.proxies.client(peer.ip(), headers);
    if !ctx.judge_origin(Some(&client), headers).permits() {
        let origin = headers.get(ORIGIN).map(|v| v.to_str().unwrap_or("invalid"));
        let (addressed, _) = ctx.addressed(Some(&client), headers);
        return ApiError::new(
            HttpError::Forbidden,
            format!(
                "origin {} is not allowed: the request addressed {}, and the origin is not in \
                 --allow-origin (behind a proxy, pass the Host header with its port)",
                origin.unwrap_or_default(),
                addressed.unwrap_or("no host"),
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Admin routes: the admin bearer token when one is configured, else
/// loopback clients only, addressing the gateway by a loopback name or a
/// `--public-host`, from no page or a page that is the gateway's own or
/// listed in `--allow-origin`. The last two refuse a DNS-rebinding page:
/// its requests reach the gateway on loopback, but under the attacker's
/// host name and origin.
pub(crate) async fn admin_guard(
    State(ctx): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    match ctx.admin_token.load().as_deref() {
        Some(expected) if !auth::admin_token_matches(expected, auth::bearer(headers)) => {
            return unauthorized("admin routes need the admin bearer token");
        }
        None => {
            if let Err(why) = local_admin(&ctx, peer, headers) {
                return ApiError::new(
                    HttpError::Forbidden,
                    format!("{why} (or set --admin-token)"),
                )
                .into_response();
            }
        }
        Some(_) => {}
    }
    next.run(request).await
}

/// The checks on an admin request without `--admin-token`.
fn local_admin(ctx: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), &'static str> {
    let client = ctx.proxies.client(peer.ip(), headers);
    if !client.is_loopback() {
        return Err("admin routes answer only loopback clients");
    }
    // A page elsewhere can make a browser send a GET with no `Origin`
    // (`<img src>`), but browsers always say where it came from here, and
    // only a browser sends this header: curl and scripts are unaffected. A
    // page of an origin listed in `--allow-origin` names itself in `Origin`.
    let origin = headers.get(ORIGIN).map(|v| v.to_str().unwrap_or("invalid"));
    let from_elsewhere = headers
        .get(SEC_FETCH_SITE)
        .is_some_and(|site| !matches!(site.as_bytes(), b"same-origin" | b"none"));
    if from_elsewhere && !origin.is_some_and(|origin| ctx.origins.lists(origin)) {
        return Err(
            "admin routes answer no request a page of another site made (Sec-Fetch-Site), unless its Origin is listed in --allow-origin",
        );
    }
    // Every name the request carries for what it addressed must be local:
    // a proxy that passes `Host` through shows a rebinding page's name
    // there, and one that rewrites `Host` shows it in the forwarded host.
    let local = |name: &str| {
        auth::is_loopback_authority(name) || auth::authority_is_one_of(name, &ctx.public_hosts)
    };
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if !(host.is_some_and(local) && client.forwarded_host.as_deref().is_none_or(local)) {
        return Err("admin routes answer only requests to a loopback name or a --public-host");
    }
    match origin {
        None => Ok(()),
        Some(origin) if ctx.origins.lists(origin) => Ok(()),
        Some(_) if ctx.judge_origin(Some(&client), headers) == auth::OriginVerdict::SameOrigin => {
            Ok(())
        }
        Some(_) => {
            Err("admin routes answer only pages of the gateway itself or listed in --allow-origin")
        }
    }
}

/// `Sec-Fetch-Site` (Fetch Metadata): `same-origin`, `same-site`,
/// `cross-site`, or `none` when the user typed the address.
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Unknown route.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        HttpError::NotFound,
        format!("no route for {method} {}", uri.path()),
    )
}

/// Known route, wrong method.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        HttpError::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_username_cookie_keeps_the_name_as_typed() {
        for name in [
            "alice",
            "Zoë Li",
            "José María",
            "李小龍",
            "a=b",
            "O'Neil (+1)",
            "🙂 x",
        ] {
            assert_eq!(username_cookie_value(name), name);
        }
        assert_eq!(
            username_cookie_value("100% sure; or, \"maybe\" \\o/"),
            "100%25 sure%3B or%2C %22maybe%22 %5Co/"
        );
        assert_eq!(username_cookie_value("a\u{7f}b\u{85}"), "a%7Fb%C2%85");
    }
}
