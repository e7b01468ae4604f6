//! The console's grammar, as PgBouncer's: `CMD [arg][;]` and `SET key = value`
//! (or `TO`), case-insensitive; identifiers may be double-quoted, values
//! single-quoted with '' for a quote.

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty query string (psql sends one for `;`).
    Empty,
    /// The command word in lower case and its optional argument.
    Cmd {
        name: String,
        arg: Option<String>,
    },
    Set {
        key: String,
        value: String,
    },
}

/// Parses a query string; None if it is not a console command.
pub fn parse(query: &str) -> Option<Command> {
    let q = query.trim();
    let q = q.strip_suffix(';').unwrap_or(q).trim_end();
    if q.is_empty() {
        return Some(Command::Empty);
    }
    let mut lx = Lexer { rest: q };
    let name = lx.word()?.to_ascii_lowercase();
    if name == "set" {
        let key = lx.word()?;
        lx.skip_ws();
        if let Some(r) = lx.rest.strip_prefix('=') {
            lx.rest = r;
        } else {
            let to = lx.word()?;
            if !to.eq_ignore_ascii_case("to") {
                return None;
            }
        }
        lx.skip_ws();
        let value = if lx.rest.starts_with('\'') {
            lx.quoted('\'')?
        } else {
            lx.word()?
        };
        lx.skip_ws();
        return lx.rest.is_empty().then_some(Command::Set { key, value });
    }
    lx.skip_ws();
    let arg = if lx.rest.is_empty() { None } else { Some(lx.word()?) };
    lx.skip_ws();
    lx.rest.is_empty().then_some(Command::Cmd { name, arg })
}

struct Lexer<'a> {
    rest: &'a str,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start();
    }

    /// A bare word (letters, digits, `_`, `.`, `-`) or a double-quoted identifier.
    fn word(&mut self) -> Option<String> {
        self.skip_ws();
        if self.rest.starts_with('"') {
            return self.quoted('"');
        }
        let end = self
            .rest
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '*' | '/' | ':')))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (w, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(w.to_owned())
    }

    /// A string in `q` quotes, with doubled quotes inside.
    fn quoted(&mut self, q: char) -> Option<String> {
        let mut chars = self.rest.char_indices();
        chars.next(); // the opening quote
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            if c == q {
                if self.rest[i + 1..].starts_with(q) {
                    out.push(q);
                    chars.next();
                    continue;
                }
                self.rest = &self.rest[i + 1..];
                return Some(out);
            }
            out.push(c);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(name: &str, arg: Option<&str>) -> Option<Command> {
        Some(Command::Cmd {
            name: name.into(),
            arg: arg.map(str::to_owned),
        })
    }

    #[test]
    fn commands_are_case_insensitive_with_optional_semicolon() {
        assert_eq!(parse("SHOW POOLS;"), cmd("show", Some("POOLS")));
        assert_eq!(parse("  show pools  "), cmd("show", Some("pools")));
        assert_eq!(parse("pause"), cmd("pause", None));
        assert_eq!(parse("PAUSE \"my db\";"), cmd("pause", Some("my db")));
        assert_eq!(parse("KILL_CLIENT 42"), cmd("kill_client", Some("42")));
        assert_eq!(parse(";"), Some(Command::Empty));
        assert_eq!(parse("show pools extra"), None);
        assert_eq!(parse("select 1 + 1"), None);
    }

    #[test]
    fn set_takes_words_or_quoted_strings() {
        assert_eq!(
            parse("SET default_pool_size = 30"),
            Some(Command::Set {
                key: "default_pool_size".into(),
                value: "30".into()
            })
        );
        assert_eq!(
            parse("set server_check_query to 'select ''x'''"),
            Some(Command::Set {
                key: "server_check_query".into(),
                value: "select 'x'".into()
            })
        );
        assert_eq!(parse("set a = 'unterminated"), None);
    }
}
