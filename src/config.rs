//! Configuration: one typed tree built from command-line flags, the environment and `.env`.
//!
//! Precedence: `TB_DALLE_PORT` beats `--port` (the seed book promises it, the Go
//! server ignored it); for everything else a flag beats the environment, which beats the default.
//! `.env` in the working directory is loaded first and never overrides what is already set.
//! This is the only module that reads the process environment.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::limits::Limit;

/// Default per-key lock TTL (also the fallback for an unparsable `--lock-ttl`).
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(300);

/// Runs allowed to wait for a slot unless `--max-queue` says otherwise.
pub const DEFAULT_MAX_QUEUE: usize = 1000;
/// The default drain timeout is the image timeout plus this.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(30);

/// Default limit of a JSON request body (`--max-body`): the largest body any route takes, a
/// saved series, is a few KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// Default OpenAI-compatible endpoint.
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Everything that can go wrong while building the configuration; each names the culprit.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that must parse did not; `name` is the flag or variable it came from.
    #[error("invalid value {value:?} for {name}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// No data directory could be derived (no `HOME`, no `XDG_DATA_HOME`, no flag).
    #[error("cannot resolve the data directory: set --data-dir or TB_DALLE_DATA_DIR")]
    NoDataDir,
    /// The API keys file cannot be read or has a bad line (named in the message).
    #[error("API keys file (--api-keys-file / TB_DALLE_API_KEYS_FILE): {0}")]
    Keys(#[from] crate::auth::KeysError),
    /// The data directory exists (or was created) but cannot be written.
    #[error("data directory {path} is not usable: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Bad input from the operator exits 2, like a bad flag; an unusable directory exits 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Invalid { .. } | ConfigError::Keys(_) => 2,
            ConfigError::NoDataDir | ConfigError::DataDir { .. } => 1,
        }
    }
}

/// The OpenAI API key. It never prints: `Debug` shows a fixed placeholder and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; an empty or blank key is no key at all.
    pub fn new(raw: impl Into<String>) -> Option<Self> {
        let raw = raw.into();
        let trimmed = raw.trim();
        (!trimmed.is_empty()).then(|| ApiKey(trimmed.to_string()))
    }

    /// The key itself, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// Command-line flags. Every flag has an environment fallback handled in [`Config::from_sources`].
#[derive(Debug, Parser)]
#[command(
    name = "dalleserver",
    version,
    about = "AI-generated, captioned images for Ethereum addresses"
)]
pub struct Flags {
    /// Listen port (TB_DALLE_PORT overrides it) [default: 8080]
    #[arg(long)]
    pub port: Option<String>,
    /// Listen address, an IP or `localhost` [env: TB_DALLE_BIND] [default: 0.0.0.0]
    #[arg(long)]
    pub bind: Option<String>,
    /// Per-key generation lock TTL, e.g. 90s, 5m, 1h [env: TB_DALLE_LOCK_TTL] [default: 5m]
    #[arg(long)]
    pub lock_ttl: Option<String>,
    /// Data directory [env: TB_DALLE_DATA_DIR] [default: $XDG_DATA_HOME/trueblocks/dalle]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Directory of attribute CSVs replacing the embedded databases [env: TB_DALLE_DATABASES]
    #[arg(long)]
    pub databases: Option<PathBuf>,
    /// Generations allowed to run at once; more are queued [env: TB_DALLE_MAX_CONCURRENT] [default: 8]
    #[arg(long)]
    pub max_concurrent: Option<String>,
    /// Generations allowed to wait for a slot; more are refused with 503 [env: TB_DALLE_MAX_QUEUE] [default: 1000]
    #[arg(long)]
    pub max_queue: Option<String>,
    /// One log line per request at this level: info, debug or off [env: TB_DALLE_ACCESS_LOG] [default: info]
    #[arg(long)]
    pub access_log: Option<String>,
    /// On SIGINT/SIGTERM, how long runs that sent their image request may take to finish, e.g. 90s, 5m [env: TB_DALLE_DRAIN_TIMEOUT] [default: image timeout + 30s]
    #[arg(long)]
    pub drain_timeout: Option<String>,
    /// Largest JSON request body, e.g. 64KiB, 1MiB or a byte count [env: TB_DALLE_MAX_BODY] [default: 64KiB]
    #[arg(long)]
    pub max_body: Option<String>,
    /// Spending cap per UTC day in US dollars, or `none` [env: TB_DALLE_BUDGET_DAILY_USD] [default: 10 in live mode]
    #[arg(long)]
    pub budget_daily_usd: Option<String>,
    /// Spending cap per UTC month in US dollars, or `none` [env: TB_DALLE_BUDGET_MONTHLY_USD] [default: none]
    #[arg(long)]
    pub budget_monthly_usd: Option<String>,
    /// Images allowed per UTC day, or `none` [env: TB_DALLE_BUDGET_DAILY_IMAGES] [default: none]
    #[arg(long)]
    pub budget_daily_images: Option<String>,
    /// JSON file of image prices overriding the built-in table [env: TB_DALLE_PRICES]
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// File of API keys (`<name> sha256:<hex>` a line); with it, runs and changes need `Authorization: Bearer <token>` [env: TB_DALLE_API_KEYS_FILE]
    #[arg(long)]
    pub api_keys_file: Option<PathBuf>,
    /// A browser origin allowed to call the API (repeatable; `*` for any) [env: TB_DALLE_CORS_ORIGINS, comma-separated]
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
    /// How long an Idempotency-Key is remembered, e.g. 24h, 90m [env: TB_DALLE_IDEMPOTENCY_TTL] [default: 24h]
    #[arg(long)]
    pub idempotency_ttl: Option<String>,
    /// Idempotency-Keys remembered at once; a new key beyond them gets 503 [env: TB_DALLE_IDEMPOTENCY_MAX_KEYS] [default: 10000]
    #[arg(long)]
    pub idempotency_max_keys: Option<String>,
    /// New runs an API key may start, as <n>/<sec|min|hour|day> or none; a key's rate= overrides it [env: TB_DALLE_RATE_LIMIT] [default: 60/min]
    #[arg(long)]
    pub rate_limit: Option<String>,
    /// New runs an anonymous client address (IPv6: its /64) may start, as <n>/<sec|min|hour|day> or none [env: TB_DALLE_ANON_RATE_LIMIT] [default: 10/min]
    #[arg(long)]
    pub anon_rate_limit: Option<String>,
    /// A proxy (IP or CIDR) whose X-Forwarded-For / Forwarded is believed (repeatable) [env: TB_DALLE_TRUSTED_PROXIES, comma-separated]
    #[arg(long = "trusted-proxy")]
    pub trusted_proxies: Vec<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands; none means serve.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Check an annotated PNG against its embedded provenance: the raw image's CID, and that
    /// captioning it again gives the same pixels. Exits 0 when all of it matches, else 1.
    Verify {
        /// The annotated PNG.
        annotated: std::path::PathBuf,
        /// The raw image (the `generated` artifact).
        #[arg(long)]
        raw: Option<std::path::PathBuf>,
        /// Fetch the raw image from this server's `/cache/{cid}` instead.
        #[arg(long)]
        server: Option<String>,
    },
}

