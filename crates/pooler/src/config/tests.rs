use std::io::Write;

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

fn load_env(path: &Path, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    load_from(Source {
        path,
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    })
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sluice-config-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn defaults_are_pgbouncers() {
    let c = Config::default();
    assert_eq!(c.listen_port, 6432);
    assert_eq!(c.default_pool_size, 20);
    assert_eq!(c.max_client_conn, 100);
    assert_eq!(c.query_wait_timeout, 120.0);
    assert_eq!(c.reserve_pool_timeout, 5.0);
    assert_eq!(c.pool_mode, PoolMode::Session);
}

#[test]
fn ini_and_toml_give_the_same_config() {
    let dir = tmpdir();
    write(&dir, "userlist.txt", "\"alice\" \"secret\"\n");
    let extra = write(&dir, "extra.ini", "max_client_conn = 500\n");
    let ini = write(
        &dir,
        "pgbouncer.ini",
        &format!(
            "[databases]\napp = host=127.0.0.1 port=5433 dbname=real pool_size=7\n\"odd db\" = host=/tmp\n\n[pgbouncer]\n; comment\nlisten_addr = 127.0.0.1\nlisten_port = 7000\npool_mode = transaction\nunix_socket_mode = 0777\nlog_connections = 0\nreserve_pool_timeout = 2.5\nauth_file = {}\n%include {}\n\n[users]\nalice = pool_mode=session\n",
            dir.join("userlist.txt").display(),
            extra.display()
        ),
    );
    let toml = write(
        &dir,
        "pooler.toml",
        &format!(
            "listen_addr = \"127.0.0.1\"\nlisten_port = 7000\npool_mode = \"transaction\"\nmax_client_conn = 500\nlog_connections = false\nreserve_pool_timeout = 2.5\nauth_file = \"{}\"\n[databases.app]\nhost = \"127.0.0.1\"\nport = 5433\ndbname = \"real\"\npool_size = 7\n[databases.\"odd db\"]\nhost = \"/tmp\"\n[users.alice]\npool_mode = \"session\"\n",
            dir.join("userlist.txt").display()
        ),
    );
    let a = load_env(&ini, &[]).unwrap();
    let b = load_env(&toml, &[]).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.config.databases["app"].port, Some(5433));
    assert_eq!(a.config.max_client_conn, 500);
    assert_eq!(a.config.unix_socket_mode, "0777");
    assert_eq!(a.secrets.get("alice").map(String::as_str), Some("secret"));
}

#[test]
fn unknown_keys_name_file_and_line() {
    let dir = tmpdir();
    let ini = write(&dir, "a.ini", "[pgbouncer]\nlisten_port = 1\nno_such_thing = 2\n");
    let e = load_env(&ini, &[]).unwrap_err().to_string();
    assert!(e.ends_with("a.ini:3: unknown setting 'no_such_thing'"), "{e}");
    let toml = write(
        &dir,
        "a.toml",
        "listen_port = 1\n\n[databases.x]\nhost = \"h\"\nprot = 1\n",
    );
    let e = load_env(&toml, &[]).unwrap_err().to_string();
    assert!(
        e.ends_with("a.toml:5: unknown database parameter 'prot' in entry 'x'"),
        "{e}"
    );
    let bad_type = write(&dir, "b.toml", "\nlisten_port = \"many\"\n");
    let e = load_env(&bad_type, &[]).unwrap_err().to_string();
    assert!(e.contains("b.toml:2:"), "{e}");
    let broken = write(&dir, "c.toml", "a = \n");
    let e = load_env(&broken, &[]).unwrap_err().to_string();
    assert!(e.contains("c.toml:1:"), "{e}");
}

#[test]
fn environment_overrides_the_file() {
    let dir = tmpdir();
    let toml = write(&dir, "p.toml", "default_pool_size = 5\n[databases.app]\nhost = \"a\"\n");
    let l = load_env(
        &toml,
        &[
            ("SLUICE_DEFAULT_POOL_SIZE", "30"),
            ("SLUICE_DATABASES__APP__HOST", "b"),
            ("SLUICE_LOG", "debug"),
        ],
    )
    .unwrap();
    assert_eq!(l.config.default_pool_size, 30);
    assert_eq!(l.config.databases["app"].host.as_deref(), Some("b"));
}

#[test]
fn accepted_but_unimplemented_settings_are_listed() {
    let dir = tmpdir();
    let ini = write(&dir, "x.ini", "[pgbouncer]\nlisten_port = 1\nserver_round_robin = 1\n");
    let l = load_env(&ini, &[]).unwrap();
    assert_eq!(l.ignored.len(), 1);
    assert_eq!(l.ignored[0].0, "server_round_robin");
}

#[test]
fn lanes_load_from_toml_and_ini_alike() {
    let d = tmpdir();
    let toml = write(
        &d,
        "p.toml",
        "slow_share = 0.5\n[lanes.export]\ntag = \"controller=export\"\nmax_servers = 8\nquery_wait_timeout = 60\n[lanes.login]\ntag = \"controller=login\"\npriority = 10\nreserved_servers = 2\n",
    );
    let ini = write(
        &d,
        "p.ini",
        "[pgbouncer]\nslow_share = 0.5\n[lanes]\nexport = tag=controller:export max_servers=8 query_wait_timeout=60\nlogin = tag=controller:login priority=10 reserved_servers=2\n",
    );
    let a = load_env(&toml, &[]).unwrap().lanes;
    let b = load_env(&ini, &[]).unwrap().lanes;
    assert_eq!(a, b);
    assert!(a.protection);
    assert_eq!(a.slow_share, 0.5);
    let names: Vec<&str> = a.lanes.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["fast", "slow", "export", "login"]);
    let export = &a.lanes[2];
    assert_eq!(export.rule.tags, vec![("controller".to_owned(), "export".to_owned())]);
    assert_eq!(export.max_servers, Some(8));
    assert_eq!(export.wait_timeout, Some(Some(Duration::from_secs(60))));
    assert_eq!(a.lanes[3].priority, 10);
    assert_eq!(a.lanes[3].reserved, 2);
}

#[test]
fn bad_lanes_are_errors_naming_the_problem() {
    let d = tmpdir();
    for (text, expect) in [
        ("[lanes.slow]\nmax_servers = 1\n", "taken by an automatic lane"),
        ("[lanes.x]\nstatement = \"(\"\n", "statement pattern"),
        ("[lanes.x]\ntag = \"nothing\"\n", "must be key=value"),
        ("[lanes.x]\ncolour = \"red\"\n", "unknown lane parameter 'colour'"),
        ("overload_protection = \"sometimes\"\n", "overload_protection must be"),
        ("slow_share = 1.5\n", "slow_share must be"),
    ] {
        let p = write(&d, "bad.toml", text);
        let e = load_env(&p, &[]).unwrap_err().to_string();
        assert!(e.contains(expect), "{text}: {e}");
    }
}

#[test]
fn empty_pidfile_and_logfile_mean_none_as_in_pgbouncer() {
    let dir = tmpdir();
    let ini = write(
        &dir,
        "pgbouncer.ini",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\npidfile =\nlogfile = \n",
    );
    let loaded = load_env(&ini, &[]).unwrap();
    assert_eq!(loaded.config.pidfile, None);
    assert_eq!(loaded.config.logfile, None);
    let ini = write(
        &dir,
        "set.ini",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\npidfile = /tmp/x.pid\n",
    );
    assert_eq!(
        load_env(&ini, &[]).unwrap().config.pidfile.as_deref(),
        Some("/tmp/x.pid")
    );
}
