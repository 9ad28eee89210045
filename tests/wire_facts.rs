//! The wire facts that live outside `core/wire.rs` — copied by hand into
//! `web/client.js` and the README — must agree with it: every close code
//! with its reason and reconnect advice, every error type, every HTTP
//! error's status and `status` string.

use std::collections::{BTreeMap, BTreeSet};

use signal_gateway::core::wire::{CloseReason, ErrorType, HttpError, PROTOCOL_VERSION};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// The text between `start` and the next `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"))
        + start.len();
    let to = text[from..]
        .find(end)
        .unwrap_or_else(|| panic!("{end:?} not found after {start:?}"));
    &text[from..from + to]
}

/// The rows of the markdown table whose header row starts with `header`,
/// as trimmed cells without backticks.
fn table(markdown: &str, header: &str) -> Vec<Vec<String>> {
    let start = markdown
        .find(header)
        .unwrap_or_else(|| panic!("no table {header:?} in docs/protocol.md"));
    markdown[start..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().replace('`', ""))
                .collect()
        })
        .collect()
}

#[test]
fn client_js_knows_every_close_code_reason_and_reconnect_rule() {
    let js = read("web/client.js");
    let final_codes: BTreeSet<u16> = between(&js, "FINAL_CLOSE_CODES = new Set([", "])")
        .split(',')
        .map(|code| code.trim().parse().unwrap())
        .collect();
    let reasons: BTreeMap<u16, String> = between(&js, "CLOSE_REASONS = {", "}")
        .lines()
        .filter_map(|line| line.trim().trim_end_matches(',').split_once(':'))
        .map(|(code, reason)| {
            (
                code.trim().parse().unwrap(),
                reason.trim().trim_matches('"').to_owned(),
            )
        })
        .collect();
    for reason in CloseReason::ALL {
        assert_eq!(
            reasons.get(&reason.code()).map(String::as_str),
            Some(reason.reason()),
            "client.js CLOSE_REASONS[{}]",
            reason.code()
        );
        assert_eq!(
            final_codes.contains(&reason.code()),
            !reason.should_reconnect(),
            "client.js FINAL_CLOSE_CODES and {reason:?}"
        );
    }
    let gateway_codes: BTreeSet<u16> = CloseReason::ALL.iter().map(|r| r.code()).collect();
    assert!(
        final_codes.is_subset(&gateway_codes),
        "client.js FINAL_CLOSE_CODES has codes the gateway never sends: {:?}",
        final_codes.difference(&gateway_codes).collect::<Vec<_>>()
    );
}

#[test]
fn client_js_knows_every_error_type() {
    let js = read("web/client.js");
    let listed: BTreeSet<String> = between(&js, "ERROR_TYPES = Object.freeze([", "])")
        .split(',')
        .map(|name| name.trim().trim_matches('"').to_owned())
        .filter(|name| !name.is_empty())
        .collect();
    let gateway: BTreeSet<String> = ErrorType::ALL
        .iter()
        .map(|e| e.as_str().to_owned())
        .collect();
    assert_eq!(listed, gateway, "client.js ERROR_TYPES");
}

#[test]
fn the_readme_tables_match_the_wire_table() {
    let readme = read("docs/protocol.md");
    let closes = table(&readme, "| Code | Reason | When | Reconnect |");
    for reason in CloseReason::ALL {
        let row = closes
            .iter()
            .find(|row| row[0] == reason.code().to_string())
            .unwrap_or_else(|| panic!("README: no row for close code {}", reason.code()));
        assert_eq!(
            row[1],
            reason.reason(),
            "README close code {}",
            reason.code()
        );
        assert_eq!(
            row[3].starts_with("yes"),
            reason.should_reconnect(),
            "README reconnect advice for {}",
            reason.code()
        );
    }
    assert_eq!(closes.len(), CloseReason::ALL.len(), "README close codes");

    let errors = table(&readme, "| `type` | Meaning | Payload |");
    let documented: BTreeSet<&str> = errors.iter().map(|row| row[0].as_str()).collect();
    let gateway: BTreeSet<&str> = ErrorType::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(documented, gateway, "README error envelope types");

    let statuses = table(&readme, "| Status | `status` | When |");
    for error in HttpError::ALL {
        assert!(
            statuses
                .iter()
                .any(|row| row[0] == error.status().to_string() && row[1] == error.code()),
            "README: no row for HTTP {} {}",
            error.status(),
            error.code()
        );
    }
}

#[test]
fn the_docs_name_the_protocol_version_welcome_carries() {
    let protocol = read("docs/protocol.md");
    assert!(
        protocol.contains(&format!(
            "\"payload\": {{\"protocol\": {PROTOCOL_VERSION}, "
        )),
        "docs/protocol.md: the WELCOME example starts its payload with \"protocol\": {PROTOCOL_VERSION}"
    );
    let policy = read("docs/compatibility.md");
    assert!(
        policy.contains(&format!("(today `{PROTOCOL_VERSION}`)")),
        "docs/compatibility.md names today's protocol version {PROTOCOL_VERSION}"
    );
}
