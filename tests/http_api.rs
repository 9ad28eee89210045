//! The HTTP API as a browser or legacy client sees it: status codes, JSON
//! bodies, cookies and their attributes, origins, admin access.

mod common;

use common::{Client, Kind, TestGateway, status_field, within, ws_connect};
use reqwest::header::{CONTENT_TYPE, SET_COOKIE};
use serde_json::{Value, json};

async fn post_register(
    gw: &TestGateway,
    body: &str,
    content_type: Option<&str>,
) -> (u16, Vec<String>, Value) {
    let mut request = gw.http().post(gw.url("/v1/register")).body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    let response = within("register", request.send()).await.unwrap();
    let status = response.status().as_u16();
    let cookies = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| String::from_utf8(v.as_bytes().to_vec()).unwrap())
        .collect();
    (status, cookies, response.json().await.unwrap())
}

/// Asserts that `response` clears both session cookies, the way every
/// browser understands.
fn assert_cookies_cleared(response: &reqwest::Response) {
    assert_eq!(response.headers()["clear-site-data"], "\"cookies\"");
    let cleared: Vec<&str> = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    for name in ["user_username", "user_token"] {
        assert!(
            cleared
                .iter()
                .any(|c| c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0")),
            "{name} not cleared: {cleared:?}"
        );
    }
}

#[tokio::test]
async fn healthcheck_says_success() {
    let gw = TestGateway::start().await;
    let response = gw.http().get(gw.url("/healthcheck")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "success");
}

#[tokio::test]
async fn register_returns_a_token_and_session_cookies() {
    let gw = TestGateway::start().await;
    let (status, cookies, body) =
        post_register(&gw, r#"{"username":"alice"}"#, Some("application/json")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "SUCCESS");
    assert_eq!(body["message"], "");
    assert_eq!(body["username"], "alice");
    let token = body["token"].as_str().unwrap();
    assert!(token.len() >= 22, "at least 128 bits of base64url");
    let username_cookie = cookies
        .iter()
        .find(|c| c.starts_with("user_username="))
        .unwrap();
    assert_eq!(
        username_cookie, "user_username=alice; Path=/; SameSite=Lax",
        "readable by page scripts"
    );
    let token_cookie = cookies
        .iter()
        .find(|c| c.starts_with("user_token="))
        .unwrap();
    assert_eq!(
        token_cookie,
        &format!("user_token={token}; Path=/; HttpOnly; SameSite=Lax")
    );
}

#[tokio::test]
async fn username_cookie_carries_the_name_as_typed() {
    let gw = TestGateway::start().await;
    // The seed's web app reads the value raw; only what a cookie value
    // cannot carry (and `%`) is percent-encoded.
    for (name, value) in [
        ("Zoë Li", "Zoë Li"),
        ("José María", "José María"),
        ("a=b", "a=b"),
        ("100% sure; or, \"not\"", "100%25 sure%3B or%2C %22not%22"),
    ] {
        let body = json!({ "username": name }).to_string();
        let (status, cookies, _) = post_register(&gw, &body, Some("application/json")).await;
        assert_eq!(status, 200, "{name}");
        let expected = format!("user_username={value}; Path=/; SameSite=Lax");
        assert!(cookies.contains(&expected), "{name}: {cookies:?}");
        // The browser sends both cookies back in one header, raw UTF-8
        // included: the token beside the name still authenticates.
        let sent: Vec<&str> = cookies
            .iter()
            .map(|c| c.split_once(';').unwrap().0)
            .collect();
        let cookie = sent.join("; ");
        let user = gw
            .http()
            .get(gw.url("/v1/user"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(user.status(), 200, "{cookie}");
        assert_eq!(
            user.json::<Value>().await.unwrap(),
            json!({ "username": name })
        );
        let mut ws = Client::Ws(ws_connect(&gw, "", &[("cookie", &cookie)]).await.unwrap());
        assert_eq!(ws.recv().await["payload"]["username"], name);
        ws.close().await;
    }
}

#[tokio::test]
async fn taken_names_and_owner_re_registration() {
    let gw = TestGateway::start().await;
    let token = gw.register("alice").await;
    let (status, cookies, body) =
        post_register(&gw, r#"{"username":"alice"}"#, Some("application/json")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("TAKEN")));
    assert!(body["message"].as_str().unwrap().contains("alice"));
    assert!(cookies.is_empty(), "no cookies for a taken name");

    for auth in [
        ("authorization", format!("Bearer {token}")),
        ("cookie", format!("user_token={token}")),
    ] {
        let response = gw
            .http()
            .post(gw.url("/v1/register"))
            .header(auth.0, auth.1)
            .json(&json!({"username": "alice"}))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "SUCCESS", "the owner gets its name back");
        assert_eq!(body["token"], token.as_str());
    }
    let other = gw.register("bob").await;
    let response = gw
        .http()
        .post(gw.url("/v1/register"))
        .bearer_auth(other)
        .json(&json!({"username": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status_field(response).await, "TAKEN");
}

#[tokio::test]
async fn bad_registrations_get_400_invalid_with_a_reason() {
    let gw = TestGateway::start().await;
    let json = Some("application/json");
    let cases: Vec<(&str, Option<&str>, &str)> = vec![
        ("not json", json, "invalid body"),
        (r#"{"username":5}"#, json, "expected a string"),
        (r#"{"username":null}"#, json, "invalid type: null"),
        (r#"["alice"]"#, json, "invalid body"),
        (r#"{}"#, json, "missing field `username`"),
        (
            r#"{"username":"a","extra":1}"#,
            json,
            "unknown field `extra`",
        ),
        (
            r#"{"username":"alice"}"#,
            Some("text/plain"),
            "Content-Type must be application/json",
        ),
        (
            r#"{"username":"alice"}"#,
            None,
            "Content-Type must be application/json",
        ),
        ("", json, "empty"),
        (r#"{"username":""}"#, json, "username cannot be empty"),
        (
            r#"{"username":"   "}"#,
            json,
            "must not start or end with a space",
        ),
        (r#"{"username":"a\tb"}"#, json, "not allowed: U+0009"),
        (r#"{"username":"a\u200bb"}"#, json, "not allowed: U+200B"),
    ];
    for (body, content_type, expected) in cases {
        let (status, cookies, response) = post_register(&gw, body, content_type).await;
        assert_eq!(status, 400, "{body:?}");
        assert_eq!(response["status"], "INVALID", "{body:?}");
        let message = response["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body:?}: {message}");
        assert!(cookies.is_empty());
    }
    let long = json!({ "username": "x".repeat(65) }).to_string();
    let (status, _, response) = post_register(&gw, &long, json).await;
    assert_eq!(status, 400);
    assert!(response["message"].as_str().unwrap().contains("64"));
    let huge = format!(r#"{{"username":"{}"}}"#, "x".repeat(20_000));
    let (status, _, response) = post_register(&gw, &huge, json).await;
    assert_eq!(
        (status, response["status"].as_str()),
        (413, Some("INVALID"))
    );
}

#[tokio::test]
async fn user_accepts_the_token_and_only_the_token() {
    let gw = TestGateway::start().await;
    let token = gw.register("alice").await;
    for (name, value) in [
        ("cookie", format!("user_token={token}")),
        ("authorization", format!("Bearer {token}")),
    ] {
        let response = gw
            .http()
            .get(gw.url("/v1/user"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"username": "alice"})
        );
    }
    // The seed trusted the username cookie; here it authenticates nobody.
    for headers in [
        vec![("cookie", "user_username=alice".to_owned())],
        vec![("cookie", "user_token=forged".to_owned())],
        vec![],
    ] {
        let mut request = gw.http().get(gw.url("/v1/user"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 404);
        assert_cookies_cleared(&response);
        assert_eq!(status_field(response).await, "NOT_FOUND");
    }
}

#[tokio::test]
async fn unknown_user_status_401_is_what_the_seeds_web_app_expects() {
    let gw = TestGateway::start_with(&["--unknown-user-status", "401"]).await;
    let token = gw.register("alice").await;
    for cookie in ["user_username=alice", "user_token=forged", ""] {
        let response = gw
            .http()
            .get(gw.url("/v1/user"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{cookie:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_cookies_cleared(&response);
        assert_eq!(status_field(response).await, "UNAUTHORIZED");
    }
    let known = gw
        .http()
        .get(gw.url("/v1/user"))
        .header("cookie", format!("user_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(known.status(), 200);
    assert_eq!(
        known.json::<Value>().await.unwrap(),
        json!({"username": "alice"})
    );
}

#[tokio::test]
async fn connect_without_upgrade_is_426() {
    let gw = TestGateway::start().await;
    let response = gw.http().get(gw.url("/v1/connect")).send().await.unwrap();
    assert_eq!(response.status(), 426);
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert_eq!(status_field(response).await, "UPGRADE_REQUIRED");
}

#[tokio::test]
async fn websocket_without_a_valid_token_closes_with_4000() {
    let gw = TestGateway::start().await;
    for query in ["", "?token=wrong"] {
        let mut client = Client::Ws(
            ws_connect(&gw, query, &[])
                .await
                .expect("the upgrade happens"),
        );
        let closed = client.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (4000, "UNAUTHENTICATED")
        );
        assert_eq!(closed.envelope.unwrap()["code"], 4000);
    }
}

#[tokio::test]
async fn websocket_takes_the_token_from_cookie_bearer_or_query() {
    let gw = TestGateway::start().await;
    let token = gw.register("alice").await;
    let cookie = format!("user_token={token}");
    let bearer = format!("Bearer {token}");
    let query = format!("?token={token}");
    let ways: [(&str, Vec<(&str, &str)>); 3] = [
        ("", vec![("cookie", cookie.as_str())]),
        ("", vec![("authorization", bearer.as_str())]),
        (query.as_str(), vec![]),
    ];
    for (query, headers) in ways {
        let mut client = Client::Ws(ws_connect(&gw, query, &headers).await.unwrap());
        assert_eq!(client.recv().await["type"], "WELCOME");
        client.close().await;
    }
}

#[tokio::test]
async fn foreign_origins_are_refused_unless_allowed() {
    let gw = TestGateway::start_with(&["--allow-origin", "https://app.example"]).await;
    let own = format!("http://{}", gw.http);
    let post = |origin: &str| {
        gw.http()
            .post(gw.url("/v1/register"))
            .header("origin", origin)
            .json(&json!({"username": format!("u{}", origin.len())}))
            .send()
    };
    let refused = post("https://evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(status_field(refused).await, "FORBIDDEN");
    assert_eq!(post(&own).await.unwrap().status(), 200);
    let allowed = post("https://app.example").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );

    let token = gw.register("alice").await;
    let query = format!("?token={token}");
    let err = ws_connect(&gw, &query, &[("origin", "https://evil.example")])
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let mut ok = Client::Ws(ws_connect(&gw, &query, &[("origin", &own)]).await.unwrap());
    assert_eq!(ok.recv().await["type"], "WELCOME");
}

/// `POST /v1/register` with `headers`, as a proxy would forward it: the
/// status code.
async fn register_through(gw: &TestGateway, name: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = gw
        .http()
        .post(gw.url("/v1/register"))
        .json(&json!({ "username": name }));
    for (header, value) in headers {
        request = request.header(*header, *value);
    }
    let response = within("register", request.send()).await.unwrap();
    let status = response.status().as_u16();
    if status != 200 {
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "FORBIDDEN");
        assert!(
            body["message"].as_str().unwrap().contains("addressed"),
            "{body}"
        );
    }
    status
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_gateways_origin_is_the_one_the_proxy_reports() {
    let gw = TestGateway::start_with(&["--trusted-proxy", "127.0.0.1"]).await;
    let page = "http://localhost:10000";
    let xff = ("x-forwarded-for", "127.0.0.1");
    let cases = [
        (
            "Host with its port ($http_host)",
            200,
            vec![("origin", page), ("host", "localhost:10000"), xff],
        ),
        (
            "Host without its port ($host): refused",
            403,
            vec![("origin", page), ("host", "localhost"), xff],
        ),
        (
            "Host without its port, X-Forwarded-Host with it",
            200,
            vec![
                ("origin", page),
                ("host", "localhost"),
                ("x-forwarded-host", "localhost:10000"),
                xff,
            ],
        ),
        (
            "X-Forwarded-Host without X-Forwarded-For",
            200,
            vec![
                ("origin", page),
                ("host", "127.0.0.1:8000"),
                ("x-forwarded-host", "localhost:10000"),
            ],
        ),
        (
            "TLS ends at the proxy, X-Forwarded-Proto says so",
            200,
            vec![
                ("origin", "https://app.example"),
                ("host", "app.example"),
                ("x-forwarded-proto", "https"),
                xff,
            ],
        ),
        (
            "TLS ends at the proxy, no X-Forwarded-Proto: port 80 is not 443",
            403,
            vec![
                ("origin", "https://app.example"),
                ("host", "app.example"),
                xff,
            ],
        ),
    ];
    for (i, (what, status, headers)) in cases.iter().enumerate() {
        assert_eq!(
            register_through(&gw, &format!("p{i}"), headers).await,
            *status,
            "{what}"
        );
    }

    // The WebSocket upgrade answers to the same rule.
    let token = gw.register("alice").await;
    let query = format!("?token={token}");
    let proxied = [
        ("origin", page),
        ("host", "localhost"),
        ("x-forwarded-host", "localhost:10000"),
    ];
    let mut ws = Client::Ws(ws_connect(&gw, &query, &proxied).await.unwrap());
    assert_eq!(ws.recv().await["type"], "WELCOME");
    ws.close().await;
    match ws_connect(&gw, &query, &proxied[..2]).await.unwrap_err() {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }

    // Only from a trusted proxy: anyone else's X-Forwarded-Host is ignored.
    let direct = TestGateway::start().await;
    assert_eq!(
        register_through(&direct, "q", &cases[2].2).await,
        403,
        "X-Forwarded-Host from an untrusted peer"
    );

    // RFC 7239, when the proxies write that instead.
    let rfc = TestGateway::start_with(&[
        "--trusted-proxy",
        "127.0.0.1",
        "--forwarded-header",
        "forwarded",
    ])
    .await;
    let forwarded = [
        ("origin", "https://app.example:8443"),
        ("host", "127.0.0.1:8000"),
        (
            "forwarded",
            "for=192.0.2.60;host=\"app.example:8443\";proto=https",
        ),
    ];
    assert_eq!(register_through(&rfc, "r", &forwarded).await, 200);
    assert_eq!(
        register_through(&rfc, "s", &cases[2].2).await,
        403,
        "X-Forwarded-Host is not read under --forwarded-header forwarded"
    );
}

#[tokio::test]
async fn admin_routes_list_and_delete_users() {
    let gw = TestGateway::start().await;
    let mut alice = gw.user("alice", Kind::WebSocket).await;
    gw.register("bob").await;
    let users = gw.users().await;
    assert_eq!(users["registered"], json!(["alice", "bob"]));
    assert_eq!(users["connected"][0]["username"], "alice");
    assert_eq!(users["connected"][0]["transport"], "websocket");

    let deleted = gw.delete_users().await;
    assert_eq!(deleted, json!({"deleted": 2, "kicked": 1}));
    assert_eq!(alice.closed().await.code, 4002);
    let (_, _, body) =
        post_register(&gw, r#"{"username":"alice"}"#, Some("application/json")).await;
    assert_eq!(body["status"], "SUCCESS", "the name is free again");
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let gw = TestGateway::start_with(&["--admin-token", "s3cret"]).await;
    let kick = |auth: Option<&str>| {
        let mut request = gw.http().post(gw.url("/v1/kick-active-users"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    let missing = kick(None).await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(kick(Some("Bearer wrong")).await.unwrap().status(), 401);
    let ok = kick(Some("Bearer s3cret")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap(), json!({"kicked": 0}));
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_have_short_bodies() {
    let gw = TestGateway::start().await;
    let missing = gw.http().get(gw.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(status_field(missing).await, "NOT_FOUND");
    let wrong = gw.http().get(gw.url("/v1/register")).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
    assert!(wrong.headers()["allow"].to_str().unwrap().contains("POST"));
    assert_eq!(status_field(wrong).await, "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn cert_hash_matches_the_served_certificate() {
    let gw = TestGateway::start().await;
    let body = gw.get_json("/v1/cert-hash").await;
    assert_eq!(body["algorithm"], "sha-256");
    let hex: String = gw.cert_sha256.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(body["hex"], hex);
    use base64::Engine;
    assert_eq!(
        body["value"],
        base64::engine::general_purpose::STANDARD.encode(gw.cert_sha256)
    );
    assert_eq!(body["webtransport"]["port"], gw.wt.port());
    assert_eq!(body["development"], true);
}

#[tokio::test]
async fn web_app_and_client_are_served() {
    let gw = TestGateway::start().await;
    for (path, content_type) in [
        ("/", "text/html"),
        ("/client.js", "text/javascript"),
        ("/app.js", "text/javascript"),
        ("/call.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let response = gw.http().get(gw.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
    }
}
