//! `inbox-sim`: a standalone AgentSend SIMULATOR (in memory; NOT the real service) for the local
//! demo, the benchmark and manual testing.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// The largest `--latency` accepted.
const MAX_LATENCY: Duration = Duration::from_secs(60);

/// Run a local AgentSend SIMULATOR (in memory; NOT the real service) for development and tests.
#[derive(Parser, Debug)]
#[command(name = "inbox-sim", version, about)]
struct Args {
    /// Listen address (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// API keys the simulator accepts, one account each (simulator only; fake keys).
    #[arg(
        long = "api-key",
        env = "AGENTSEND_API_KEY",
        value_delimiter = ',',
        default_value = "sim-key"
    )]
    api_keys: Vec<String>,
    /// Latency added to every API request; at most 1m.
    #[arg(long, default_value = "0ms", value_parser = latency)]
    latency: Duration,
    /// Requests per second each account may make (a token bucket with one second's burst);
    /// beyond it, 429 with Retry-After. 0: no limit.
    #[arg(long, env = "INBOX_SIM_RATE_LIMIT", default_value_t = 0.0, value_parser = rate_limit)]
    rate_limit: f64,
}

/// Parse `--rate-limit`: a non-negative number of requests per second.
fn rate_limit(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of requests per second (examples: 0, 100, 0.5)"
        )),
    }
}

/// Parse `--latency`: a duration of at most [`MAX_LATENCY`].
fn latency(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (examples: 0ms, 20ms, 1s)"))?;
    if d > MAX_LATENCY {
        return Err(format!(
            "{} is too long: at most {} (examples: 0ms, 20ms, 1s)",
            s.trim(),
            humantime::format_duration(MAX_LATENCY)
        ));
    }
    Ok(d)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match inbox_sim::run_standalone(
        args.listen,
        args.api_keys,
        args.latency,
        inbox_sim::RateLimit::per_second(args.rate_limit),
    )
    .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inbox-sim: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_bounded() {
        let e = Args::try_parse_from(["inbox-sim", "--latency", "2m"]).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        let a = Args::try_parse_from(["inbox-sim", "--latency", "1m"]).unwrap();
        assert_eq!(a.latency, MAX_LATENCY);
    }

    #[test]
    fn rate_limit_is_off_by_default_and_validated() {
        let a = Args::try_parse_from(["inbox-sim"]).unwrap();
        assert_eq!(inbox_sim::RateLimit::per_second(a.rate_limit), None);
        let a = Args::try_parse_from(["inbox-sim", "--rate-limit", "100"]).unwrap();
        assert_eq!(
            inbox_sim::RateLimit::per_second(a.rate_limit).map(|l| l.per_second),
            Some(100.0)
        );
        for bad in ["-1", "fast", "inf"] {
            let flag = format!("--rate-limit={bad}");
            let e = Args::try_parse_from(["inbox-sim", flag.as_str()]).unwrap_err();
            assert!(e.to_string().contains("requests per second"), "{bad}: {e}");
        }
    }
}
