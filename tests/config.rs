//! The configuration file and its subcommands, through the real binary:
//! precedence (flag > environment > file > default), problems named with
//! file, line and key, `check-config`, `print-config`, `default-config`
//! (and that `deploy/config.toml` is its output), and that no flag lacks a
//! key or a row in the README's configuration table.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use common::within;
use signal_gateway::config::file::keys;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Runs the binary with `args` and `env` (and no other `SIGNAL_*`
/// variable), waiting for it to exit.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_signal-gateway"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SIGNAL_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    within("the binary exits", command.output())
        .await
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The line of `print-config` output for `key`.
fn line_for<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|line| {
            line.starts_with(&format!("{key} = ")) || line.starts_with(&format!("# {key} is "))
        })
        .unwrap_or_else(|| panic!("no line for {key} in:\n{printed}"))
}

#[tokio::test]
async fn deploy_config_toml_is_what_default_config_prints() {
    let output = run(&["default-config"], &[]).await;
    assert!(output.status.success(), "{}", text(&output));
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        read("deploy/config.toml"),
        printed,
        "deploy/config.toml differs from `signal-gateway default-config`: regenerate it with\n  cargo run -q -- default-config > deploy/config.toml"
    );
    // Everything in it is commented out: loading it changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "config.toml", &printed);
    let output = run(&["print-config", "--config", &file], &[]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("# file "),
        "nothing comes from the default file"
    );
}

#[test]
fn every_flag_has_a_key_and_a_row_in_the_readme_table() {
    let default_config = read("deploy/config.toml");
    let readme = read("README.md");
    let table_start = readme
        .find("| Flag | Section | Default | Meaning |")
        .expect("README: the configuration table");
    let rows: Vec<Vec<String>> = readme[table_start..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().replace('`', ""))
                .collect()
        })
        .collect();
    let mut documented = BTreeSet::new();
    for row in &rows {
        for flag in row[0].split(", ") {
            let name = flag
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("README row {row:?}: {flag:?} is not a flag"));
            documented.insert((name.to_owned(), row[1].clone()));
        }
    }
    let keys = keys();
    assert!(keys.len() > 60, "{} keys", keys.len());
    for key in &keys {
        assert!(
            !key.section.is_empty(),
            "--{} has no --help heading",
            key.name
        );
        assert!(
            documented.contains(&(key.name.clone(), format!("[{}]", key.section))),
            "README configuration table: no row for --{} in section [{}]",
            key.name,
            key.section
        );
        let section = default_config
            .find(&format!("\n[{}]\n", key.section))
            .unwrap_or_else(|| panic!("deploy/config.toml: no [{}]", key.section));
        let line = default_config
            .find(&format!("\n#{} =", key.name))
            .unwrap_or_else(|| panic!("deploy/config.toml: no key {}", key.name));
        assert!(section < line, "{} under [{}]", key.name, key.section);
        assert!(
            key.env.as_deref()
                == Some(&format!(
                    "SIGNAL_{}",
                    key.name.to_uppercase().replace('-', "_")
                )),
            "--{} has the environment variable {:?}",
            key.name,
            key.env
        );
    }
    let flags: BTreeSet<String> = keys.iter().map(|k| k.name.clone()).collect();
    for (name, _) in &documented {
        if name != "config" {
            assert!(
                flags.contains(name),
                "README lists --{name}, which is not a flag"
            );
        }
    }
}

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_file_which_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "gateway.toml",
        "# a comment\n\
         [listen]\n\
         listen = \"127.0.0.1:7001\"\n\
         \n\
         [limits]\n\
         max-connections = 111\n\
         idle-timeout = \"30s\"\n\
         \n\
         [http]\n\
         allow-origin = [\"https://a.example\", \"https://b.example\"]\n\
         \n\
         [turn]\n\
         turn-ttl = \"2h\"\n",
    );
    let output = run(
        &[
            "--listen",
            "127.0.0.1:7003",
            "print-config",
            "--config",
            &file,
        ],
        &[
            ("SIGNAL_LISTEN", "127.0.0.1:7002"),
            ("SIGNAL_MAX_CONNECTIONS", "222"),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        line_for(&printed, "listen"),
        "listen = \"127.0.0.1:7003\"  # flag --listen"
    );
    assert_eq!(
        line_for(&printed, "max-connections"),
        "max-connections = 222  # environment SIGNAL_MAX_CONNECTIONS"
    );
    assert_eq!(
        line_for(&printed, "idle-timeout"),
        format!("idle-timeout = \"30s\"  # file {file}:7")
    );
    assert_eq!(
        line_for(&printed, "allow-origin"),
        format!("allow-origin = [\"https://a.example\", \"https://b.example\"]  # file {file}:10")
    );
    assert_eq!(
        line_for(&printed, "turn-ttl"),
        format!("turn-ttl = \"2h\"  # file {file}:13")
    );
    assert_eq!(
        line_for(&printed, "write-timeout"),
        "write-timeout = \"5s\"  # default"
    );
    assert_eq!(line_for(&printed, "wt-listen"), "# wt-listen is not set");

    // SIGNAL_CONFIG names the file as --config does.
    let output = run(&["print-config"], &[("SIGNAL_CONFIG", &file)]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        line_for(&String::from_utf8_lossy(&output.stdout), "listen"),
        format!("listen = \"127.0.0.1:7001\"  # file {file}:3")
    );
}

