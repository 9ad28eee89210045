//! The rules a username must follow.
//!
//! Names are shown to other people, so they must be printable and must not
//! hide characters: 1–64 Unicode characters; no control characters; no
//! invisible formatting characters (zero-width spaces and joiners, bidi
//! overrides, BOM); the only whitespace allowed is U+0020 SPACE, and not at
//! either end nor twice in a row. Names are case-sensitive and compared byte
//! for byte.

/// Longest username, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;

/// Why a username is refused; the text goes back to the client as-is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsernameError {
    /// Empty.
    #[error("username cannot be empty")]
    Empty,
    /// Longer than [`MAX_USERNAME_CHARS`].
    #[error("username is longer than 64 characters")]
    TooLong,
    /// Starts or ends with a space, or has two spaces in a row.
    #[error("username must not start or end with a space or contain two spaces in a row")]
    Spacing,
    /// Holds a character that is not allowed.
    #[error("username contains a character that is not allowed: U+{0:04X}")]
    Forbidden(u32),
}

/// Checks `name` against the username rules.
pub fn validate_username(name: &str) -> Result<(), UsernameError> {
    if name.is_empty() {
        return Err(UsernameError::Empty);
    }
    if name.chars().count() > MAX_USERNAME_CHARS {
        return Err(UsernameError::TooLong);
    }
    if let Some(bad) = name.chars().find(|c| is_forbidden(*c)) {
        return Err(UsernameError::Forbidden(u32::from(bad)));
    }
    if name.starts_with(' ') || name.ends_with(' ') || name.contains("  ") {
        return Err(UsernameError::Spacing);
    }
    Ok(())
}

fn is_forbidden(c: char) -> bool {
    c.is_control() || (c.is_whitespace() && c != ' ') || is_invisible_format(c)
}

/// Unicode general category Cf (format characters): invisible characters
/// that can make two different names look the same.
fn is_invisible_format(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "alice",
            "Bob_2",
            "josé",
            "李雷",
            "a.b-c@d",
            "Mary Ann",
            "x",
            &"y".repeat(64),
        ] {
            assert_eq!(validate_username(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn refuses_what_the_rules_forbid() {
        let cases = [
            ("", UsernameError::Empty),
            (&"y".repeat(65) as &str, UsernameError::TooLong),
            (" alice", UsernameError::Spacing),
            ("alice ", UsernameError::Spacing),
            ("a  b", UsernameError::Spacing),
            ("   ", UsernameError::Spacing),
            ("a\tb", UsernameError::Forbidden(0x09)),
            ("a\nb", UsernameError::Forbidden(0x0A)),
            ("a\u{0}b", UsernameError::Forbidden(0)),
            ("a\u{200B}b", UsernameError::Forbidden(0x200B)),
            ("a\u{202E}b", UsernameError::Forbidden(0x202E)),
            ("a\u{A0}b", UsernameError::Forbidden(0xA0)),
            ("\u{FEFF}", UsernameError::Forbidden(0xFEFF)),
        ];
        for (name, expected) in cases {
            assert_eq!(validate_username(name), Err(expected), "{name:?}");
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(validate_username(&"é".repeat(64)), Ok(()));
        assert_eq!(
            validate_username(&"é".repeat(65)),
            Err(UsernameError::TooLong)
        );
    }
}
