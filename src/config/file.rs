//! The configuration file (`--config`, `SIGNAL_CONFIG`), and where each
//! setting came from.
//!
//! The keys are not a second list kept by hand: a flag's key is its long
//! name, in the section its `--help` heading names (`Limits` → `[limits]`),
//! so a new flag has a key, a line in `default-config` and a source in
//! `print-config` the moment it exists. File values go in where neither a
//! flag nor the environment set the setting, as the flags they stand for,
//! and clap parses everything again: a file obeys exactly the rules (value
//! parsers, `requires`, conflicts) the command line does.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches};
use toml_edit::{Item, Value};

use super::{Cli, Command, Config};

/// Arguments that are not settings of the gateway.
const NOT_SETTINGS: [&str; 3] = ["help", "version", "config"];

/// Settings a reload (SIGHUP) applies to the running gateway; every other
/// change waits for a restart.
pub const LIVE_KEYS: [&str; 23] = [
    "cert",
    "key",
    "cert-dir",
    "san",
    "admin-token",
    "allow-origin",
    "jwt-secret",
    "jwt-secret-file",
    "jwt-public-key",
    "jwks-url",
    "jwks-refresh-min",
    "jwks-timeout",
    "jwks-max-bytes",
    "jwks-redirects",
    "jwt-issuer",
    "jwt-audience",
    "jwt-username-claim",
    "stun-url",
    "turn-url",
    "turn-secret",
    "turn-secret-file",
    "turn-ttl",
    "log-level",
];

/// One setting, as the file and `--help` know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// clap's id of the argument.
    pub id: String,
    /// The section: the `--help` heading, lower-case.
    pub section: String,
    /// The key: the flag's long name.
    pub name: String,
    /// The environment variable.
    pub env: Option<String>,
    /// A secret (its environment value is hidden from `--help`): shown
    /// redacted.
    pub secret: bool,
    /// An on/off flag, written as a TOML boolean.
    pub switch: bool,
    /// Takes a list.
    pub list: bool,
    /// The default, as the flag would be given.
    pub defaults: Vec<String>,
    /// The flag's `--help` text.
    pub help: String,
}

impl Key {
    /// `[section] name`, as messages name it.
    pub fn label(&self) -> String {
        format!("[{}] {}", self.section, self.name)
    }
}

/// The section a `--help` heading stands for.
fn section_of(heading: &str) -> String {
    heading.to_ascii_lowercase().replace(' ', "-")
}

/// Every setting, in `--help` order.
pub fn keys() -> Vec<Key> {
    keys_of(&Cli::command())
}

fn keys_of(command: &clap::Command) -> Vec<Key> {
    command
        .get_arguments()
        .filter(|arg| !NOT_SETTINGS.contains(&arg.get_id().as_str()))
        .filter_map(|arg| {
            let name = arg.get_long()?.to_owned();
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            Some(Key {
                id: arg.get_id().to_string(),
                section: arg.get_help_heading().map(section_of).unwrap_or_default(),
                name,
                env: arg.get_env().map(|env| env.to_string_lossy().into_owned()),
                secret: arg.is_hide_env_values_set(),
                switch: matches!(arg.get_action(), ArgAction::SetTrue),
                list: matches!(arg.get_action(), ArgAction::Append),
                defaults: arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect(),
                help,
            })
        })
        .collect()
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// Its environment variable.
    Env,
    /// The configuration file, at this line.
    File(usize),
    /// Its default.
    Default,
    /// Nothing: the setting is off.
    Unset,
}

/// One setting's effective value and where it came from.
#[derive(Debug, Clone)]
pub struct Setting {
    /// Which setting.
    pub key: Key,
    /// Its values, as the flag would be given (none when unset).
    pub values: Vec<String>,
    /// Where they came from.
    pub source: Source,
}

