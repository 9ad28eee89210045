//! The credentials a request carries: the session token (header, query or
//! cookie) and the admin token.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use percent_encoding::percent_decode_str;
use subtle::ConstantTimeEq;

/// Cookie holding the session token (HttpOnly).
pub const TOKEN_COOKIE: &str = "user_token";
/// Cookie holding the username, readable by page scripts (it is not a
/// credential: only the token authenticates).
pub const USERNAME_COOKIE: &str = "user_username";
/// Query parameter carrying the token where headers cannot be set
/// (`new WebSocket(url)`, `new WebTransport(url)`).
pub const TOKEN_PARAM: &str = "token";

/// The bearer token of an `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name`, from any `Cookie` header. The header is read
/// as bytes: another cookie may hold UTF-8 (the username does), and
/// `to_str` would refuse the whole header for it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// Query parameter a reconnecting client names the highest `seq` it
/// processed with (both transports), to have everything after it written
/// again.
pub const RESUME_PARAM: &str = "resume";

/// The `resume=N` a connect request carries; anything but a number is no
/// resume.
pub fn resume_point(query: Option<&str>) -> Option<u64> {
    query_param(query, RESUME_PARAM).and_then(|value| value.parse().ok())
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| percent_decode_str(value).decode_utf8().ok())
        .filter(|value| !value.is_empty())
}

/// The session token a request carries: `Authorization: Bearer`, then
/// `?token=` (only where `query` is given), then the `user_token` cookie.
/// What the client names explicitly wins over the cookie the browser adds
/// on its own, so a stale cookie never logs a connection in as someone else.
pub fn session_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, str>> {
    bearer(headers)
        .map(Cow::Borrowed)
        .or_else(|| query_param(query, TOKEN_PARAM))
        .or_else(|| cookie(headers, TOKEN_COOKIE).map(Cow::Borrowed))
}

/// Whether `presented` equals the configured admin token, in constant time.
pub fn admin_token_matches(expected: &str, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::headers;
    use http::HeaderValue;

    #[test]
    fn token_sources_in_order() {
        let h = headers(&[
            ("authorization", "Bearer abc"),
            ("cookie", "user_token=def"),
        ]);
        assert_eq!(session_token(&h, Some("token=ghi")).as_deref(), Some("abc"));
        let h = headers(&[("cookie", "a=1; user_token=def; b=2")]);
        assert_eq!(
            session_token(&h, Some("token=ghi")).as_deref(),
            Some("ghi"),
            "explicit beats the cookie"
        );
        assert_eq!(session_token(&h, None).as_deref(), Some("def"));
        let h = headers(&[]);
        assert_eq!(
            session_token(&h, Some("x=1&token=g%2Dh")).as_deref(),
            Some("g-h")
        );
        assert_eq!(session_token(&h, None), None);
        assert_eq!(session_token(&h, Some("token=")), None);
        let h = headers(&[("authorization", "Basic abc")]);
        assert_eq!(session_token(&h, None), None);
    }

    #[test]
    fn the_token_cookie_is_found_beside_a_utf8_name() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes("user_username=Zoë Li; user_token=tok".as_bytes()).unwrap(),
        );
        assert_eq!(session_token(&h, None).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, USERNAME_COOKIE), Some("Zoë Li"));
        let mut latin1 = HeaderMap::new();
        latin1.append(
            COOKIE,
            HeaderValue::from_bytes(b"user_username=Zo\xebLi; user_token=tok").unwrap(),
        );
        assert_eq!(session_token(&latin1, None).as_deref(), Some("tok"));
    }

    #[test]
    fn username_cookie_is_not_a_token() {
        let h = headers(&[("cookie", "user_username=alice")]);
        assert_eq!(session_token(&h, None), None);
    }

    #[test]
    fn admin_token_comparison() {
        assert!(admin_token_matches("s3cret", Some("s3cret")));
        assert!(!admin_token_matches("s3cret", Some("s3cre")));
        assert!(!admin_token_matches("s3cret", None));
    }
}