/// `dalleserver keys …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random token and the keys-file line that authorises it.
    New {
        /// The key's name (A-Z a-z 0-9 . _ -, at most 64), as logs and usage will show it.
        name: String,
    },
}

/// Where the one line per request goes ([`Config::access_log`]). Failures (5xx) and slow
/// requests are logged whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// Every request at `info` (the default: production logs show traffic).
    Info,
    /// Every request at `debug`: silent unless `RUST_LOG` asks for it.
    Debug,
    /// No line for successful and client-error requests.
    Off,
}

impl AccessLog {
    fn parse(value: &str) -> Option<AccessLog> {
        match value.trim().to_ascii_lowercase().as_str() {
            "info" => Some(AccessLog::Info),
            "debug" => Some(AccessLog::Debug),
            "off" | "none" => Some(AccessLog::Off),
            _ => None,
        }
    }
}

/// A read-only view of the environment, so tests can build configs without touching the process.
pub trait Env {
    /// The variable's value; `None` when unset. Empty strings are returned as they are.
    fn get(&self, key: &str) -> Option<String>;
}

/// The real process environment (after `.env` has been loaded into it).
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }
}

/// OpenAI settings.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// `None` means mock mode.
    pub api_key: Option<ApiKey>,
    pub base_url: String,
    /// `TB_DALLE_SKIP_IMAGE=1`: mock images even with a key.
    pub skip_image: bool,
    /// `TB_DALLE_NO_ENHANCE=1`: skip the chat enhancement only.
    pub no_enhance: bool,
    pub image_model: String,
    pub chat_model: String,
    pub image_timeout: Duration,
    pub enhance_timeout: Duration,
    /// First retry delay (`TB_DALLE_RETRY_BASE`, default 2s); later delays double up to 60 s.
    /// Tests and load runs shorten it; production should keep the default.
    pub retry_base: Duration,
}

impl OpenAiConfig {
    /// True when images come from the local deterministic source instead of OpenAI.
    pub fn mock_mode(&self) -> bool {
        self.api_key.is_none() || self.skip_image
    }
}

