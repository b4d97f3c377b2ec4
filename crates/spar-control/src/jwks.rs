//! The keys behind RequestAuthentication `jwksUri`s, fetched by the control plane and
//! pushed inline to proxies, as istiod does by default: fetched when a URI first appears,
//! refreshed every 20 minutes, retried with back-off on failure. A failed fetch keeps the last
//! good keys and is reported (`/debug/status`, `spar status`); a change republishes config.
//! HTTP and HTTPS (verified against the system's CA bundle).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const REFRESH: Duration = Duration::from_secs(20 * 60);
const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 1 << 20;

#[derive(Default)]
struct Entry {
    body: Option<String>,
    error: Option<String>,
    task: Option<JoinHandle<()>>,
}

pub struct JwksCache {
    entries: Mutex<HashMap<String, Entry>>,
    changed: Arc<Notify>,
}

impl JwksCache {
    /// `changed` is told when keys change (the config publisher listens on it).
    pub fn new(changed: Arc<Notify>) -> Arc<JwksCache> {
        Arc::new(JwksCache {
            entries: Mutex::new(HashMap::new()),
            changed,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep fetching exactly these URIs.
    pub fn track(self: &Arc<Self>, uris: &BTreeSet<String>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut entries = self.lock();
        entries.retain(|uri, e| {
            let keep = uris.contains(uri);
            if !keep && let Some(t) = e.task.take() {
                t.abort();
            }
            keep
        });
        for uri in uris {
            let e = entries.entry(uri.clone()).or_default();
            if e.task.is_none() {
                e.task = Some(rt.spawn(refresh(self.clone(), uri.clone())));
            }
        }
    }

    /// URI -> the last good JWKS.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.lock()
            .iter()
            .filter_map(|(u, e)| Some((u.clone(), e.body.clone()?)))
            .collect()
    }

    /// The URIs whose last fetch failed, with why.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .lock()
            .iter()
            .filter_map(|(u, e)| Some((u.clone(), e.error.clone()?)))
            .collect();
        v.sort();
        v
    }

    fn record(&self, uri: &str, r: Result<String, String>) {
        let changed = {
            let mut entries = self.lock();
            let Some(e) = entries.get_mut(uri) else {
                return;
            };
            match r {
                Ok(body) => {
                    e.error = None;
                    let changed = e.body.as_deref() != Some(body.as_str());
                    e.body = Some(body);
                    changed
                }
                Err(why) => {
                    tracing::warn!(%uri, error = %why, "cannot fetch JWKS; keeping the last good keys");
                    e.error = Some(why);
                    false
                }
            }
        };
        if changed {
            self.changed.notify_one();
        }
    }
}

async fn refresh(cache: Arc<JwksCache>, uri: String) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let r = tokio::time::timeout(TIMEOUT, fetch(&uri))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")))
            .and_then(|body| {
                serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .filter(|v| v.get("keys").is_some_and(|k| k.is_array()))
                    .map(|_| body)
                    .ok_or_else(|| "the answer is not a JWKS (no \"keys\" list)".to_string())
            });
        let ok = r.is_ok();
        cache.record(&uri, r);
        if ok {
            backoff = Duration::from_secs(1);
            tokio::time::sleep(REFRESH).await;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }
}

/// The system's CA bundle, for HTTPS.
fn roots() -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(pem) = std::fs::read(path) {
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
                let _ = store.add(c);
            }
        }
    }
    store
}

/// GET `uri` (http or https), its body.
pub async fn fetch(uri: &str) -> Result<String, String> {
    let u: Uri = uri.parse().map_err(|e| format!("{uri:?}: {e}"))?;
    let https = match u.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{uri:?}: use http:// or https://")),
    };
    let host = u
        .host()
        .ok_or_else(|| format!("{uri:?} has no host"))?
        .to_string();
    let port = u.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.trim_matches(|c| c == '[' || c == ']'), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let path = u
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let req = Request::get(path)
        .header(
            http::header::HOST,
            u.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    if https {
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots())
            .with_no_client_auth();
        let name =
            rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        get(TokioIo::new(tls), req).await
    } else {
        get(TokioIo::new(tcp), req).await
    }
}

async fn get<I>(io: I, req: Request<Empty<bytes::Bytes>>) -> Result<String, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fetch_keeps_the_last_good_keys_and_is_reported() {
        let changed = Arc::new(Notify::new());
        let cache = JwksCache::new(changed);
        let uri = "http://keys.example/jwks.json";
        cache.lock().insert(uri.into(), Entry::default());
        let good = r#"{"keys":[{"kty":"EC"}]}"#.to_string();
        cache.record(uri, Ok(good.clone()));
        assert_eq!(cache.snapshot()[uri], good);
        assert!(cache.problems().is_empty());
        cache.record(uri, Err("connect keys.example:80: refused".into()));
        assert_eq!(cache.snapshot()[uri], good, "the last good keys stay");
        assert_eq!(
            cache.problems(),
            vec![(uri.to_string(), "connect keys.example:80: refused".into())]
        );
        cache.record(uri, Ok(good.clone()));
        assert!(cache.problems().is_empty(), "a good fetch clears the error");
    }

    #[tokio::test]
    async fn what_is_not_a_jwks_is_an_error() {
        assert!(fetch("file:///etc/passwd").await.is_err());
        assert!(fetch("http://").await.is_err());
    }
}
