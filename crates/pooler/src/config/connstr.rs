//! libpq-style `key=value` lists, as PgBouncer's `[databases]` and `[users]` use them:
//! `host=db port=5432 password='it''s \'quoted\''`.

/// Parses `key=value` pairs separated by white space. Values may be single-quoted, with
/// `\'`/`\\` escapes (libpq) or a doubled `''` (PgBouncer accepts both).
pub fn parse(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("missing '=' after '{key}'"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value for '{key}'")),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value for '{key}'")),
                    },
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        value.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if key.is_empty() {
            return Err("empty parameter name".into());
        }
        out.push((key.to_ascii_lowercase(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_values() {
        let p = parse("host=db port = 5432 password='a b\\'c''d' dbname=x").unwrap();
        assert_eq!(
            p,
            vec![
                ("host".into(), "db".into()),
                ("port".into(), "5432".into()),
                ("password".into(), "a b'c'd".into()),
                ("dbname".into(), "x".into())
            ]
        );
        assert!(parse("host").is_err());
        assert!(parse("password='open").is_err());
        assert_eq!(parse("  ").unwrap(), vec![]);
    }
}
