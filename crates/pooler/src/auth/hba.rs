//! `auth_type = hba`: PostgreSQL's pg_hba.conf format (`auth_hba_file`) chooses the
//! authentication method per connection type, database, user and client address. The
//! first line that matches decides; no match refuses the login, as in PostgreSQL.
//!
//! Supported: `local`, `host`, `hostssl`, `hostnossl`; databases `all`, `sameuser`,
//! names, comma lists and `@file`; users `all`, names, lists and `@file`; addresses
//! `all`, CIDR, or an address and a netmask; methods `trust`, `reject`, `md5`,
//! `scram-sha-256`, `password`, `cert`. Anything else is an error at load naming the
//! line, never a rule silently read another way.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// How a matching line wants the client to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    Password,
    Cert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    All,
    /// Databases only: the database named like the user.
    SameUser,
    /// Databases only: replication connections, which Sluice does not pool.
    Replication,
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    All,
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    line: usize,
    conn: ConnType,
    databases: Vec<Name>,
    users: Vec<Name>,
    /// None for `local` lines.
    address: Option<Address>,
    method: Method,
}

/// The rules of one auth_hba_file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HbaRules {
    rules: Vec<Rule>,
}

/// What is known of a connection when its rule is looked up.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// None: a Unix socket.
    pub peer: Option<IpAddr>,
    pub tls: bool,
    pub database: &'a str,
    pub user: &'a str,
}

/// The line that decided, with its method; None: no line matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub line: usize,
    pub method: Method,
}

impl HbaRules {
    /// Reads and parses `path`; errors name the file and line.
    pub fn load(path: &Path) -> Result<HbaRules, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read auth_hba_file {}: {e}", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &dir).map_err(|e| format!("auth_hba_file {}: {e}", path.display()))
    }

    /// Parses the text of a file; `@file` names are read relative to `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<HbaRules, String> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let tokens = tokenize(raw).map_err(|e| format!("line {line}: {e}"))?;
            if tokens.is_empty() {
                continue;
            }
            rules.push(parse_rule(line, &tokens, dir).map_err(|e| format!("line {line}: {e}"))?);
        }
        Ok(HbaRules { rules })
    }

    /// The first rule matching `c`.
    pub fn decide(&self, c: &Connection<'_>) -> Option<Decision> {
        self.rules.iter().find(|r| r.matches(c)).map(|r| Decision {
            line: r.line,
            method: r.method,
        })
    }
}

impl Rule {
    fn matches(&self, c: &Connection<'_>) -> bool {
        let conn_ok = match (self.conn, c.peer) {
            (ConnType::Local, None) => true,
            (ConnType::Host, Some(_)) => true,
            (ConnType::HostSsl, Some(_)) => c.tls,
            (ConnType::HostNoSsl, Some(_)) => !c.tls,
            _ => false,
        };
        let address_ok = match (&self.address, c.peer) {
            (None, _) | (Some(Address::All), _) => true,
            (Some(Address::Net(net)), Some(ip)) => net.contains(&canonical(ip)),
            (Some(Address::Net(_)), None) => false,
        };
        conn_ok
            && address_ok
            && self.databases.iter().any(|d| match d {
                Name::All => true,
                Name::SameUser => c.database == c.user,
                Name::Replication => false,
                Name::Exact(n) => n == c.database,
            })
            && self.users.iter().any(|u| match u {
                Name::All => true,
                Name::Exact(n) => n == c.user,
                Name::SameUser | Name::Replication => false,
            })
    }
}

/// An IPv4 client on a dual-stack socket shows as `::ffff:a.b.c.d`; rules are written
/// for a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One token: its text, and whether it was quoted (a quoted `all` is a name).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    quoted: bool,
}

/// Splits a line into fields at white space, outside double quotes; `#` starts a
/// comment. A field may be a comma-separated list: it stays one token here.
fn tokenize(line: &str) -> Result<Vec<Vec<Token>>, String> {
    let mut fields: Vec<Vec<Token>> = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            None | Some('#') => return Ok(fields),
            _ => {}
        }
        // One field: items separated by commas, no white space between them.
        let mut items = Vec::new();
        loop {
            let mut text = String::new();
            let mut quoted = false;
            while let Some(&c) = chars.peek() {
                if c == '"' {
                    quoted = true;
                    chars.next();
                    loop {
                        match chars.next() {
                            None => return Err("unterminated quoted name".into()),
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                text.push('"');
                            }
                            Some('"') => break,
                            Some(c) => text.push(c),
                        }
                    }
                } else if c == ',' || c.is_whitespace() || c == '#' {
                    break;
                } else {
                    text.push(c);
                    chars.next();
                }
            }
            items.push(Token { text, quoted });
            if chars.peek() == Some(&',') {
                chars.next();
                continue;
            }
            break;
        }
        fields.push(items);
    }
}

