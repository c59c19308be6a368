//! Protected `/metrics` (`--metrics-secure`, the default): served over HTTPS, each caller
//! authenticated with a TokenReview of its bearer token and authorized with a
//! SubjectAccessReview for `get` on the non-resource URL `/metrics` — what kubebuilder
//! scaffolds as secure metrics. The certificate comes from `--metrics-cert-dir` (`tls.crt`,
//! `tls.key`) or is self-signed at start.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why HTTPS for `/metrics` could not be set up. Each message says what to do.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The certificate or key file in `--metrics-cert-dir` is missing or not PEM.
    #[error(
        "cannot read {path}: {reason}; --metrics-cert-dir must hold tls.crt and tls.key (PEM), or leave it unset for a self-signed certificate"
    )]
    CertFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// rustls refused the certificate and key (for example, a key that does not match).
    #[error("the metrics certificate and key do not form a usable pair: {0}")]
    Config(#[from] rustls::Error),
}

/// The TLS settings of the metrics endpoint: the certificate in `cert_dir` — read again
/// when its files change ([`ReloadingCert`]: a renewed cert-manager certificate is served
/// without a restart) — or a new self-signed one (for `localhost` and the host name).
pub fn tls_config(cert_dir: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder().with_no_client_auth();
    let config = match cert_dir {
        Some(dir) => {
            let resolver = ReloadingCert::new(dir.to_path_buf(), ReloadingCert::CHECK_EVERY)?;
            builder.with_cert_resolver(Arc::new(resolver))
        }
        None => {
            let (chain, key) = self_signed()?;
            builder.with_single_cert(chain, key)?
        }
    };
    Ok(Arc::new(config))
}

/// The certificate of `--metrics-cert-dir`, checked for changes at most once per
/// `check_every` (at a handshake) and read again when `tls.crt` or `tls.key` changed; a pair
/// that does not load keeps the one in use (logged), so a half-written renewal does not take
/// the endpoint down.
#[derive(Debug)]
pub struct ReloadingCert {
    dir: PathBuf,
    check_every: Duration,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<rustls::sign::CertifiedKey>,
    /// The files' modification times when read.
    stamp: Option<(std::time::SystemTime, std::time::SystemTime)>,
    checked: Instant,
}

impl ReloadingCert {
    /// How often the files are looked at.
    pub const CHECK_EVERY: Duration = Duration::from_secs(10);