#[tokio::test]
async fn secrets_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "gateway.toml",
        "[http]\nadmin-token = \"admin-secret-in-file\"\n[cluster]\nredis = \"redis://:secret-in-the-redis-url@127.0.0.1:6379\"\n",
    );
    let output = run(
        &["print-config", "--config", &file],
        &[(
            "SIGNAL_JWT_SECRET",
            "jwt-secret-in-the-environment-0123456789",
        )],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
    let printed = String::from_utf8(output.stdout).unwrap();
    for secret in [
        "admin-secret-in-file",
        "secret-in-the-redis-url",
        "jwt-secret-in-the-environment",
    ] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    assert_eq!(
        line_for(&printed, "admin-token"),
        format!("admin-token = \"<redacted>\"  # file {file}:2")
    );
    assert_eq!(
        line_for(&printed, "jwt-secret"),
        "jwt-secret = \"<redacted>\"  # environment SIGNAL_JWT_SECRET"
    );
}

#[tokio::test]
async fn file_problems_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "broken.toml",
        "[listen]\n\
         tls = \"yes\"\n\
         listen = 8000\n\
         [limits]\n\
         max-connections = 0\n\
         idle-timout = \"5s\"\n\
         max-body-bytes = [1, 2]\n\
         [jwt]\n\
         turn-url = \"turn:example.net\"\n\
         [nonsense]\n\
         a = 1\n",
    );
    for args in [
        vec!["check-config", "--config", &file],
        vec!["--config", &file, "--listen", "127.0.0.1:0"],
    ] {
        let output = run(&args, &[]).await;
        let log = text(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {log}");
        for expected in [
            format!("{file}:2: [listen] tls: expected true or false, not string"),
            format!("{file}:3: [listen] listen: invalid value '8000'"),
            format!("{file}:5: [limits] max-connections: invalid value '0'"),
            format!("{file}:6: [limits] idle-timout: unknown key"),
            format!("{file}:7: [limits] max-body-bytes: takes one value, not a list"),
            format!("{file}:9: [jwt] turn-url: belongs in [turn], not [jwt]"),
            format!("{file}:10: unknown section [nonsense]"),
        ] {
            assert!(log.contains(&expected), "{args:?}: {expected:?} in\n{log}");
        }
    }

    let not_toml = write(dir.path(), "not.toml", "[limits]\nmax-connections = = 3\n");
    let output = run(&["check-config", "--config", &not_toml], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains(&format!("{not_toml}:2: not TOML")),
        "{}",
        text(&output)
    );

    let output = run(
        &["check-config", "--config", "/nonexistent/gateway.toml"],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("/nonexistent/gateway.toml: No such file"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn check_config_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let make_cert = |name: &str| {
        let certs = dir.path().join(name);
        signal_gateway::tls::generate_dev(&certs, &[]).unwrap();
        signal_gateway::tls::dev_paths(&certs)
    };
    let (cert_a, key_a) = make_cert("a");
    let (_, key_b) = make_cert("b");
    let broken = write(
        dir.path(),
        "broken.toml",
        &format!(
            "[tls]\n\
             cert = \"{}\"\n\
             key = \"{}\"\n\
             [jwt]\n\
             jwt-secret = \"too-short\"\n\
             [cluster]\n\
             redis = \"redis://[not-a-host\"\n\
             [limits]\n\
             idle-timeout = \"5s\"\n\
             keep-alive-interval = \"5s\"\n\
             [turn]\n\
             turn-url = \"turn:127.0.0.1:3478\"\n\
             turn-secret-file = \"{}/missing\"\n",
            cert_a.display(),
            key_b.display(),
            dir.path().display()
        ),
    );
    let output = run(&["check-config", "--config", &broken], &[]).await;
    let log = text(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    for expected in [
        format!("does not match the certificate {}", cert_a.display()),
        "[tls] key at line 3".to_owned(),
        "--jwt-secret must be at least 32 bytes".to_owned(),
        "[jwt] jwt-secret at line 5".to_owned(),
        "--redis is not a usable Redis URL".to_owned(),
        "[cluster] redis at line 7".to_owned(),
        "--keep-alive-interval (5s) must be shorter than --idle-timeout (5s)".to_owned(),
        "[limits] keep-alive-interval at line 10".to_owned(),
        "--turn-secret-file".to_owned(),
        "[turn] turn-secret-file at line 13".to_owned(),
        format!("{broken}: 5 problem(s)"),
    ] {
        assert!(log.contains(&expected), "{expected:?} in\n{log}");
    }
    assert_eq!(
        log.lines().filter(|l| l.starts_with("problem: ")).count(),
        5,
        "{log}"
    );

    let good = write(
        dir.path(),
        "good.toml",
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[jwt]\njwt-secret = \"{}\"\n[log]\nlog-level = \"signal_gateway=debug\"\n",
            cert_a.display(),
            key_a.display(),
            "s".repeat(32)
        ),
    );
    let output = run(&["check-config", "--config", &good], &[]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains(&format!("{good}: configuration ok")));

    // A flag or the environment can fix what the file breaks.
    let output = run(
        &[
            "--key",
            key_a.to_str().unwrap(),
            "check-config",
            "--config",
            &broken,
        ],
        &[
            ("SIGNAL_JWT_SECRET", &"s".repeat(40)),
            ("SIGNAL_REDIS", "redis://127.0.0.1:6379"),
            ("SIGNAL_KEEP_ALIVE_INTERVAL", "2s"),
            ("SIGNAL_TURN_SECRET_FILE", cert_a.to_str().unwrap()),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
}
