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
    /// Print the Inbox CustomResourceDefinition as YAML.
    Crd,
    /// Run a local AgentSend SIMULATOR (in memory; NOT the real service) for development and tests.
    Simulator(SimulatorArgs),
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 1h)"))
}

/// Flags of `inbox-operator run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// AgentSend API base URL.
    #[arg(
        long,
        env = "AGENTSEND_API_URL",
        default_value = "https://api.agentsend.io"
    )]
    pub agentsend_url: String,

    /// File holding the default API key (e.g. a mounted Secret); re-read on use, so rotation
    /// needs no restart. Alternatively set AGENTSEND_API_KEY. The key is never a flag value.
    #[arg(long, env = "AGENTSEND_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Start without a default API key (every Inbox then needs spec.credentials).
    #[arg(long, env = "INBOX_OPERATOR_NO_DEFAULT_KEY")]
    pub no_default_key: bool,

    /// How often counters are refreshed from AgentSend (one list scan per account).
    #[arg(long, env = "INBOX_OPERATOR_SYNC_INTERVAL", default_value = "60s", value_parser = duration)]
    pub sync_interval: Duration,

    /// Reconciles running at once, per watched scope: one pool when watching all namespaces,
    /// one pool per namespace when --namespace lists several (so 3 namespaces allow 3x this).
    #[arg(long, env = "INBOX_OPERATOR_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Namespaces to watch (comma-separated or repeated); default: all.
    #[arg(long, env = "INBOX_OPERATOR_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,

    /// Only manage Inboxes matching this label selector (sharding across operators).
    #[arg(long, env = "INBOX_OPERATOR_SELECTOR")]
    pub selector: Option<String>,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "INBOX_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,

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

    /// How long a leader's Lease stays valid without renewal (whole seconds, at least 4s).
    /// The leader renews after half of it and stops writing three quarters of it after its
    /// last confirmed renewal, before another instance may take over.
    #[arg(long, env = "INBOX_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = duration)]
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

    /// Sustained AgentSend requests per second (all accounts together).
    #[arg(long, env = "INBOX_OPERATOR_AGENTSEND_RATE", default_value_t = 50)]
    pub agentsend_rate: u32,

    /// Burst of AgentSend requests allowed above the sustained rate.
    #[arg(long, env = "INBOX_OPERATOR_AGENTSEND_BURST", default_value_t = 100)]
    pub agentsend_burst: u32,

    /// AgentSend requests in flight at once.
    #[arg(
        long,
        env = "INBOX_OPERATOR_AGENTSEND_CONCURRENCY",
        default_value_t = 32
    )]
    pub agentsend_concurrency: usize,

    /// Timeout of one AgentSend request.
    #[arg(long, env = "INBOX_OPERATOR_AGENTSEND_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub agentsend_timeout: Duration,
}

/// Flags of `inbox-operator simulator`.
#[derive(Args, Debug, Clone)]
pub struct SimulatorArgs {
    /// Listen address (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// API keys the simulator accepts, one account each (simulator only; fake keys).
    #[arg(
        long = "api-key",
        env = "AGENTSEND_API_KEY",
        value_delimiter = ',',
        default_value = "sim-key"
    )]
    pub api_keys: Vec<String>,
    /// Latency added to every API request.
    #[arg(long, default_value = "0ms", value_parser = duration)]
    pub latency: Duration,
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
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.sync_interval, Duration::from_secs(30));
        assert_eq!(a.namespace, ["a", "b"]);
        assert_eq!(a.selector.as_deref(), Some("shard=1"));
        assert_eq!(a.log_format, LogFormat::Json);
        assert_eq!(a.agentsend_url, "https://api.agentsend.io");
    }

    #[test]
    fn api_key_is_not_a_flag() {
        assert!(Cli::try_parse_from(["inbox-operator", "run", "--api-key", "x"]).is_err());
    }

    #[test]
    fn bad_duration_says_what_is_expected() {
        let e =
            Cli::try_parse_from(["inbox-operator", "run", "--sync-interval", "soon"]).unwrap_err();
        assert!(e.to_string().contains("examples"), "{e}");
    }
}
