//! A secret given as a value or as a file holding it: the `--x` and
//! `--x-file` pair every secret flag comes as (one clap group, so at most
//! one of the two is given).

use std::path::{Path, PathBuf};

use super::ConfigError;

/// One secret flag pair, as parsed.
#[derive(Debug, Clone, Copy)]
pub struct Secret<'a> {
    /// `--x`: the secret itself.
    pub value: Option<&'a String>,
    /// `--x-file`: a file holding it.
    pub file: Option<&'a PathBuf>,
    /// The file flag's name, for messages.
    pub file_flag: &'static str,
}

impl Secret<'_> {
    /// Whether either flag is given.
    pub fn is_given(&self) -> bool {
        self.value.is_some() || self.file.is_some()
    }

    /// The secret as bytes: the value, or the file without trailing
    /// whitespace (a key never ends in a space).
    pub fn bytes(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        match (self.value, self.file) {
            (Some(value), _) => Ok(Some(value.as_bytes().to_vec())),
            (None, Some(path)) => std::fs::read(path)
                .map(|secret| Some(secret.trim_ascii_end().to_vec()))
                .map_err(|err| self.unreadable(path, &err)),
            (None, None) => Ok(None),
        }
    }

    /// The secret as text: the value, or the file without its trailing
    /// line break (a password may end in a space).
    pub fn text(&self) -> Result<Option<String>, ConfigError> {
        match (self.value, self.file) {
            (Some(value), _) => Ok(Some(value.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|text| Some(text.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|err| self.unreadable(path, &err)),
            (None, None) => Ok(None),
        }
    }

    fn unreadable(&self, path: &Path, err: &std::io::Error) -> ConfigError {
        ConfigError::SecretFile {
            flag: self.file_flag,
            path: path.to_path_buf(),
            reason: err.to_string(),
        }
    }
}