/// The whole configuration, resolved and validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    pub lock_ttl: Duration,
    pub data_dir: PathBuf,
    pub databases: Option<PathBuf>,
    pub max_concurrent: usize,
    /// Generations allowed to wait for a slot beyond `max_concurrent`.
    pub max_queue: usize,
    pub openai: OpenAiConfig,
    /// Log filter directive (`RUST_LOG`), default `info`.
    pub log_filter: String,
    /// The per-request access log.
    pub access_log: AccessLog,
    /// On SIGINT/SIGTERM, how long the server waits for runs that sent their image request.
    pub drain_timeout: Duration,
    /// Largest JSON request body in bytes; a larger one is answered 413.
    pub max_body: usize,
    /// Spending caps on paid images.
    pub budget: BudgetConfig,
    /// The API keys, when `--api-keys-file` is set: then runs and changes need a key.
    pub api_keys: Option<std::sync::Arc<crate::auth::ApiKeys>>,
    /// Browser origins allowed by CORS (`*` for any); empty sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// How long `Idempotency-Key`s are kept, and how many.
    pub idempotency: IdempotencyConfig,
    /// Rate limits on run starts, and whose forwarding headers are believed.
    pub limits: LimitsConfig,
    /// Non-fatal problems found while resolving (logged once tracing is up).
    pub warnings: Vec<String>,
}

/// The spending caps (`None`: no cap) and the price table's override.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetConfig {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub daily_images: Option<u64>,
    pub prices: Option<PathBuf>,
}

/// The `Idempotency-Key` store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyConfig {
    pub ttl: Duration,
    pub max_keys: usize,
}

impl IdempotencyConfig {
    fn from_sources(
        ttl: Option<String>,
        max_keys: Option<String>,
    ) -> Result<IdempotencyConfig, ConfigError> {
        let ttl = match ttl {
            None => crate::idempotency::DEFAULT_TTL,
            Some(v) => match parse_duration(&v) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "--idempotency-ttl / TB_DALLE_IDEMPOTENCY_TTL",
                        value: v,
                        reason: "expected a duration of at least 1s, such as 24h or 90m".into(),
                    });
                }
            },
        };
        let max_keys = match max_keys {
            None => crate::idempotency::DEFAULT_MAX_KEYS,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "--idempotency-max-keys / TB_DALLE_IDEMPOTENCY_MAX_KEYS",
                        value: v,
                        reason: "expected a whole number of at least 1".into(),
                    });
                }
            },
        };
        Ok(IdempotencyConfig { ttl, max_keys })
    }
}

/// Rate limits on run starts ([`crate::limits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `--rate-limit`: per API key, unless the key's `rate=` says otherwise.
    pub key: Limit,
    /// `--anon-rate-limit`: per anonymous client address (IPv6: per /64).
    pub anonymous: Limit,
    /// `--trusted-proxy`: peers whose `X-Forwarded-For` / `Forwarded` name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            key: crate::limits::DEFAULT_KEY_LIMIT,
            anonymous: crate::limits::DEFAULT_ANON_LIMIT,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A rate limit flag or variable.
fn limit_var(
    name: &'static str,
    value: Option<String>,
    default: Limit,
) -> Result<Limit, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v.parse::<Limit>().map_err(|e| ConfigError::Invalid {
            name,
            reason: e.to_string(),
            value: v,
        }),
    }
}

/// A trusted proxy: a CIDR (`10.0.0.0/8`, `fd00::/8`) or one address.
fn trusted_proxy(value: &str) -> Result<ipnet::IpNet, ConfigError> {
    let value = value.trim();
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| ConfigError::Invalid {
            name: "--trusted-proxy / TB_DALLE_TRUSTED_PROXIES",
            value: value.to_string(),
            reason: "expected an IP address or a CIDR such as 10.0.0.0/8 or fd00::/8".into(),
        })
}

/// The daily cap a live-mode server gets unless told otherwise (`none` lifts it).
pub const DEFAULT_BUDGET_DAILY_USD: f64 = 10.0;

/// A cap: `none` (no cap) or a non-negative number.
fn cap<T: std::str::FromStr>(
    name: &'static str,
    value: Option<String>,
    default: Option<T>,
    accept: impl Fn(&T) -> bool,
    expected: &str,
) -> Result<Option<T>, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    if value.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match value.trim().parse::<T>() {
        Ok(n) if accept(&n) => Ok(Some(n)),
        _ => Err(ConfigError::Invalid {
            name,
            value,
            reason: format!("expected {expected}, or none for no cap"),
        }),
    }
}