/// A configuration with where each of its settings came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The subcommand, if any.
    pub command: Option<Command>,
    /// The configuration.
    pub config: Config,
    /// The configuration file, if one was read.
    pub file: Option<PathBuf>,
    /// Every setting, in `--help` order.
    pub settings: Vec<Setting>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// clap's own answer: `--help`, `--version`, or a flag or environment
    /// variable it refused (print and exit as clap does).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// Problems with the configuration file, each naming the file, line
    /// and key.
    #[error("{}", .0.join("\n"))]
    File(Vec<String>),
}

/// A key the file sets.
#[derive(Debug)]
struct Entry {
    /// Index into the keys.
    key: usize,
    /// The values, as the flag would be given.
    values: Vec<String>,
    /// Line of the key in the file (1-based).
    line: usize,
}

/// Parses the command line (`args`, program name first), the environment
/// and the configuration file it names, flag over environment over file
/// over default.
pub fn load<I, T>(args: I) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.is_empty() {
        args.push("signal-gateway".into());
    }
    let command = Cli::command();
    // A first, forgiving pass only to learn the file's name and which
    // settings flags and environment already give (a flag may need a
    // partner that only the file has).
    let first = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&args)?;
    let file = first.get_one::<PathBuf>("config").cloned();
    let keys = keys_of(&command);
    let entries = match &file {
        Some(path) => read_file(path, &keys, &command)?,
        None => Vec::new(),
    };
    let mut injected = Vec::new();
    let mut from_file = BTreeSet::new();
    for entry in &entries {
        let key = &keys[entry.key];
        if matches!(
            first.value_source(&key.id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        from_file.insert(entry.key);
        injected.extend(flag_args(key, &entry.values));
    }
    let mut full = args.clone();
    full.splice(1..1, injected);
    let matches = match command.clone().try_get_matches_from(&full) {
        Ok(matches) => matches,
        Err(err) => {
            // Blame the file only when flags and environment alone parse.
            let alone = command.try_get_matches_from(&args);
            return Err(match (&file, alone) {
                (Some(file), Ok(_)) => explain_clap(&err, &keys, &entries, &from_file, file),
                _ => LoadError::Clap(err),
            });
        }
    };
    let cli = Cli::from_arg_matches(&matches)?;
    let settings = keys
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let values: Vec<String> = matches
                .get_raw(&key.id)
                .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let line = entries.iter().find(|e| e.key == index).map(|e| e.line);
            let source = match (matches.value_source(&key.id), line) {
                (_, Some(line)) if from_file.contains(&index) => Source::File(line),
                (Some(ValueSource::CommandLine), _) => Source::Flag,
                (Some(ValueSource::EnvVariable), _) => Source::Env,
                (Some(ValueSource::DefaultValue), _) => Source::Default,
                _ => Source::Unset,
            };
            Setting {
                key: key.clone(),
                values,
                source,
            }
        })
        .collect();
    Ok(Loaded {
        command: cli.command,
        config: cli.config,
        file,
        settings,
    })
}

/// The flags that stand for a file value.
fn flag_args(key: &Key, values: &[String]) -> Vec<OsString> {
    if key.switch {
        return if values.iter().any(|v| v == "true") {
            vec![format!("--{}", key.name).into()]
        } else {
            Vec::new()
        };
    }
    values
        .iter()
        .map(|value| format!("--{}={value}", key.name).into())
        .collect()
}