    /// Read the pair in `dir` (an error if it does not load).
    pub fn new(dir: PathBuf, check_every: Duration) -> Result<ReloadingCert, TlsError> {
        let stamp = stamp(&dir);
        let key = certified(&dir)?;
        Ok(ReloadingCert {
            dir,
            check_every,
            state: Mutex::new(Loaded {
                key,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to serve now, reloaded first if the files changed.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut state = self.state.lock();
        let now = Instant::now();
        if now.duration_since(state.checked) >= self.check_every {
            state.checked = now;
            let stamp = stamp(&self.dir);
            if stamp != state.stamp {
                match certified(&self.dir) {
                    Ok(key) => {
                        tracing::info!(dir = %self.dir.display(), "metrics certificate reloaded");
                        state.key = key;
                        state.stamp = stamp;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics certificate changed but does not load; serving the previous one")
                    }
                }
            }
        }
        state.key.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// The modification times of the pair's files.
fn stamp(dir: &Path) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let modified = |f: &str| {
        std::fs::metadata(dir.join(f))
            .and_then(|m| m.modified())
            .ok()
    };
    Some((modified("tls.crt")?, modified("tls.key")?))
}

/// The pair in `dir`, ready to serve.
fn certified(dir: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let (chain, key) = read_pair(dir)?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let key = rustls::sign::CertifiedKey::from_der(chain, key, &provider)?;
    Ok(Arc::new(key))
}

fn read_pair(
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let crt = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let bad = |path: &Path, e: &dyn std::fmt::Display| TlsError::CertFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(&crt)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&crt, &e))?;
    if chain.is_empty() {
        return Err(bad(&crt, &"no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| bad(&key, &e))?;
    Ok((chain, key))
}

fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut names = vec!["localhost".to_string()];
    if let Ok(host) = std::env::var("HOSTNAME") {
        names.push(host);
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    Ok((vec![certified.cert.der().clone()], key))
}

/// The outcome of checking one caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated and allowed to `get /metrics`.
    Allowed,
    /// No bearer token, or the API server does not accept it: 401.
    Unauthenticated,
    /// Authenticated, but not allowed to `get /metrics`: 403.
    Forbidden,
    /// The API server could not be asked: 503 (the scrape is retried).
    Unavailable,
}

impl Verdict {
    /// The HTTP status answered for this verdict (only [`Verdict::Allowed`] reaches /metrics).
    pub fn status(self) -> StatusCode {
        match self {
            Verdict::Allowed => StatusCode::OK,
            Verdict::Unauthenticated => StatusCode::UNAUTHORIZED,
            Verdict::Forbidden => StatusCode::FORBIDDEN,
            Verdict::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks callers of `/metrics` against the API server, remembering each token's verdict
/// for [`Authorizer::TTL`] so a scrape every few seconds costs no more than two reviews per
/// TTL. Tokens are kept only as SHA-256 digests. The path to the API server is bounded: at
/// most [`Authorizer::CAPACITY`] verdicts are kept (the least recently used goes first), at
/// most [`Authorizer::REVIEWS_PER_SECOND`] new tokens are reviewed per second and
/// [`Authorizer::CONCURRENT_REVIEWS`] at once — a caller beyond that gets 503 and no review, so
/// a flood of made-up tokens cannot turn into a flood of TokenReviews on the operator's client.
#[derive(Clone)]
pub struct Authorizer {
    client: kube::Client,
    verdicts: Arc<Mutex<Verdicts>>,
    pace: Arc<governor::DefaultDirectRateLimiter>,
    reviewing: Arc<tokio::sync::Semaphore>,
}

/// Recent verdicts by SHA-256 of the token: the verdict, when it was reached, and when it
/// was last used.
type Verdicts = HashMap<[u8; 32], (Verdict, Instant, Instant)>;

impl Authorizer {
    /// How long a verdict is reused.
    pub const TTL: Duration = Duration::from_secs(10);
    /// Most verdicts remembered (the least recently used goes when full).
    pub const CAPACITY: usize = 1024;
    /// New tokens reviewed per second (with a burst of as many).
    pub const REVIEWS_PER_SECOND: u32 = 10;
    /// Reviews under way at once.
    pub const CONCURRENT_REVIEWS: usize = 4;

    /// An authorizer asking the API server behind `client`.
    pub fn new(client: kube::Client) -> Self {
        let rate = std::num::NonZeroU32::new(Self::REVIEWS_PER_SECOND)
            .unwrap_or(std::num::NonZeroU32::MIN);
        Authorizer {
            client,
            verdicts: Arc::default(),
            pace: Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                rate,
            ))),
            reviewing: Arc::new(tokio::sync::Semaphore::new(Self::CONCURRENT_REVIEWS)),
        }
    }

    /// The verdict on a caller presenting `token` (none: unauthenticated).
    pub async fn check(&self, token: Option<&str>) -> Verdict {
        let Some(token) = token else {
            return Verdict::Unauthenticated;
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self.remembered(&digest) {
            return v;
        }
        // A new token: reviewed only within the pace and the concurrency bound.
        let Ok(_reviewing) = self.reviewing.try_acquire() else {
            return Verdict::Unavailable;
        };
        if self.pace.check().is_err() {
            return Verdict::Unavailable;
        }
        let verdict = self.review(token).await;
        if verdict != Verdict::Unavailable {
            self.remember(digest, verdict);
        }
        verdict
    }

    /// A verdict still within its TTL, marked used.
    fn remembered(&self, digest: &[u8; 32]) -> Option<Verdict> {
        let now = Instant::now();
        let mut cache = self.verdicts.lock();
        let (verdict, reached, used) = cache.get_mut(digest)?;
        if now.duration_since(*reached) >= Self::TTL {
            cache.remove(digest);
            return None;
        }
        *used = now;
        Some(*verdict)
    }

    /// Keep `verdict`, making room by dropping expired verdicts, then the least recently used.
    fn remember(&self, digest: [u8; 32], verdict: Verdict) {
        let now = Instant::now();
        let mut cache = self.verdicts.lock();
        if cache.len() >= Self::CAPACITY {
            cache.retain(|_, (_, reached, _)| now.duration_since(*reached) < Self::TTL);
        }
        if cache.len() >= Self::CAPACITY
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| *k)
        {
            cache.remove(&oldest);
        }
        cache.insert(digest, (verdict, now, now));
    }

    /// A TokenReview, then a SubjectAccessReview for the user it names.
    async fn review(&self, token: &str) -> Verdict {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let status = match reviews.create(&PostParams::default(), &review).await {
            Ok(r) => r.status.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: TokenReview failed");
                return Verdict::Unavailable;
            }
        };
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => return Verdict::Unauthenticated,
        };
        let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
        match access
            .create(&PostParams::default(), &metrics_access(user))
            .await
        {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => Verdict::Allowed,
            Ok(_) => Verdict::Forbidden,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: SubjectAccessReview failed");
                Verdict::Unavailable
            }
        }
    }
}

/// The SubjectAccessReview asking whether `user` may `get` the non-resource URL `/metrics`.
pub fn metrics_access(user: UserInfo) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username,
            groups: user.groups,
            uid: user.uid,
            extra: user.extra,
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some("/metrics".into()),
                verb: Some("get".into()),
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// axum middleware: only [`Verdict::Allowed`] callers reach the handler.
pub async fn require_access(
    State(auth): State<Authorizer>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(bearer(request.headers())).await {
        Verdict::Allowed => next.run(request).await,
        denied => (denied.status(), format!("{denied:?}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let cases = [
            (Some("Bearer abc.def"), Some("abc.def")),
            (Some("bearer abc"), Some("abc")),
            (Some("Bearer "), None),
            (Some("Basic dXNlcjpwdw=="), None),
            (Some("abc"), None),
            (None, None),
        ];
        for (value, want) in cases {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::AUTHORIZATION, v.parse().unwrap());
            }
            assert_eq!(bearer(&h), want, "{value:?}");
        }
    }

    /// The verdict cache is bounded and keeps the tokens in use: when full, the least
    /// recently used verdict goes (before, the cache stopped caching at 1,024 entries, so a
    /// flood of made-up tokens cost every real scrape two reviews).
    #[tokio::test]
    async fn verdicts_are_dropped_least_recently_used_first() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let auth = Authorizer::new(kube::Client::try_from(config).unwrap());
        let digest = |i: usize| -> [u8; 32] { Sha256::digest(i.to_be_bytes()).into() };
        for i in 0..Authorizer::CAPACITY {
            auth.remember(digest(i), Verdict::Allowed);
        }
        assert_eq!(
            auth.remembered(&digest(0)),
            Some(Verdict::Allowed),
            "in use"
        );
        auth.remember(digest(Authorizer::CAPACITY), Verdict::Forbidden);
        assert_eq!(auth.remembered(&digest(0)), Some(Verdict::Allowed), "kept");
        assert_eq!(
            auth.remembered(&digest(1)),
            None,
            "the least recently used went"
        );
        assert_eq!(
            auth.remembered(&digest(Authorizer::CAPACITY)),
            Some(Verdict::Forbidden)
        );
        let held = auth.verdicts.lock().len();
        assert_eq!(held, Authorizer::CAPACITY);
    }