impl Config {
    /// Loads `.env` (never overriding), parses the real command line and environment.
    /// A bad flag exits the process with status 2 (clap's behaviour).
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_with(Flags::parse())
    }

    /// [`Config::load`] with flags already parsed (the binary looks at the subcommand first).
    pub fn load_with(flags: Flags) -> Result<Config, ConfigError> {
        // A missing .env is normal; a malformed one should not stop the server either.
        let _ = dotenvy::dotenv();
        Config::from_sources(flags, &ProcessEnv)
    }

    /// Builds the configuration from parsed flags and an environment view.
    pub fn from_sources(flags: Flags, env: &impl Env) -> Result<Config, ConfigError> {
        let var = |key: &str| env.get(key).filter(|v| !v.trim().is_empty());
        let mut warnings = Vec::new();

        let port = match (var("TB_DALLE_PORT"), flags.port) {
            (Some(v), _) => parse_port("TB_DALLE_PORT", &v)?,
            (None, Some(v)) => parse_port("--port", &v)?,
            (None, None) => 8080,
        };
        let bind = match flags.bind.or_else(|| var("TB_DALLE_BIND")) {
            Some(v) => parse_bind(&v).ok_or_else(|| ConfigError::Invalid {
                name: "--bind / TB_DALLE_BIND",
                value: v.clone(),
                reason: "expected an IP address (such as 127.0.0.1 or ::1) or localhost".into(),
            })?,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let lock_ttl = match flags.lock_ttl.or_else(|| var("TB_DALLE_LOCK_TTL")) {
            None => DEFAULT_LOCK_TTL,
            Some(v) => match parse_duration(&v) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    warnings.push(format!("invalid lock TTL {v:?}; using 5m"));
                    DEFAULT_LOCK_TTL
                }
            },
        };
        let max_concurrent = match flags
            .max_concurrent
            .or_else(|| var("TB_DALLE_MAX_CONCURRENT"))
        {
            None => 8,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "--max-concurrent / TB_DALLE_MAX_CONCURRENT",
                        value: v,
                        reason: "expected a whole number of at least 1".into(),
                    });
                }
            },
        };
        let max_queue = match flags.max_queue.or_else(|| var("TB_DALLE_MAX_QUEUE")) {
            None => DEFAULT_MAX_QUEUE,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| ConfigError::Invalid {
                    name: "--max-queue / TB_DALLE_MAX_QUEUE",
                    value: v,
                    reason: "expected a whole number (0 queues nothing)".into(),
                })?,
        };
        let data_dir = match flags
            .data_dir
            .or_else(|| var("TB_DALLE_DATA_DIR").map(PathBuf::from))
        {
            Some(dir) => dir,
            None => {
                default_data_dir(var("XDG_DATA_HOME"), var("HOME")).ok_or(ConfigError::NoDataDir)?
            }
        };
        let access_log = match flags.access_log.or_else(|| var("TB_DALLE_ACCESS_LOG")) {
            None => AccessLog::Info,
            Some(v) => AccessLog::parse(&v).ok_or_else(|| ConfigError::Invalid {
                name: "--access-log / TB_DALLE_ACCESS_LOG",
                value: v,
                reason: "expected info, debug or off".into(),
            })?,
        };
        let max_body = match flags.max_body.or_else(|| var("TB_DALLE_MAX_BODY")) {
            None => DEFAULT_MAX_BODY,
            Some(v) => match parse_size(&v) {
                Some(n) if n > 0 => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "--max-body / TB_DALLE_MAX_BODY",
                        value: v,
                        reason: "expected a size of at least 1 byte, such as 65536, 64KiB or 1MiB"
                            .into(),
                    });
                }
            },
        };
        let api_keys = match flags
            .api_keys_file
            .or_else(|| var("TB_DALLE_API_KEYS_FILE").map(PathBuf::from))
        {
            Some(path) => Some(std::sync::Arc::new(crate::auth::ApiKeys::load(&path)?)),
            None => None,
        };
        let mut cors_origins = flags.cors_origins;
        if cors_origins.is_empty()
            && let Some(list) = var("TB_DALLE_CORS_ORIGINS")
        {
            cors_origins = list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(String::from)
                .collect();
        }
        for origin in &cors_origins {
            if !valid_origin(origin) {
                return Err(ConfigError::Invalid {
                    name: "--cors-origin / TB_DALLE_CORS_ORIGINS",
                    value: origin.clone(),
                    reason: "expected an origin such as https://example.org (scheme and host, \
                             no path), or *"
                        .into(),
                });
            }
        }
        let mut proxies = flags.trusted_proxies;
        if proxies.is_empty()
            && let Some(list) = var("TB_DALLE_TRUSTED_PROXIES")
        {
            proxies = list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
        }
        let limits = LimitsConfig {
            key: limit_var(
                "--rate-limit / TB_DALLE_RATE_LIMIT",
                flags.rate_limit.or_else(|| var("TB_DALLE_RATE_LIMIT")),
                crate::limits::DEFAULT_KEY_LIMIT,
            )?,
            anonymous: limit_var(
                "--anon-rate-limit / TB_DALLE_ANON_RATE_LIMIT",
                flags
                    .anon_rate_limit
                    .or_else(|| var("TB_DALLE_ANON_RATE_LIMIT")),
                crate::limits::DEFAULT_ANON_LIMIT,
            )?,
            trusted_proxies: proxies
                .iter()
                .map(|p| trusted_proxy(p))
                .collect::<Result<_, _>>()?,
        };
        let databases = flags
            .databases
            .or_else(|| var("TB_DALLE_DATABASES").map(PathBuf::from));

        let openai = OpenAiConfig {
            api_key: var("OPENAI_API_KEY").and_then(ApiKey::new),
            base_url: var("OPENAI_BASE_URL")
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.to_string()),
            skip_image: var("TB_DALLE_SKIP_IMAGE").is_some_and(|v| v.trim() == "1"),
            no_enhance: var("TB_DALLE_NO_ENHANCE").is_some_and(|v| v.trim() == "1"),
            image_model: var("TB_DALLE_IMAGE_MODEL").unwrap_or_else(|| "gpt-image-2".into()),
            chat_model: var("TB_DALLE_CHAT_MODEL").unwrap_or_else(|| "gpt-5.5".into()),
            image_timeout: duration_var(&var, "TB_DALLE_IMAGE_TIMEOUT", Duration::from_secs(300))?,
            enhance_timeout: duration_var(
                &var,
                "TB_DALLE_ENHANCE_TIMEOUT",
                Duration::from_secs(60),
            )?,
            retry_base: duration_var(&var, "TB_DALLE_RETRY_BASE", Duration::from_secs(2))?,
        };

        let usd = |n: &f64| n.is_finite() && *n >= 0.0;
        let budget = BudgetConfig {
            daily_usd: cap(
                "--budget-daily-usd / TB_DALLE_BUDGET_DAILY_USD",
                flags
                    .budget_daily_usd
                    .or_else(|| var("TB_DALLE_BUDGET_DAILY_USD")),
                (!openai.mock_mode()).then_some(DEFAULT_BUDGET_DAILY_USD),
                usd,
                "an amount of US dollars such as 10 or 2.50",
            )?,
            monthly_usd: cap(
                "--budget-monthly-usd / TB_DALLE_BUDGET_MONTHLY_USD",
                flags
                    .budget_monthly_usd
                    .or_else(|| var("TB_DALLE_BUDGET_MONTHLY_USD")),
                None,
                usd,
                "an amount of US dollars such as 200",
            )?,
            daily_images: cap(
                "--budget-daily-images / TB_DALLE_BUDGET_DAILY_IMAGES",
                flags
                    .budget_daily_images
                    .or_else(|| var("TB_DALLE_BUDGET_DAILY_IMAGES")),
                None,
                |_: &u64| true,
                "a whole number of images",
            )?,
            prices: flags
                .prices
                .or_else(|| var("TB_DALLE_PRICES").map(PathBuf::from)),
        };

        // Long enough for an image request sent just before the signal, plus its download and
        // caption.
        let drain_timeout = match flags
            .drain_timeout
            .or_else(|| var("TB_DALLE_DRAIN_TIMEOUT"))
        {
            None => openai.image_timeout + DRAIN_MARGIN,
            Some(v) => parse_duration(&v).map_err(|reason| ConfigError::Invalid {
                name: "--drain-timeout / TB_DALLE_DRAIN_TIMEOUT",
                value: v,
                reason,
            })?,
        };

        let idempotency = IdempotencyConfig::from_sources(
            flags
                .idempotency_ttl
                .or_else(|| var("TB_DALLE_IDEMPOTENCY_TTL")),
            flags
                .idempotency_max_keys
                .or_else(|| var("TB_DALLE_IDEMPOTENCY_MAX_KEYS")),
        )?;

        Ok(Config {
            idempotency,
            drain_timeout,
            budget,
            bind,
            port,
            lock_ttl,
            data_dir,
            databases,
            max_concurrent,
            max_queue,
            openai,
            log_filter: var("RUST_LOG").unwrap_or_else(|| "info".into()),
            access_log,
            max_body,
            api_keys,
            cors_origins,
            limits,
            warnings,
        })
    }

    /// Makes the data directory absolute, creates it and proves it is writable.
    pub fn prepare_data_dir(&mut self) -> Result<(), ConfigError> {
        let fail = |path: &Path, source| ConfigError::DataDir {
            path: path.to_path_buf(),
            source,
        };
        if self.data_dir.starts_with("~") {
            return Err(fail(
                &self.data_dir,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a leading ~ is not expanded; use an absolute path",
                ),
            ));
        }
        std::fs::create_dir_all(&self.data_dir).map_err(|e| fail(&self.data_dir, e))?;
        self.data_dir =
            std::fs::canonicalize(&self.data_dir).map_err(|e| fail(&self.data_dir, e))?;
        crate::storage::probe_writable(&self.data_dir).map_err(|e| fail(&self.data_dir, e))?;
        Ok(())
    }
}