fn parse_rule(line: usize, fields: &[Vec<Token>], dir: &Path) -> Result<Rule, String> {
    let word = |i: usize, what: &str| -> Result<&Token, String> {
        match fields.get(i).map(Vec::as_slice) {
            Some([one]) => Ok(one),
            Some(_) => Err(format!("{what} cannot be a list")),
            None => Err(format!("missing {what}")),
        }
    };
    let conn = match word(0, "connection type")?.text.as_str() {
        "local" => ConnType::Local,
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        t @ ("hostgssenc" | "hostnogssenc") => return Err(format!("{t}: GSSAPI encryption is not supported")),
        t => return Err(format!("unknown connection type \"{t}\"")),
    };
    let databases = names(fields.get(1).ok_or("missing database")?, dir, true)?;
    let users = names(fields.get(2).ok_or("missing user")?, dir, false)?;
    let mut next = 3;
    let address = if conn == ConnType::Local {
        None
    } else {
        let a = word(3, "address")?;
        next = 4;
        Some(if a.text == "all" && !a.quoted {
            Address::All
        } else if let Ok(net) = a.text.parse::<IpNet>() {
            Address::Net(net.trunc())
        } else if let Ok(ip) = a.text.parse::<IpAddr>() {
            // An address, then its netmask in the next field.
            let mask = word(4, "netmask")?;
            let mask: IpAddr = mask
                .text
                .parse()
                .map_err(|_| format!("invalid netmask \"{}\"", mask.text))?;
            next = 5;
            Address::Net(
                IpNet::with_netmask(ip, mask)
                    .map_err(|_| format!("invalid netmask \"{mask}\" for {ip}"))?
                    .trunc(),
            )
        } else if matches!(a.text.as_str(), "samehost" | "samenet") {
            return Err(format!("address \"{}\" is not supported: write the network", a.text));
        } else {
            return Err(format!(
                "invalid address \"{}\" (host names are not supported: use an address or CIDR)",
                a.text
            ));
        })
    };
    let method = match word(next, "authentication method")?.text.as_str() {
        "trust" => Method::Trust,
        "reject" => Method::Reject,
        "md5" => Method::Md5,
        "scram-sha-256" => Method::ScramSha256,
        "password" => Method::Password,
        "cert" => Method::Cert,
        m => return Err(format!("unsupported authentication method \"{m}\"")),
    };
    if conn != ConnType::HostSsl && method == Method::Cert {
        return Err("cert authentication is only for hostssl lines".into());
    }
    if fields.len() > next + 1 {
        return Err("options after the method (clientcert=, map=, ...) are not supported".into());
    }
    Ok(Rule {
        line,
        conn,
        databases,
        users,
        address,
        method,
    })
}

/// A database or user field: keywords, names, and `@file` (names listed in a file).
fn names(items: &[Token], dir: &Path, database: bool) -> Result<Vec<Name>, String> {
    let mut out = Vec::new();
    for t in items {
        if t.quoted {
            out.push(Name::Exact(t.text.clone()));
            continue;
        }
        match t.text.as_str() {
            "" => return Err("empty name in a list".into()),
            "all" => out.push(Name::All),
            "sameuser" if database => out.push(Name::SameUser),
            "replication" if database => out.push(Name::Replication),
            k @ ("samerole" | "samegroup") if database => {
                return Err(format!("\"{k}\" is not supported (role membership is PostgreSQL's)"))
            }
            g if g.starts_with('+') => {
                return Err(format!("\"{g}\": group membership is not supported: list the users"))
            }
            f if f.starts_with('@') => {
                let path = resolve(dir, &f[1..]);
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                // Names separated by commas and/or white space.
                for line in text.lines() {
                    for field in tokenize(line)? {
                        let listed: Vec<Token> = field.into_iter().filter(|t| !t.text.is_empty()).collect();
                        out.extend(names(&listed, dir, database)?);
                    }
                }
            }
            n => out.push(Name::Exact(n.to_owned())),
        }
    }
    Ok(out)
}