    /// A renewed certificate in `--metrics-cert-dir` is served without a restart; one that
    /// does not load keeps the previous one.
    #[test]
    fn a_renewed_certificate_is_served_without_a_restart() {
        crate::ensure_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            std::fs::write(dir.path().join("tls.crt"), c.cert.pem()).unwrap();
            std::fs::write(dir.path().join("tls.key"), c.signing_key.serialize_pem()).unwrap();
            c.cert.der().clone()
        };
        let first = write("first.example");
        let certs = ReloadingCert::new(dir.path().to_path_buf(), Duration::ZERO).unwrap();
        assert_eq!(certs.current().cert[0], first);
        // Modification times have a coarse resolution on some filesystems: wait until the
        // rewritten files' times differ from the first ones.
        let before = stamp(dir.path());
        let second = loop {
            let der = write("second.example");
            if stamp(dir.path()) != before {
                break der;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(certs.current().cert[0], second, "reloaded");
        let renewed = stamp(dir.path());
        while stamp(dir.path()) == renewed {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        }
        assert_eq!(
            certs.current().cert[0],
            second,
            "a pair that does not load keeps the one in use"
        );
    }

    #[test]
    fn verdicts_map_to_http_statuses() {
        let cases = [
            (Verdict::Allowed, 200),
            (Verdict::Unauthenticated, 401),
            (Verdict::Forbidden, 403),
            (Verdict::Unavailable, 503),
        ];
        for (v, code) in cases {
            assert_eq!(v.status().as_u16(), code, "{v:?}");
        }
    }

    #[test]
    fn the_access_review_asks_for_get_on_the_metrics_url_as_the_caller() {
        let sar = metrics_access(UserInfo {
            username: Some("system:serviceaccount:mon:prometheus".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            uid: Some("u1".into()),
            extra: None,
        });
        let attrs = sar.spec.non_resource_attributes.clone().unwrap();
        assert_eq!(
            (attrs.path.as_deref(), attrs.verb.as_deref()),
            (Some("/metrics"), Some("get"))
        );
        assert_eq!(
            sar.spec.user.as_deref(),
            Some("system:serviceaccount:mon:prometheus")
        );
        assert_eq!(sar.spec.uid.as_deref(), Some("u1"));
        assert!(sar.spec.resource_attributes.is_none());
    }

    #[test]
    fn a_self_signed_certificate_is_made_when_no_cert_dir_is_given() {
        crate::ensure_crypto_provider();
        assert!(tls_config(None).is_ok());
        let missing = tls_config(Some(Path::new("/nonexistent-cert-dir")));
        let msg = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("tls.crt") && msg.contains("--metrics-cert-dir"),
            "{msg}"
        );
    }
}
