//! Command-line interface. Every `run` flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// inbox-operator: manage AgentSend email inboxes declaratively from Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "inbox-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions (Inbox, Account, ClusterAccount) as YAML.
    Crd(CrdArgs),
    /// Print Inbox YAML adopting every inbox of the account that no Inbox claims yet.
    Import(ImportArgs),
    /// List the inboxes of an account that no Inbox in the cluster claims (IDs and
    /// addresses; never the key).
    Orphans(OrphansArgs),
}

/// The AgentSend endpoint, shared by every subcommand that calls the API.
#[derive(Args, Debug, Clone)]
pub struct EndpointArgs {
    /// AgentSend API base URL.
    #[arg(
        long,
        env = "AGENTSEND_API_URL",
        default_value = "https://api.agentsend.io"
    )]
    pub agentsend_url: String,
}

/// Flags of `inbox-operator import`.
#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// Namespace of the generated Inboxes.
    #[arg(long)]
    pub namespace: String,

    /// Only inboxes on this domain: a domain ID (`domainId`) or the address's domain.
    #[arg(long)]
    pub domain: Option<String>,

    /// Generate observe-only Inboxes (`spec.managementPolicy: Observe`): never deleted or
    /// re-created by the operator.
    #[arg(long)]
    pub observe: bool,

    /// Where the AgentSend API is.
    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// File holding the account's API key; alternatively set AGENTSEND_API_KEY. The key is
    /// never a flag value, and never printed.
    #[arg(long, env = "AGENTSEND_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
}

/// Flags of `inbox-operator orphans`.
#[derive(Args, Debug, Clone)]
pub struct OrphansArgs {
    /// The account's name: a ClusterAccount, or with --namespace an Account.
    #[arg(long)]
    pub account: String,
    /// The namespace of the Account (omitted: a ClusterAccount).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Where ClusterAccount key Secrets live: the operator's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "inbox-operator")]
    pub operator_namespace: String,
    /// Where the AgentSend API is.
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

/// Flags of `inbox-operator crd`.
#[derive(Args, Debug, Clone)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory (as `crds/` holds them) instead of
    /// printing them as one multi-document YAML.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why a duration flag is refused at start-up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationFlagError {
    /// Not a duration at all.
    #[error("{0} (examples: 30s, 5m, 1h)")]
    Unparsable(String),
    /// Below the flag's minimum.
    #[error("{got} is too short: at least {min} (examples: 30s, 5m, 1h)")]
    TooShort {
        /// The value given.
        got: String,
        /// The smallest accepted.
        min: String,
    },
    /// Above the flag's maximum.
    #[error("{got} is too long: at most {max} (examples: 30s, 5m, 1h)")]
    TooLong {
        /// The value given.
        got: String,
        /// The largest accepted.
        max: String,
    },
}

/// Bounds of the duration flags (inclusive), checked at start-up.
pub mod limits {
    use std::time::Duration;

    /// `--sync-interval`: a counter scan per account per interval; below 1 s it is a hot loop,
    /// above a day the mirrored counters are meaningless (they reset daily).
    pub const SYNC_INTERVAL: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(24 * 3600));
    /// `--lease-duration`: renewed after half of it, writes stop at three quarters; below 4 s
    /// renewals cannot be confirmed in time, above an hour a crashed leader stalls every Inbox
    /// for that long.
    pub const LEASE_DURATION: (Duration, Duration) =
        (Duration::from_secs(4), Duration::from_secs(3600));
    /// `--agentsend-timeout`: per request; zero would fail every call.
    pub const AGENTSEND_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(100), Duration::from_secs(300));
    /// `--max-retry-delay`: below 1 s a failing Inbox is a hot loop; the backoff never waits
    /// longer than 5 minutes anyway.
    pub const MAX_RETRY_DELAY: (Duration, Duration) =
        (Duration::from_secs(1), crate::controller::MAX_RETRY_DELAY);
}

/// Parse a duration and check it lies within `(min, max)`.
fn bounded(s: &str, (min, max): (Duration, Duration)) -> Result<Duration, DurationFlagError> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| DurationFlagError::Unparsable(e.to_string()))?;
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if d < min {
        return Err(DurationFlagError::TooShort {
            got: s.trim().to_string(),
            min: show(min),
        });
    }
    if d > max {
        return Err(DurationFlagError::TooLong {
            got: s.trim().to_string(),
            max: show(max),
        });
    }
    Ok(d)
}

fn sync_interval(s: &str) -> Result<Duration, DurationFlagError> {
    bounded(s, limits::SYNC_INTERVAL)
}

fn lease_duration(s: &str) -> Result<Duration, DurationFlagError> {
    bounded(s, limits::LEASE_DURATION)
}

fn agentsend_timeout(s: &str) -> Result<Duration, DurationFlagError> {
    bounded(s, limits::AGENTSEND_TIMEOUT)
}

fn max_retry_delay(s: &str) -> Result<Duration, DurationFlagError> {
    bounded(s, limits::MAX_RETRY_DELAY)
}

