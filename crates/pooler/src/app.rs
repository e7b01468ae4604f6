//! Shared state of a running pooler: the config, user secrets, and the pool registry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::auth::query::AuthCache;
use crate::auth::{LearnedKeys, StoredSecret};
use crate::cancel;
use crate::config::{self, seconds, Config, Loaded, PoolMode};
use crate::errors::ClientError;
use crate::pool::{Pool, PoolSettings};
use crate::server::{ServerCredential, ServerTarget};
use crate::shutdown::Shutdown;
use crate::stats::{Averager, Totals};

/// Startup parameters every client may send: forwarded or handled by Sluice.
pub const KNOWN_STARTUP_PARAMETERS: &[&str] = &[
    "user",
    "database",
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "extra_float_digits",
    "options",
    "replication",
];

/// The semaphore shared by every pool under one max_db_connections /
/// max_user_connections limit (0 = no limit).
fn shared_limit(limits: &DashMap<String, Arc<Semaphore>>, name: &str, limit: u32) -> Option<Arc<Semaphore>> {
    (limit > 0).then(|| {
        Arc::clone(
            &limits
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(limit as usize))),
        )
    })
}

/// The configuration in force: replaced whole on reload.
pub struct Current {
    pub config: Config,
    /// What it was loaded from (SET on the console edits a copy of it).
    pub loaded: Loaded,
    secrets: HashMap<String, StoredSecret>,
    ignored_startup_parameters: Vec<String>,
    /// SCRAM pass-through's keys; outlive reloads (they are checked against secrets).
    pub learned_keys: Arc<LearnedKeys>,
    /// auth_query's answers; outlive reloads.
    pub auth_cache: Arc<AuthCache>,
}

/// What a (database, user) pool should look like under the current configuration.
struct Plan {
    key: (String, String),
    target: ServerTarget,
    settings: PoolSettings,
    mode: PoolMode,
    db_limit: u32,
    user_limit: u32,
}

pub struct App {
    current: ArcSwap<Current>,
    /// The config file, re-read on reload.
    pub path: std::path::PathBuf,
    pools: DashMap<(String, String), Arc<Pool>>,
    db_limits: DashMap<String, Arc<Semaphore>>,
    user_limits: DashMap<String, Arc<Semaphore>>,
    /// Connected clients (max_client_conn).
    pub clients: AtomicUsize,
    /// Cancel keys given to clients.
    pub cancels: cancel::Registry,
    /// How far a shutdown has gone; listeners and sessions watch it.
    pub shutdown: tokio::sync::watch::Sender<Shutdown>,
    next_client_id: AtomicU64,
    /// PAUSE / SUSPEND / DISABLE state from the console.
    pub control: Mutex<Control>,
    /// SHOW STATS averages of the last stats_period.
    pub averages: Mutex<Averager>,
    pub started: std::time::Instant,
    /// The listeners are bound and accepting (/ready).
    pub listening: std::sync::atomic::AtomicBool,
}

/// What the console has switched: paused and disabled databases.
#[derive(Debug, Default)]
pub struct Control {
    /// PAUSE without a database (or SUSPEND, or SHUTDOWN WAIT_FOR_SERVERS).
    pub paused_all: bool,
    pub suspended: bool,
    pub paused: BTreeSet<String>,
    pub disabled: BTreeSet<String>,
}

impl Control {
    pub fn is_paused(&self, db: &str) -> bool {
        self.paused_all || self.suspended || self.paused.contains(db)
    }
}

/// How a client's login maps onto a pool.
pub struct Route {
    pub pool: Arc<Pool>,
    pub mode: PoolMode,
}

impl Current {
    /// What `loaded` puts in force; what was learned at logins carries over from
    /// `previous`.
    fn new(loaded: &Loaded, previous: Option<&Current>) -> Current {
        let config = loaded.config.clone();
        let secrets = loaded
            .secrets
            .iter()
            .map(|(u, s)| (u.clone(), StoredSecret::new(s)))
            .collect();
        let ignored_startup_parameters = config::list(&config.ignore_startup_parameters)
            .map(str::to_owned)
            .collect();
        crate::params::set_extra_tracked(config::list(&config.track_extra_parameters));
        Current {
            config,
            loaded: loaded.clone(),
            secrets,
            ignored_startup_parameters,
            learned_keys: previous.map(|p| Arc::clone(&p.learned_keys)).unwrap_or_default(),
            auth_cache: previous.map(|p| Arc::clone(&p.auth_cache)).unwrap_or_default(),
        }
    }