fn duration_var(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => parse_duration(&v).map_err(|reason| ConfigError::Invalid {
            name,
            value: v,
            reason,
        }),
    }
}

/// An IP address, or `localhost` for the loopback address (resolved here, not by the system
/// resolver, so it cannot quietly bind a public address; `[::1]` is accepted with brackets).
fn parse_bind(value: &str) -> Option<IpAddr> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::from([127, 0, 0, 1]));
    }
    let bare = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    bare.parse().ok()
}

/// A byte count: a bare number, or one with `B`, `KiB`/`KB`/`K` or `MiB`/`MB`/`M` (all
/// powers of 1024, as a body limit is about memory).
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let amount: usize = text[..digits].parse().ok()?;
    let unit = match text[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return None,
    };
    amount.checked_mul(unit)
}

fn parse_port(name: &'static str, value: &str) -> Result<u16, ConfigError> {
    value
        .trim()
        .parse::<u16>()
        .map_err(|_| ConfigError::Invalid {
            name,
            value: value.to_string(),
            reason: "expected a port number from 0 to 65535".into(),
        })
}

/// Parses `90s`, `5m`, `1h`, `250ms`, compound `1m30s`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let amount: u64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_string())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(amount),
            "s" => Duration::from_secs(amount),
            "m" => Duration::from_secs(amount.saturating_mul(60)),
            "h" => Duration::from_secs(amount.saturating_mul(3600)),
            other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A browser origin as it appears in an `Origin` header: `http(s)://host[:port]`, or `*`.
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// `$XDG_DATA_HOME/trueblocks/dalle`, else `~/.local/share/trueblocks/dalle`.
fn default_data_dir(xdg: Option<String>, home: Option<String>) -> Option<PathBuf> {
    let base = match (xdg, home) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => Path::new(&h).join(".local").join("share"),
        (None, None) => return None,
    };
    Some(base.join("trueblocks").join("dalle"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("dalleserver").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn port_env_beats_flag_and_flag_beats_default() {
        let env = [("TB_DALLE_PORT", "9191"), ("HOME", "/h")];
        assert_eq!(
            Config::from_sources(flags(&["--port", "9090"]), &env)
                .unwrap()
                .port,
            9191
        );
        let env = [("HOME", "/h")];
        assert_eq!(
            Config::from_sources(flags(&["--port=9090"]), &env)
                .unwrap()
                .port,
            9090
        );
        assert_eq!(Config::from_sources(flags(&[]), &env).unwrap().port, 8080);
    }

    #[test]
    fn flags_beat_environment() {
        let env = [
            ("HOME", "/h"),
            ("TB_DALLE_DATA_DIR", "/env/dir"),
            ("TB_DALLE_LOCK_TTL", "90s"),
        ];
        let cfg = Config::from_sources(
            flags(&["--data-dir", "/flag/dir", "--lock-ttl", "1h"]),
            &env,
        )
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/flag/dir"));
        assert_eq!(cfg.lock_ttl, Duration::from_secs(3600));
        let cfg = Config::from_sources(flags(&[]), &env).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/env/dir"));
        assert_eq!(cfg.lock_ttl, Duration::from_secs(90));
    }

    #[test]
    fn max_queue_defaults_to_a_thousand_and_refuses_garbage() {
        let home = [("HOME", "/h")];
        let cfg = Config::from_sources(flags(&[]), &home).unwrap();
        assert_eq!(cfg.max_queue, DEFAULT_MAX_QUEUE);
        let env = [("HOME", "/h"), ("TB_DALLE_MAX_QUEUE", "5")];
        assert_eq!(Config::from_sources(flags(&[]), &env).unwrap().max_queue, 5);
        let cfg = Config::from_sources(flags(&["--max-queue", "0"]), &env).unwrap();
        assert_eq!(cfg.max_queue, 0, "the flag wins; 0 queues nothing");
        assert!(Config::from_sources(flags(&["--max-queue", "lots"]), &home).is_err());
    }

    #[test]
    fn idempotency_keys_last_a_day_ten_thousand_at_most_unless_told() {
        let home = [("HOME", "/h")];
        let cfg = Config::from_sources(flags(&[]), &home).unwrap();
        assert_eq!(
            cfg.idempotency,
            IdempotencyConfig {
                ttl: Duration::from_secs(86_400),
                max_keys: 10_000
            }
        );
        let env = [
            ("HOME", "/h"),
            ("TB_DALLE_IDEMPOTENCY_TTL", "2h"),
            ("TB_DALLE_IDEMPOTENCY_MAX_KEYS", "50"),
        ];
        let cfg = Config::from_sources(flags(&["--idempotency-max-keys", "7"]), &env).unwrap();
        assert_eq!(cfg.idempotency.ttl, Duration::from_secs(7200));
        assert_eq!(cfg.idempotency.max_keys, 7, "the flag wins");
        for bad in [
            ["--idempotency-ttl", "0s"],
            ["--idempotency-ttl", "soon"],
            ["--idempotency-max-keys", "0"],
            ["--idempotency-max-keys", "lots"],
        ] {
            let err = Config::from_sources(flags(&bad), &home).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            assert!(err.to_string().contains(bad[0]), "{err}");
        }
    }

    #[test]
    fn budget_caps_default_to_ten_dollars_a_day_in_live_mode_only() {
        let mock = [("HOME", "/h")];
        assert_eq!(
            Config::from_sources(flags(&[]), &mock).unwrap().budget,
            BudgetConfig::default()
        );
        let live = [("HOME", "/h"), ("OPENAI_API_KEY", "sk-x")];
        let cfg = Config::from_sources(flags(&[]), &live).unwrap();
        assert_eq!(cfg.budget.daily_usd, Some(DEFAULT_BUDGET_DAILY_USD));
        let args = [
            "--budget-daily-usd",
            "none",
            "--budget-monthly-usd",
            "2.5",
            "--budget-daily-images",
            "7",
        ];
        let cfg = Config::from_sources(flags(&args), &live).unwrap();
        assert_eq!(cfg.budget.daily_usd, None, "none must be said");
        assert_eq!(cfg.budget.monthly_usd, Some(2.5));
        assert_eq!(cfg.budget.daily_images, Some(7));
        for bad in ["-1", "lots", "NaN", ""] {
            let arg = format!("--budget-daily-usd={bad}");
            let err = Config::from_sources(flags(&[&arg]), &live);
            assert!(err.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_lock_ttl_warns_and_falls_back() {
        let cfg = Config::from_sources(flags(&["--lock-ttl", "soon"]), &[("HOME", "/h")]).unwrap();
        assert_eq!(cfg.lock_ttl, DEFAULT_LOCK_TTL);
        assert_eq!(cfg.warnings.len(), 1);
        assert!(cfg.warnings[0].contains("soon"));
    }

    #[test]
    fn bad_port_names_its_source() {
        let err = Config::from_sources(flags(&[]), &[("HOME", "/h"), ("TB_DALLE_PORT", "http")])
            .unwrap_err();
        assert!(err.to_string().contains("TB_DALLE_PORT"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn data_dir_defaults_follow_xdg_then_home() {
        let cfg =
            Config::from_sources(flags(&[]), &[("HOME", "/h"), ("XDG_DATA_HOME", "/x")]).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/x/trueblocks/dalle"));
        let cfg = Config::from_sources(flags(&[]), &[("HOME", "/h")]).unwrap();
        assert_eq!(
            cfg.data_dir,
            PathBuf::from("/h/.local/share/trueblocks/dalle")
        );
        assert!(matches!(
            Config::from_sources(flags(&[]), &[]),
            Err(ConfigError::NoDataDir)
        ));
    }

    #[test]
    fn empty_key_means_mock_mode_and_key_never_prints() {
        let cfg =
            Config::from_sources(flags(&[]), &[("HOME", "/h"), ("OPENAI_API_KEY", " ")]).unwrap();
        assert!(cfg.openai.mock_mode());
        let cfg = Config::from_sources(
            flags(&[]),
            &[("HOME", "/h"), ("OPENAI_API_KEY", "sk-secret")],
        )
        .unwrap();
        assert!(!cfg.openai.mock_mode());
        assert!(!format!("{cfg:?}").contains("sk-secret"));
        let cfg = Config::from_sources(
            flags(&[]),
            &[
                ("HOME", "/h"),
                ("OPENAI_API_KEY", "sk-secret"),
                ("TB_DALLE_SKIP_IMAGE", "1"),
            ],
        )
        .unwrap();
        assert!(cfg.openai.mock_mode());
    }

    #[test]
    fn durations_parse_in_every_documented_form() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn drain_timeout_defaults_to_the_image_timeout_plus_a_margin() {
        let env = [("HOME", "/h"), ("TB_DALLE_IMAGE_TIMEOUT", "100s")];
        let cfg = Config::from_sources(flags(&[]), &env).unwrap();
        assert_eq!(cfg.drain_timeout, Duration::from_secs(130));
        let env = [("HOME", "/h"), ("TB_DALLE_DRAIN_TIMEOUT", "45s")];
        let cfg = Config::from_sources(flags(&[]), &env).unwrap();
        assert_eq!(cfg.drain_timeout, Duration::from_secs(45));
        let cfg = Config::from_sources(flags(&["--drain-timeout", "2m"]), &env).unwrap();
        assert_eq!(cfg.drain_timeout, Duration::from_secs(120));
        let err = Config::from_sources(flags(&["--drain-timeout", "soon"]), &env).unwrap_err();
        assert!(err.to_string().contains("--drain-timeout"), "{err}");
    }

    #[test]
    fn bind_takes_localhost_and_ip_addresses() {
        let env = [("HOME", "/h")];
        let bind = |v: &str| Config::from_sources(flags(&["--bind", v]), &env).map(|c| c.bind);
        assert_eq!(bind("localhost").unwrap(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(bind("LocalHost").unwrap(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(bind("127.0.0.1").unwrap(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(bind("::1").unwrap().to_string(), "::1");
        assert_eq!(bind("[::1]").unwrap().to_string(), "::1");
        let err = bind("example.com").unwrap_err();
        assert!(err.to_string().contains("TB_DALLE_BIND"), "{err}");
        assert_eq!(err.exit_code(), 2);
        let env = [("HOME", "/h"), ("TB_DALLE_BIND", "localhost")];
        let cfg = Config::from_sources(flags(&[]), &env).unwrap();
        assert_eq!(cfg.bind, IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn max_body_defaults_to_64_kib_and_takes_units() {
        let env = [("HOME", "/h")];
        let max_body = |args: &[&str]| Config::from_sources(flags(args), &env).map(|c| c.max_body);
        assert_eq!(max_body(&[]).unwrap(), 65536);
        assert_eq!(max_body(&["--max-body", "1MiB"]).unwrap(), 1 << 20);
        assert_eq!(max_body(&["--max-body", "100"]).unwrap(), 100);
        assert_eq!(max_body(&["--max-body=16KiB"]).unwrap(), 16384);
        for bad in ["0", "lots", "1GiB", "1.5k"] {
            let err = max_body(&["--max-body", bad]).unwrap_err();
            assert!(err.to_string().contains("TB_DALLE_MAX_BODY"), "{err}");
        }
        let env = [("HOME", "/h"), ("TB_DALLE_MAX_BODY", "2k")];
        let cfg = Config::from_sources(flags(&[]), &env).unwrap();
        assert_eq!(cfg.max_body, 2048);
    }

    #[test]
    fn cors_origins_repeat_or_come_from_a_list_and_must_be_origins() {
        let env = [("HOME", "/h")];
        let cfg = Config::from_sources(
            flags(&[
                "--cors-origin",
                "https://a.example",
                "--cors-origin=http://b:8080",
            ]),
            &env,
        )
        .unwrap();
        assert_eq!(cfg.cors_origins, ["https://a.example", "http://b:8080"]);
        let env = [("HOME", "/h"), ("TB_DALLE_CORS_ORIGINS", "https://c, *")];
        let cfg = Config::from_sources(flags(&[]), &env).unwrap();
        assert_eq!(cfg.cors_origins, ["https://c", "*"]);
        for bad in ["example.org", "https://a/path", "https://"] {
            let err = Config::from_sources(flags(&["--cors-origin", bad]), &env).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn a_bad_keys_file_line_is_a_config_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# ok\nci sha256:nothex\n").unwrap();
        let err = Config::from_sources(
            flags(&["--api-keys-file", path.to_str().unwrap()]),
            &[("HOME", "/h")],
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("line 2"), "{err}");
        std::fs::write(&path, crate::auth::key_line("ci", "t")).unwrap();
        let env = [
            ("HOME", "/h"),
            ("TB_DALLE_API_KEYS_FILE", path.to_str().unwrap()),
        ];
        let cfg = Config::from_sources(flags(&[]), &env).unwrap();
        let key = cfg.api_keys.unwrap().verify("t").map(|k| k.name);
        assert_eq!(key.as_deref(), Some("ci"));
    }

    #[test]
    fn rate_limits_default_parse_and_name_their_source() {
        let env = [("HOME", "/h")];
        let cfg = Config::from_sources(flags(&[]), &env).unwrap();
        assert_eq!(cfg.limits, LimitsConfig::default());
        assert_eq!(cfg.limits.key.to_string(), "60/min");
        assert_eq!(cfg.limits.anonymous.to_string(), "10/min");
        let env = [
            ("HOME", "/h"),
            ("TB_DALLE_RATE_LIMIT", "5/sec"),
            ("TB_DALLE_ANON_RATE_LIMIT", "none"),
            ("TB_DALLE_TRUSTED_PROXIES", "10.0.0.0/8, ::1,192.0.2.7"),
        ];
        let cfg = Config::from_sources(flags(&[]), &env).unwrap();
        assert_eq!(cfg.limits.key.to_string(), "5/sec");
        assert_eq!(cfg.limits.anonymous, Limit::Unlimited);
        let proxies: Vec<String> = cfg
            .limits
            .trusted_proxies
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(proxies, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
        let args = [
            "--anon-rate-limit",
            "3/hour",
            "--trusted-proxy",
            "127.0.0.1",
            "--trusted-proxy=fd00::/8",
        ];
        let cfg = Config::from_sources(flags(&args), &env).unwrap();
        assert_eq!(cfg.limits.anonymous.to_string(), "3/hour", "the flag wins");
        assert_eq!(
            cfg.limits.trusted_proxies.len(),
            2,
            "flags replace the list"
        );
        for (args, name) in [
            (["--rate-limit", "fast"], "TB_DALLE_RATE_LIMIT"),
            (["--anon-rate-limit", "0/min"], "TB_DALLE_ANON_RATE_LIMIT"),
            (
                ["--trusted-proxy", "proxy.example"],
                "TB_DALLE_TRUSTED_PROXIES",
            ),
        ] {
            let err = Config::from_sources(flags(&args), &[("HOME", "/h")]).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn keys_new_is_a_subcommand_and_no_subcommand_serves() {
        assert!(flags(&[]).command.is_none());
        match flags(&["keys", "new", "ci"]).command {
            Some(Command::Keys {
                action: KeysCommand::New { name },
            }) => assert_eq!(name, "ci"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_timeouts_are_errors_naming_the_variable() {
        let err = Config::from_sources(
            flags(&[]),
            &[("HOME", "/h"), ("TB_DALLE_IMAGE_TIMEOUT", "x")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("TB_DALLE_IMAGE_TIMEOUT"));
    }
}
