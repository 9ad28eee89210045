//! The HTTP flags: who may call the admin routes, which origins and
//! proxies are believed, and what an unknown user gets.

use std::net::IpAddr;

use clap::Args;

use super::UnknownUserStatus;
use crate::auth::ForwardedHeader;
use crate::config::ConfigError;

/// The HTTP front door, as flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// Bearer token required by the admin routes. Without it, admin routes
    /// answer only to clients on the loopback interface.
    #[arg(
        long,
        env = "SIGNAL_ADMIN_TOKEN",
        hide_env_values = true,
        help_heading = "HTTP"
    )]
    pub admin_token: Option<String>,

    /// Origins allowed besides the gateway's own (repeatable, or
    /// comma-separated); `*` allows every origin.
    #[arg(
        long = "allow-origin",
        env = "SIGNAL_ALLOW_ORIGIN",
        value_delimiter = ',',
        help_heading = "HTTP"
    )]
    pub allow_origins: Vec<String>,

    /// Reverse proxies whose forwarding headers are believed (repeatable, or
    /// comma-separated IPs). Per-IP limits and the admin loopback rule then
    /// apply to the address the proxy reports, not to the proxy.
    #[arg(
        long = "trusted-proxy",
        env = "SIGNAL_TRUSTED_PROXY",
        value_delimiter = ',',
        help_heading = "HTTP"
    )]
    pub trusted_proxies: Vec<IpAddr>,

    /// The header the trusted proxies write the client's address (and the
    /// host and scheme it used) in; the other one is never read.
    #[arg(
        long,
        env = "SIGNAL_FORWARDED_HEADER",
        value_enum,
        default_value = "x-forwarded-for",
        help_heading = "HTTP"
    )]
    pub forwarded_header: ForwardedHeader,

    /// What `GET /v1/user` answers for a missing or unknown token, with the
    /// session cookies cleared either way: 404 (the documented contract) or
    /// 401 (what the seed's server answered: its web app goes back to its
    /// register page only on 401).
    #[arg(
        long,
        env = "SIGNAL_UNKNOWN_USER_STATUS",
        value_enum,
        default_value = "404",
        help_heading = "HTTP"
    )]
    pub unknown_user_status: UnknownUserStatus,

    /// Host names (`host` or `host:port`) the gateway is reached under,
    /// besides loopback names (repeatable, or comma-separated). Without
    /// --admin-token, admin routes answer only requests addressed to a
    /// loopback name or one of these, which refuses DNS-rebinding pages.
    #[arg(
        long = "public-host",
        env = "SIGNAL_PUBLIC_HOST",
        value_delimiter = ',',
        help_heading = "HTTP"
    )]
    pub public_hosts: Vec<String>,
}

impl HttpArgs {
    /// Every --allow-origin value that is not an origin.
    pub fn problems(&self) -> impl Iterator<Item = ConfigError> + '_ {
        self.allow_origins
            .iter()
            .filter(|origin| {
                *origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://"))
            })
            .map(|origin| ConfigError::BadOrigin(origin.clone()))
    }
}