    pub fn secret(&self, user: &str) -> Option<&StoredSecret> {
        self.secrets.get(user)
    }

    /// Startup parameters that are neither known, tracked, nor in
    /// ignore_startup_parameters.
    pub fn unsupported_parameter<'a>(&self, params: &'a [(String, String)]) -> Option<&'a str> {
        params.iter().map(|(k, _)| k.as_str()).find(|k| {
            !k.starts_with("_pq_.")
                && crate::params::reported(k).is_none()
                && !KNOWN_STARTUP_PARAMETERS.iter().any(|p| p.eq_ignore_ascii_case(k))
                && !self
                    .ignored_startup_parameters
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(k))
        })
    }

    /// The pool a client of `db` logging in as `client_user` belongs to, with its
    /// settings: the `[databases]` entry (or `*`), per-user and global settings.
    fn plan(&self, db: &str, client_user: &str) -> Result<Plan, ClientError> {
        let c = &self.config;
        let entry = c.databases.get(db).or_else(|| c.databases.get("*")).ok_or_else(|| {
            ClientError::fatal(
                sluice_wire::sqlstate::INVALID_CATALOG_NAME,
                format!("database \"{db}\" does not exist"),
            )
            .hint("the pooler has no [databases] entry for it and no '*' fallback")
        })?;
        let server_user = entry.user.clone().unwrap_or_else(|| client_user.to_owned());
        let user_cfg = c.users.get(client_user);
        let mode = user_cfg
            .and_then(|u| u.pool_mode)
            .or(entry.pool_mode)
            .unwrap_or(c.pool_mode);
        let looked_up = || self.auth_cache.known(c, db, &server_user);
        let credential = match (&entry.password, self.secret(&server_user)) {
            (Some(p), _) => Some(ServerCredential::Password(p.clone())),
            (None, Some(s)) => Some(s.for_server_login(&self.learned_keys)),
            (None, None) => looked_up().map(|s| s.for_server_login(&self.learned_keys)),
        };
        let mut params = Vec::new();
        for (name, value) in [
            ("application_name", &entry.application_name),
            ("client_encoding", &entry.client_encoding),
            ("DateStyle", &entry.datestyle),
            ("TimeZone", &entry.timezone),
        ] {
            if let Some(v) = value {
                params.push((name.to_owned(), v.clone()));
            }
        }
        let target = ServerTarget {
            host: entry.host.clone().unwrap_or_else(|| c.unix_socket_dir.clone()),
            port: entry.port.unwrap_or(5432),
            dbname: entry.dbname.clone().unwrap_or_else(|| db.to_owned()),
            user: server_user.clone(),
            credential,
            params,
            tcp_keepalive: c.tcp_keepalive,
            tls: self.loaded.server_tls.clone(),
        };
        let size = entry
            .pool_size
            .or(user_cfg.and_then(|u| u.pool_size))
            .unwrap_or(c.default_pool_size) as usize;
        let settings = PoolSettings {
            mode,
            size,
            min_size: entry.min_pool_size.unwrap_or(c.min_pool_size) as usize,
            reserve_size: entry
                .reserve_pool_size
                .or(entry.reserve_pool)
                .or(user_cfg.and_then(|u| u.reserve_pool_size))
                .unwrap_or(c.reserve_pool_size) as usize,
            reserve_timeout: Duration::from_secs_f64(c.reserve_pool_timeout),
            query_wait_timeout: seconds(c.query_wait_timeout),
            connect_timeout: seconds(c.server_connect_timeout),
            lifetime: seconds(entry.server_lifetime.unwrap_or(c.server_lifetime)),
            idle_timeout: seconds(c.server_idle_timeout),
            max_packet: c.max_packet_size,
            timeouts: crate::client::Timeouts {
                query: seconds(c.query_timeout),
                client_idle: seconds(c.client_idle_timeout),
                idle_transaction: seconds(c.idle_transaction_timeout),
                transaction: seconds(c.transaction_timeout),
            },
            reset_query: Some(c.server_reset_query.trim().to_owned()).filter(|q| !q.is_empty()),
            reset_always: c.server_reset_query_always,
            wait_notify: seconds(c.query_wait_notify),
            login_retry: seconds(c.server_login_retry),
            // PgBouncer: 0 = check before every use (here: whenever idle), < 0 = never.
            check_delay: (c.server_check_delay >= 0.0 && !c.server_check_query.trim().is_empty())
                .then(|| Duration::from_secs_f64(c.server_check_delay.max(0.0))),
            check_query: Some(c.server_check_query.trim().to_owned()).filter(|q| !q.is_empty()),
            max_prepared: c.max_prepared_statements as usize,
            lanes: Arc::clone(&self.loaded.lanes),
        };
        Ok(Plan {
            key: (db.to_owned(), server_user),
            target,
            settings,
            mode,
            db_limit: entry.max_db_connections.unwrap_or(c.max_db_connections),
            user_limit: user_cfg
                .and_then(|u| u.max_user_connections)
                .unwrap_or(c.max_user_connections),
        })
    }
}