/// Reads and checks the file: every problem at once, each with its line.
fn read_file(path: &Path, keys: &[Key], command: &clap::Command) -> Result<Vec<Entry>, LoadError> {
    let where_ = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|err| LoadError::File(vec![format!("{where_}: {err}")]))?;
    let document = toml_edit::Document::parse(text.as_str()).map_err(|err| {
        let line = err.span().map_or(0, |span| line_of(&text, span.start));
        LoadError::File(vec![format!(
            "{where_}:{line}: not TOML: {}",
            err.message().trim_end()
        )])
    })?;
    // Values are parsed one by one with the flags' own parsers, without
    // the environment, so each problem is reported against its key.
    let probe = command.clone().mut_args(|arg| arg.env(None));
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    for (section, item) in document.as_table().iter() {
        let section_line = document
            .as_table()
            .get_key_value(section)
            .and_then(|(key, _)| key.span())
            .map_or(0, |span| line_of(&text, span.start));
        let Some(table) = item.as_table_like() else {
            problems.push(format!(
                "{where_}:{section_line}: `{section}` is outside any section: {}",
                match keys.iter().find(|k| k.name == section) {
                    Some(key) => format!("put it under [{}]", key.section),
                    None => "settings belong in sections like [listen] or [limits]".to_owned(),
                }
            ));
            continue;
        };
        if !keys.iter().any(|k| k.section == section) {
            problems.push(format!(
                "{where_}:{section_line}: unknown section [{section}]; the sections are {}",
                sections(keys)
                    .iter()
                    .map(|s| format!("[{s}]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        }
        for (name, value) in table.iter() {
            let line = table
                .get_key_value(name)
                .and_then(|(key, _)| key.span())
                .map_or(section_line, |span| line_of(&text, span.start));
            let at = format!("{where_}:{line}: [{section}] {name}");
            let Some(index) = keys
                .iter()
                .position(|k| k.section == section && k.name == name)
            else {
                problems.push(match keys.iter().find(|k| k.name == name) {
                    Some(key) => format!("{at}: belongs in [{}], not [{section}]", key.section),
                    None => format!("{at}: unknown key"),
                });
                continue;
            };
            let key = &keys[index];
            let values = match toml_values(key, value) {
                Ok(values) => values,
                Err(why) => {
                    problems.push(format!("{at}: {why}"));
                    continue;
                }
            };
            if !key.switch {
                let mut probe_args = vec![OsString::from("signal-gateway")];
                probe_args.extend(flag_args(key, &values));
                if let Err(err) = probe.clone().try_get_matches_from(probe_args)
                    && is_value_error(&err)
                {
                    problems.push(format!("{at}: {}", first_line(&err)));
                    continue;
                }
            }
            entries.push(Entry {
                key: index,
                values,
                line,
            });
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(LoadError::File(problems))
    }
}

/// A file value as the strings its flag would be given.
fn toml_values(key: &Key, item: &Item) -> Result<Vec<String>, String> {
    let Some(value) = item.as_value() else {
        return Err("expected a value, not a table".to_owned());
    };
    if key.switch {
        return match value.as_bool() {
            Some(on) => Ok(vec![on.to_string()]),
            None => Err(format!("expected true or false, not {}", value.type_name())),
        };
    }
    match value {
        Value::Array(array) if key.list => array.iter().map(scalar).collect(),
        Value::Array(_) => Err("takes one value, not a list".to_owned()),
        scalar_value => scalar(scalar_value).map(|v| vec![v]),
    }
}

fn scalar(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.value().clone()),
        Value::Integer(i) => Ok(i.value().to_string()),
        Value::Float(f) => Ok(f.value().to_string()),
        Value::Boolean(b) => Ok(b.value().to_string()),
        Value::Datetime(d) => Ok(d.value().to_string()),
        Value::Array(_) | Value::InlineTable(_) => {
            Err(format!("expected a value, not {}", value.type_name()))
        }
    }
}

/// Whether clap refused a value itself (rather than how flags combine).
fn is_value_error(err: &clap::Error) -> bool {
    use clap::error::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::InvalidValue
            | ErrorKind::ValueValidation
            | ErrorKind::TooManyValues
            | ErrorKind::TooFewValues
            | ErrorKind::WrongNumberOfValues
            | ErrorKind::InvalidUtf8
            | ErrorKind::NoEquals
    )
}

/// clap's message on one line, without its `error:` prefix, usage and
/// advice.
fn first_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned()
}

/// A refusal of the whole that the file's values caused, with the lines of
/// the file's keys it names.
fn explain_clap(
    err: &clap::Error,
    keys: &[Key],
    entries: &[Entry],
    from_file: &BTreeSet<usize>,
    file: &Path,
) -> LoadError {
    let message = first_line(err);
    let mut involved: Vec<String> = Vec::new();
    for flag in flags_named(&message) {
        let place = keys.iter().position(|k| k.name == flag).and_then(|index| {
            let entry = entries
                .iter()
                .find(|e| e.key == index && from_file.contains(&index))?;
            Some(format!("{} at line {}", keys[index].label(), entry.line))
        });
        if let Some(place) = place
            && !involved.contains(&place)
        {
            involved.push(place);
        }
    }
    let involved = if involved.is_empty() {
        String::new()
    } else {
        format!(" ({})", involved.join(", "))
    };
    LoadError::File(vec![format!("{}: {message}{involved}", file.display())])
}

/// The `--flag` names a message mentions.
fn flags_named(message: &str) -> impl Iterator<Item = &str> {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter_map(|word| word.strip_prefix("--"))
        .filter(|name| !name.is_empty())
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The sections, in `--help` order.
fn sections(keys: &[Key]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for key in keys {
        if !seen.contains(&key.section) {
            seen.push(key.section.clone());
        }
    }
    seen
}

impl Loaded {
    /// `message` (a configuration error naming flags) with the file lines
    /// that set those flags, so an operator finds what to fix.
    pub fn explain(&self, message: &str) -> String {
        let Some(file) = &self.file else {
            return message.to_owned();
        };
        let mut named = Vec::new();
        for flag in flags_named(message) {
            if let Some(setting) = self.settings.iter().find(|s| s.key.name == flag)
                && let Source::File(line) = setting.source
            {
                let place = format!("{} at line {line}", setting.key.label());
                if !named.contains(&place) {
                    named.push(place);
                }
            }
        }
        if named.is_empty() {
            message.to_owned()
        } else {
            format!("{message} ({}: {})", file.display(), named.join(", "))
        }
    }

    /// What differs from `newer`: settings a reload applies, and those
    /// that wait for a restart, as `[section] key`.
    pub fn changes(&self, newer: &Loaded) -> (Vec<String>, Vec<String>) {
        let mut live = Vec::new();
        let mut restart = Vec::new();
        for (old, new) in self.settings.iter().zip(&newer.settings) {
            if old.values != new.values {
                if LIVE_KEYS.contains(&old.key.name.as_str()) {
                    live.push(old.key.label());
                } else {
                    restart.push(old.key.label());
                }
            }
        }
        (live, restart)
    }

    /// The effective configuration as TOML, with each value's source and
    /// secrets redacted (`print-config`).
    pub fn print(&self) -> String {
        let mut out = String::from(
            "# The effective configuration of signal-gateway: each setting's value and where it\n\
             # came from (flag > environment > file > default). Secrets are redacted.\n",
        );
        if let Some(file) = &self.file {
            let _ = writeln!(out, "# File: {}", file.display());
        }
        let keys: Vec<Key> = self.settings.iter().map(|s| s.key.clone()).collect();
        for section in sections(&keys) {
            let _ = write!(out, "\n[{section}]\n");
            for setting in self.settings.iter().filter(|s| s.key.section == section) {
                let key = &setting.key;
                let source = match &setting.source {
                    Source::Flag => format!("flag --{}", key.name),
                    Source::Env => format!("environment {}", key.env.as_deref().unwrap_or("")),
                    Source::File(line) => match &self.file {
                        Some(file) => format!("file {}:{line}", file.display()),
                        None => "file".to_owned(),
                    },
                    Source::Default => "default".to_owned(),
                    Source::Unset => "not set".to_owned(),
                };
                let value = if setting.values.is_empty() && !key.switch {
                    None
                } else if key.secret {
                    Some("\"<redacted>\"".to_owned())
                } else {
                    Some(toml_text(key, &setting.values))
                };
                match value {
                    Some(value) => {
                        let _ = writeln!(out, "{} = {value}  # {source}", key.name);
                    }
                    None => {
                        let _ = writeln!(out, "# {} is {source}", key.name);
                    }
                }
            }
        }
        out
    }
}

/// The commented configuration file with every key and its default
/// (`default-config`, and `deploy/config.toml`).
pub fn default_config() -> String {
    let keys = keys();
    let mut out = String::from(
        "# signal-gateway configuration (TOML), as `signal-gateway default-config` writes it.\n\
         #\n\
         # Every command-line flag has a key here: the flag's name without `--`, in the\n\
         # section its `--help` heading names. A flag beats its SIGNAL_* environment\n\
         # variable, which beats this file, which beats the default. The lines below are\n\
         # commented out, so each shows its default; uncomment and change what you need.\n\
         # Check a file with `signal-gateway check-config --config FILE`, see what is in\n\
         # effect with `signal-gateway print-config --config FILE`; SIGHUP reloads it.\n",
    );
    for section in sections(&keys) {
        let _ = write!(out, "\n[{section}]\n");
        for key in keys.iter().filter(|k| k.section == section) {
            out.push('\n');
            for line in wrap(&key.help, 78) {
                let _ = writeln!(out, "#{}{line}", if line.is_empty() { "" } else { " " });
            }
            let mut names = format!("# --{}", key.name);
            if let Some(env) = &key.env {
                let _ = write!(names, ", {env}");
            }
            if LIVE_KEYS.contains(&key.name.as_str()) {
                names.push_str("; reloaded by SIGHUP");
            }
            let _ = writeln!(out, "{names}");
            if key.defaults.is_empty() && !key.switch && !key.list {
                let _ = writeln!(out, "#{} =", key.name);
            } else {
                let _ = writeln!(out, "#{} = {}", key.name, toml_text(key, &key.defaults));
            }
        }
    }
    out
}

/// Values as TOML text: a boolean for a switch, an array for a list, an
/// integer when it is one, a string otherwise.
fn toml_text(key: &Key, values: &[String]) -> String {
    if key.switch {
        return values.iter().any(|v| v == "true").to_string();
    }
    let one = |value: &String| {
        if !value.is_empty() && value.len() < 19 && value.bytes().all(|b| b.is_ascii_digit()) {
            value.clone()
        } else {
            format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
        }
    };
    if key.list {
        format!(
            "[{}]",
            values.iter().map(one).collect::<Vec<_>>().join(", ")
        )
    } else {
        values.first().map(one).unwrap_or_default()
    }
}

/// `text` in lines of at most `width` characters (longer words alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split("\n\n") {
        if !lines.is_empty() {
            lines.push(String::new());
        }
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_live_key_is_a_key() {
        let names: Vec<String> = keys().into_iter().map(|k| k.name).collect();
        for live in LIVE_KEYS {
            assert!(names.iter().any(|n| n == live), "{live} is not a flag");
        }
    }

    #[test]
    fn lines_are_counted_from_one() {
        let text = "[a]\nb = 1\n";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 4), 2);
        assert_eq!(line_of(text, 999), 3);
    }

    #[test]
    fn help_is_wrapped_without_breaking_words() {
        let lines = wrap("one two three four\n\nfive", 9);
        assert_eq!(lines, ["one two", "three", "four", "", "five"]);
    }

    #[test]
    fn values_are_written_as_toml_reads_them() {
        let key = |switch, list| Key {
            id: String::new(),
            section: String::new(),
            name: String::new(),
            env: None,
            secret: false,
            switch,
            list,
            defaults: Vec::new(),
            help: String::new(),
        };
        let strings = |values: &[&str]| values.iter().map(|v| v.to_string()).collect::<Vec<_>>();
        assert_eq!(toml_text(&key(true, false), &strings(&["true"])), "true");
        assert_eq!(toml_text(&key(false, false), &strings(&["50000"])), "50000");
        assert_eq!(toml_text(&key(false, false), &strings(&["10s"])), "\"10s\"");
        assert_eq!(
            toml_text(&key(false, true), &strings(&["a\"b", "c"])),
            "[\"a\\\"b\", \"c\"]"
        );
    }
}