fn resolve(dir: &Path, name: &str) -> PathBuf {
    let p = PathBuf::from(name);
    if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> HbaRules {
        HbaRules::parse(text, Path::new("/nonexistent")).unwrap()
    }

    fn tcp<'a>(ip: &str, tls: bool, database: &'a str, user: &'a str) -> Connection<'a> {
        Connection {
            peer: Some(ip.parse().unwrap()),
            tls,
            database,
            user,
        }
    }

    fn method(r: &HbaRules, c: Connection<'_>) -> Option<Method> {
        r.decide(&c).map(|d| d.method)
    }

    #[test]
    fn first_matching_line_decides() {
        let r = rules(
            "# comment\n\
             local   all        all                      trust\n\
             hostssl app        alice   10.0.0.0/8       cert\n\
             host    app        alice   10.0.0.0/8       reject   # trailing comment\n\
             hostnossl all      all     127.0.0.1/32     password\n\
             host    sameuser   all     all              scram-sha-256\n\
             host    \"all\",b  bob,carol 192.168.1.0 255.255.255.0 md5\n",
        );
        let local = Connection {
            peer: None,
            tls: false,
            database: "x",
            user: "y",
        };
        assert_eq!(method(&r, local), Some(Method::Trust));
        assert_eq!(method(&r, tcp("10.1.2.3", true, "app", "alice")), Some(Method::Cert));
        assert_eq!(method(&r, tcp("10.1.2.3", false, "app", "alice")), Some(Method::Reject));
        assert_eq!(method(&r, tcp("127.0.0.1", false, "app", "x")), Some(Method::Password));
        assert_eq!(
            method(&r, tcp("127.0.0.1", true, "dave", "dave")),
            Some(Method::ScramSha256)
        );
        assert_eq!(
            method(&r, tcp("::ffff:127.0.0.1", true, "eve", "eve")),
            Some(Method::ScramSha256)
        );
        // A quoted "all" is a database called all.
        assert_eq!(method(&r, tcp("192.168.1.7", true, "all", "carol")), Some(Method::Md5));
        assert_eq!(method(&r, tcp("192.168.1.7", true, "b", "bob")), Some(Method::Md5));
        assert_eq!(method(&r, tcp("192.168.1.7", true, "app", "bob")), None);
        assert_eq!(method(&r, tcp("192.168.2.7", true, "b", "bob")), None);
        assert_eq!(
            r.decide(&tcp("10.1.2.3", false, "app", "alice")).map(|d| d.line),
            Some(4)
        );
    }

    #[test]
    fn what_it_cannot_honour_is_an_error_naming_the_line() {
        for (text, needle) in [
            (
                "host all all 10.0.0.0/8 ident",
                "unsupported authentication method \"ident\"",
            ),
            (
                "host all all 10.0.0.0/8 md5 clientcert=verify-full",
                "options after the method",
            ),
            ("host all +admins 10.0.0.0/8 md5", "group membership"),
            ("host all all db.example.com md5", "host names are not supported"),
            ("host all all samenet md5", "not supported"),
            ("host all all 10.0.0.0/8 cert", "only for hostssl"),
            ("hostgssenc all all all md5", "GSSAPI"),
            ("host all all 10.0.0.1 255.0.255.0 md5", "invalid netmask"),
            ("host all", "missing user"),
            ("host all all", "missing address"),
            ("local all all", "missing authentication method"),
            ("host \"open all all all md5", "unterminated"),
        ] {
            let e = HbaRules::parse(&format!("\n{text}\n"), Path::new("/")).unwrap_err();
            assert!(e.starts_with("line 2: ") && e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn names_may_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("staff"), "alice, bob\n# comment\ncarol\n").unwrap();
        let r = HbaRules::parse("host all @staff all trust\n", dir.path()).unwrap();
        assert_eq!(method(&r, tcp("1.2.3.4", false, "x", "carol")), Some(Method::Trust));
        assert_eq!(method(&r, tcp("1.2.3.4", false, "x", "mallory")), None);
        assert!(HbaRules::parse("host all @missing all trust\n", dir.path()).is_err());
    }
}