impl App {
    pub fn new(loaded: &Loaded) -> Arc<App> {
        Arc::new(App {
            current: ArcSwap::from_pointee(Current::new(loaded, None)),
            path: loaded.path.clone(),
            pools: DashMap::new(),
            db_limits: DashMap::new(),
            user_limits: DashMap::new(),
            clients: AtomicUsize::new(0),
            cancels: cancel::Registry::default(),
            shutdown: tokio::sync::watch::Sender::new(Shutdown::Running),
            next_client_id: AtomicU64::new(1),
            control: Mutex::new(Control::default()),
            averages: Mutex::new(Averager::default()),
            started: std::time::Instant::now(),
            listening: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The configuration in force (a snapshot: a reload does not change it under you).
    pub fn current(&self) -> Arc<Current> {
        self.current.load_full()
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Finds (or creates) the pool for a client's database and user.
    pub fn route(&self, db: &str, client_user: &str) -> Result<Route, ClientError> {
        let plan = self.current().plan(db, client_user)?;
        if let Some(p) = self.pools.get(&plan.key) {
            let pool = Arc::clone(&p);
            drop(p);
            // auth_query found a new secret since the pool was made (a changed password).
            if *pool.target() != plan.target {
                pool.update(plan.target, plan.settings);
            }
            return Ok(Route { pool, mode: plan.mode });
        }
        let limits = [
            shared_limit(&self.db_limits, &plan.key.0, plan.db_limit),
            shared_limit(&self.user_limits, &plan.key.1, plan.user_limit),
        ]
        .into_iter()
        .flatten()
        .collect();
        let (db, user) = plan.key.clone();
        let pool = self
            .pools
            .entry(plan.key)
            .or_insert_with(|| {
                let pool = Pool::new(db, user, plan.target, plan.settings, limits);
                if self.control.lock().is_paused(&pool.db) {
                    pool.pause();
                }
                pool
            })
            .clone();
        Ok(Route { pool, mode: plan.mode })
    }

    /// Re-reads the config file and applies it: users and passwords, databases, pool
    /// sizes and timeouts, without dropping anyone. An invalid file changes nothing.
    /// Listener addresses and max_db/max_user_connections need a restart.
    pub fn reload(&self) -> Result<(), config::ConfigError> {
        let loaded = if self.path.as_os_str() == config::ENV_ONLY {
            // The process environment does not change, but an auth_file it names may.
            config::load_env_only(std::env::vars().collect())?
        } else {
            config::load(&self.path)?
        };
        self.apply(&loaded);
        tracing::info!(config = %self.path.display(), "configuration reloaded");
        Ok(())
    }

    /// Puts a configuration in force (reload, or SET on the console).
    pub fn apply(&self, loaded: &Loaded) {
        let loaded = loaded.clone();
        let old = self.current();
        for (what, changed) in [
            ("listen_addr", old.config.listen_addr != loaded.config.listen_addr),
            ("listen_port", old.config.listen_port != loaded.config.listen_port),
            (
                "unix_socket_dir",
                old.config.unix_socket_dir != loaded.config.unix_socket_dir,
            ),
            (
                "max_db_connections",
                old.config.max_db_connections != loaded.config.max_db_connections,
            ),
            (
                "max_user_connections",
                old.config.max_user_connections != loaded.config.max_user_connections,
            ),
        ] {
            if changed {
                tracing::warn!("{what} changed: it takes effect at the next restart");
            }
        }
        let current = Arc::new(Current::new(&loaded, Some(&old)));
        self.current.store(Arc::clone(&current));
        for pool in self.pools() {
            match current.plan(&pool.db, &pool.user) {
                Ok(plan) => pool.update(plan.target, plan.settings),
                Err(_) => {
                    tracing::warn!(db = %pool.db, "database no longer configured: its connected clients go on, new ones are refused")
                }
            }
        }
    }

    /// SET on the console: one setting changed in the running configuration (the
    /// file is untouched; RELOAD goes back to it).
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), String> {
        use figment::providers::Serialized;
        let current = self.current();
        if crate::admin::show::config::value_of(&current.config, key).is_none() {
            return Err(format!("Sluice does not act on {key} yet, so it cannot be set"));
        }
        let mut loaded = current.loaded.clone();
        loaded.config = figment::Figment::from(Serialized::defaults(&loaded.config))
            .merge(Serialized::global(key, value))
            .extract_lossy()
            .map_err(|e| e.to_string())?;
        config::validate(&loaded.config, &loaded.path).map_err(|e| e.to_string())?;
        loaded.lanes = config::lanes::build(&loaded.config)?;
        if key.starts_with("client_tls") {
            loaded.client_tls = crate::tls::client(&loaded.config, &loaded.path)?;
        }
        if key.starts_with("server_tls") {
            loaded.server_tls = crate::tls::server(&loaded.config, &loaded.path)?;
        }
        if key == "auth_type" || key == "auth_hba_file" {
            loaded.hba = config::hba_rules(&loaded.config, &loaded.path)?;
        }
        self.apply(&loaded);
        Ok(())
    }

    /// Starts (or shortens) a shutdown, as a signal or the console's SHUTDOWN does.
    pub fn request_shutdown(&self, mode: Shutdown) {
        self.shutdown.send_if_modified(|m| {
            if mode > *m {
                *m = mode;
                true
            } else {
                false
            }
        });
    }

    /// DISABLE db: new clients of it are refused.
    pub fn db_disabled(&self, db: &str) -> bool {
        let c = self.control.lock();
        !c.disabled.is_empty() && c.disabled.contains(db)
    }

    /// Pools of one database, or all.
    pub fn pools_of(&self, db: Option<&str>) -> Vec<Arc<Pool>> {
        let mut pools: Vec<Arc<Pool>> = self
            .pools()
            .into_iter()
            .filter(|p| db.is_none_or(|d| p.db == d))
            .collect();
        pools.sort_by(|a, b| (&a.db, &a.user).cmp(&(&b.db, &b.user)));
        pools
    }

    /// SHOW STATS totals per database.
    pub fn db_totals(&self) -> BTreeMap<String, Totals> {
        let mut by_db: BTreeMap<String, Totals> = BTreeMap::new();
        for p in self.pools() {
            *by_db.entry(p.db.clone()).or_default() += p.stats.totals();
        }
        by_db
    }

    /// Closes a stats_period: new averages, and the log_stats line.
    pub fn roll_stats(&self) {
        let totals = self.db_totals();
        let mut avg = self.averages.lock();
        let closed = avg.roll(std::time::Instant::now(), totals);
        if closed && self.current().config.log_stats {
            let a = avg.total;
            tracing::info!(
                "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, {} binds/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
                a.xacts, a.queries, a.client_parses, a.server_parses, a.binds, a.received, a.sent,
                a.xact_time_us, a.query_time_us, a.wait_time_us
            );
        }
    }

    pub fn connected_clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Servers linked to clients right now, across all pools.
    pub fn linked_servers(&self) -> usize {
        self.pools.iter().map(|p| p.counts().active).sum()
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.iter().map(|p| Arc::clone(p.value())).collect()
    }

    /// Periodic housekeeping: close expired idle servers, keep min_pool_size, and free
    /// room under shared db/user limits for pools whose clients wait.
    pub fn housekeeping(&self) {
        let pools = self.pools();
        for p in &pools {
            p.close_expired();
            p.check_idle();
            p.retry_failed_login();
            p.observe_running();
            p.fill_min();
        }
        for starving in pools.iter().filter(|p| p.counts().waiting > 0 && !p.limits_free()) {
            if let Some(victim) = pools
                .iter()
                .filter(|p| !Arc::ptr_eq(p, starving) && p.counts().waiting == 0 && p.shares_limit_with(starving))
                .find(|p| p.counts().idle > 0)
            {
                victim.evict_one_idle();
            }
        }
    }
}
