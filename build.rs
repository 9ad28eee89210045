//! Records the commit this binary is built from, for the `build_info` metric
//! and `--version`; "unknown" outside a git checkout (a source tarball).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|commit| commit.trim().to_owned())
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SIGNAL_GATEWAY_COMMIT={commit}");
    // A commit moves HEAD's reflog; a missing path would rerun this on
    // every build, so only existing ones are watched.
    println!("cargo:rerun-if-changed=build.rs");
    for watched in [".git/HEAD", ".git/logs/HEAD"] {
        if std::path::Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
}