/// Flags of `inbox-operator run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Where the AgentSend API is.
    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// File holding the default API key (e.g. a mounted Secret); re-read on use, so rotation
    /// needs no restart. Alternatively set AGENTSEND_API_KEY. The key is never a flag value.
    #[arg(long, env = "AGENTSEND_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Start without a default API key: every Inbox then needs `spec.accountRef`,
    /// `spec.credentials` or a default ClusterAccount that allows its namespace.
    #[arg(long, env = "INBOX_OPERATOR_NO_DEFAULT_KEY")]
    pub no_default_key: bool,

    /// How often counters are refreshed from AgentSend (one list scan per account); 1s–24h.
    #[arg(long, env = "INBOX_OPERATOR_SYNC_INTERVAL", default_value = "60s", value_parser = sync_interval)]
    pub sync_interval: Duration,

    /// The longest wait between retries of a failing Inbox: the backoff doubles from 1 s per
    /// consecutive failure up to this (jittered down to half of it); 1s–5m. AgentSend's
    /// Retry-After is always honoured in full.
    #[arg(long, env = "INBOX_OPERATOR_MAX_RETRY_DELAY", default_value = "5m", value_parser = max_retry_delay)]
    pub max_retry_delay: Duration,

    /// Reconciles running at once, per watched scope: one pool when watching all namespaces,
    /// one pool per namespace when --namespace lists several (so 3 namespaces allow 3x this);
    /// at least 1.
    #[arg(long, env = "INBOX_OPERATOR_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Namespaces to watch (comma-separated or repeated); default: all.
    #[arg(long, env = "INBOX_OPERATOR_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,

    /// Only manage Inboxes matching this label selector (sharding across operators).
    #[arg(long, env = "INBOX_OPERATOR_SELECTOR")]
    pub selector: Option<String>,

    /// Which account status this instance writes: `all` (Accounts of the watched namespaces
    /// and every ClusterAccount), `accounts` (only Accounts), `none`. With several shards or
    /// installs on one cluster, exactly one should write ClusterAccount status.
    #[arg(
        long,
        env = "INBOX_OPERATOR_ACCOUNT_STATUS",
        value_enum,
        default_value_t = crate::controller::StatusWriter::All
    )]
    pub account_status: crate::controller::StatusWriter,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "INBOX_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,

    /// Serve /metrics over HTTPS to callers the API server authenticates (TokenReview) and
    /// authorizes for `get` on the non-resource URL /metrics (SubjectAccessReview).
    /// `--metrics-secure=false` serves plain HTTP to anyone (local runs).
    #[arg(
        long,
        env = "INBOX_OPERATOR_METRICS_SECURE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub metrics_secure: bool,

    /// Directory with `tls.crt` and `tls.key` (PEM) for the HTTPS metrics endpoint, read again
    /// within 10 s of a change (a renewed certificate needs no restart; a pair that does not
    /// load keeps the previous one); default: a self-signed certificate made at start.
    #[arg(long, env = "INBOX_OPERATOR_METRICS_CERT_DIR")]
    pub metrics_cert_dir: Option<std::path::PathBuf>,

    /// Also serve /healthz and /readyz over plain HTTP on this address (for probes when
    /// /metrics is HTTPS); default: only on the metrics address.
    #[arg(long, env = "INBOX_OPERATOR_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,

    /// Elect a leader through a coordination.k8s.io Lease; only the leader reconciles.
    #[arg(long, env = "INBOX_OPERATOR_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Name of the Lease.
    #[arg(
        long,
        env = "INBOX_OPERATOR_LEASE_NAME",
        default_value = "inbox-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (default: the pod's namespace from POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// The operator's namespace, where ClusterAccount key Secrets live; default: the pod's
    /// namespace, else the in-cluster service-account namespace, else `default`.
    #[arg(long, env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,

    /// How long a leader's Lease stays valid without renewal (whole seconds, 4s–1h).
    /// The leader renews after half of it and stops writing three quarters of it after its
    /// last confirmed renewal, before another instance may take over.
    #[arg(long, env = "INBOX_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = lease_duration)]
    pub lease_duration: Duration,

    /// Identity in the Lease and on events (default: POD_NAME or the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Log format.
    #[arg(
        long,
        env = "INBOX_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Optional hard ceiling of AgentSend requests per second (all accounts together); at
    /// least 1. Unset: each account's adaptive budget (unlimited until a 429, then AIMD) and
    /// `--agentsend-concurrency` bound the rate.
    #[arg(long, env = "INBOX_OPERATOR_AGENTSEND_RATE", value_parser = clap::value_parser!(u32).range(1..))]
    pub agentsend_rate: Option<u32>,

    /// Burst of AgentSend requests allowed above `--agentsend-rate` (when set).
    #[arg(long, env = "INBOX_OPERATOR_AGENTSEND_BURST", default_value_t = 100)]
    pub agentsend_burst: u32,

    /// AgentSend requests in flight at once; 1–10000.
    #[arg(
        long,
        env = "INBOX_OPERATOR_AGENTSEND_CONCURRENCY",
        default_value_t = 32,
        value_parser = clap::value_parser!(u16).range(1..=10_000)
    )]
    pub agentsend_concurrency: u16,

    /// Timeout of one AgentSend request; 100ms–5m.
    #[arg(long, env = "INBOX_OPERATOR_AGENTSEND_TIMEOUT", default_value = "10s", value_parser = agentsend_timeout)]
    pub agentsend_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_run_flags() {
        let cli = Cli::try_parse_from([
            "inbox-operator",
            "run",
            "--sync-interval",
            "30s",
            "--namespace",
            "a,b",
            "--selector",
            "shard=1",
            "--log-format",
            "json",
            "--account-status",
            "none",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.sync_interval, Duration::from_secs(30));
        assert_eq!(
            a.account_status,
            crate::controller::accounts::status::StatusWriter::None
        );
        assert_eq!(a.namespace, ["a", "b"]);
        assert_eq!(a.selector.as_deref(), Some("shard=1"));
        assert_eq!(a.log_format, LogFormat::Json);
        assert_eq!(a.endpoint.agentsend_url, "https://api.agentsend.io");
    }

    #[test]
    fn parses_import_flags() {
        let cli = Cli::try_parse_from([
            "inbox-operator",
            "import",
            "--namespace",
            "team",
            "--domain",
            "example.com",
        ])
        .unwrap();
        let Command::Import(a) = cli.command else {
            panic!("not import")
        };
        assert_eq!(
            (a.namespace.as_str(), a.domain.as_deref(), a.observe),
            ("team", Some("example.com"), false)
        );
        assert!(
            Cli::try_parse_from(["inbox-operator", "import"]).is_err(),
            "--namespace is required"
        );
        assert!(
            Cli::try_parse_from([
                "inbox-operator",
                "import",
                "--namespace",
                "n",
                "--api-key",
                "x"
            ])
            .is_err()
        );
    }

    #[test]
    fn api_key_is_not_a_flag() {
        assert!(Cli::try_parse_from(["inbox-operator", "run", "--api-key", "x"]).is_err());
    }

    fn run_err(args: &[&str]) -> String {
        let mut argv = vec!["inbox-operator", "run"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap_err().to_string()
    }

    #[test]
    fn duration_flags_are_bounded() {
        for (flag, bad, says) in [
            ("--sync-interval", "0s", "too short"),
            ("--sync-interval", "500ms", "too short"),
            ("--sync-interval", "2days", "too long"),
            ("--sync-interval", "99999999999999999999s", "examples"),
            ("--sync-interval=-5s", "", "examples"),
            ("--lease-duration", "0s", "too short"),
            ("--lease-duration", "2h", "too long"),
            ("--agentsend-timeout", "0s", "too short"),
            ("--agentsend-timeout", "1h", "too long"),
            ("--max-retry-delay", "100ms", "too short"),
            ("--max-retry-delay", "10m", "too long"),
        ] {
            let args: Vec<&str> = [flag, bad].into_iter().filter(|a| !a.is_empty()).collect();
            let e = run_err(&args);
            let name = flag.split('=').next().unwrap_or(flag);
            assert!(e.contains(says) && e.contains(name), "{flag} {bad}: {e}");
        }
        let e = run_err(&["--sync-interval", "0s"]);
        assert!(e.contains("at least 1s"), "{e}");
        let e = run_err(&["--sync-interval", "25h"]);
        assert!(e.contains("at most 1day"), "{e}");
    }

    #[test]
    fn duration_flag_limits_are_accepted() {
        let cli = Cli::try_parse_from([
            "inbox-operator",
            "run",
            "--sync-interval",
            "24h",
            "--lease-duration",
            "4s",
            "--agentsend-timeout",
            "100ms",
            "--max-retry-delay",
            "1s",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.sync_interval, Duration::from_secs(86_400));
        assert_eq!(a.lease_duration, Duration::from_secs(4));
        assert_eq!(a.agentsend_timeout, Duration::from_millis(100));
        assert_eq!(a.max_retry_delay, Duration::from_secs(1));
    }

    #[test]
    fn counts_must_be_positive() {
        for flag in [
            "--concurrency",
            "--agentsend-rate",
            "--agentsend-concurrency",
        ] {
            let e = run_err(&[flag, "0"]);
            assert!(e.contains(flag), "{flag}: {e}");
        }
        assert!(run_err(&["--agentsend-concurrency", "10001"]).contains("10001"));
    }

    #[test]
    fn agentsend_rate_is_an_optional_ceiling() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["inbox-operator", "run"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Run(a)) => a.agentsend_rate,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&["--agentsend-rate", "200"]), Some(200));
    }

    #[test]
    fn bad_duration_says_what_is_expected() {
        let e =
            Cli::try_parse_from(["inbox-operator", "run", "--sync-interval", "soon"]).unwrap_err();
        assert!(e.to_string().contains("examples"), "{e}");
    }
}
