//! Who a request is and whether its origin may act: shared by the HTTP API,
//! the WebSocket upgrade and the WebTransport CONNECT, which all see the same
//! `http` request types.
//!
//! - `credentials`: the session token and the admin token a request
//!   carries.
//! - `forwarded`: the client's address behind trusted reverse proxies,
//!   and loopback names.
//! - `origins`: which browser origins may act.

mod credentials;
mod forwarded;
mod origins;

pub use credentials::{
    RESUME_PARAM, TOKEN_COOKIE, TOKEN_PARAM, USERNAME_COOKIE, admin_token_matches, bearer, cookie,
    query_param, resume_point, session_token,
};
pub use forwarded::{
    Client, ForwardedHeader, ProxyPolicy, authority_is_one_of, is_loopback, is_loopback_authority,
};
pub use origins::{OriginPolicy, OriginVerdict};

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    /// A header map of `(name, value)` pairs, in order.
    pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }
}
