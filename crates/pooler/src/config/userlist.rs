//! PgBouncer's `auth_file` (userlist.txt): `"user" "secret"` per line, where the secret
//! is a plaintext password, an md5 secret (`md5...`) or a SCRAM secret.

use std::path::Path;

use super::{ConfigError, Origin};

pub fn read(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        file: path.to_path_buf(),
        message: format!("cannot read auth_file: {e}"),
    })?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let origin = Origin {
            file: path.to_path_buf(),
            line: i + 1,
        };
        let trimmed = line.trim_start();
        // Like PgBouncer: only lines starting with a quote are entries.
        if !trimmed.starts_with('"') {
            continue;
        }
        let mut rest = trimmed;
        let user = quoted(&mut rest).ok_or_else(|| ConfigError::at(&origin, "broken quoting of user name"))?;
        rest = rest.trim_start();
        let secret = quoted(&mut rest).ok_or_else(|| ConfigError::at(&origin, "expected \"user\" \"password\""))?;
        out.push((user, secret));
    }
    Ok(out)
}

/// Reads a `"..."` string with `""` as an escaped quote.
fn quoted(rest: &mut &str) -> Option<String> {
    let mut chars = rest.strip_prefix('"')?.char_indices().peekable();
    let body = rest.strip_prefix('"')?;
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if chars.peek().map(|(_, c)| *c) == Some('"') {
                chars.next();
                out.push('"');
                continue;
            }
            *rest = &body[i + 1..];
            return Some(out);
        }
        out.push(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_userlist() {
        let text = "\"alice\" \"pw\"\n; comment\n\"bo\"\"b\" \"md5abc\" extra\n";
        let got = parse(text, Path::new("userlist.txt")).unwrap();
        assert_eq!(
            got,
            vec![("alice".into(), "pw".into()), ("bo\"b".into(), "md5abc".into())]
        );
        let err = parse("\"alice\" pw", Path::new("u.txt")).unwrap_err();
        assert!(err.to_string().starts_with("u.txt:1:"), "{err}");
    }
}
