//! Workload certificates held by the node proxy: one per identity of its pods, requested
//! from the CA with the node's token (impersonation), kept in memory only, and renewed at
//! half of their lifetime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use spar_identity::Identity;
use spar_xds::ca::IstioCertificateRequest;
use spar_xds::ca::istio_certificate_service_client::IstioCertificateServiceClient;

use crate::Error;
use crate::control::ControlPlane;

/// One identity's current certificate.
pub struct Slot {
    pub cert: ArcSwapOption<CertifiedKey>,
    pub expires: Mutex<Option<SystemTime>>,
    ready: tokio::sync::Notify,
}

pub struct CertManager {
    control: ControlPlane,
    /// Requested lifetime in seconds (0: the CA's default).
    ttl_secs: i64,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl CertManager {
    pub fn new(control: ControlPlane, ttl: Option<Duration>) -> Arc<Self> {
        Arc::new(CertManager {
            control,
            ttl_secs: ttl.map_or(0, |d| d.as_secs() as i64),
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The slot for `identity`, starting its fetch-and-rotate task on first use.
    pub fn slot(self: &Arc<Self>, identity: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get(identity) {
            return s.clone();
        }
        let slot = Arc::new(Slot {
            cert: ArcSwapOption::empty(),
            expires: Mutex::new(None),
            ready: tokio::sync::Notify::new(),
        });
        slots.insert(identity.to_string(), slot.clone());
        tokio::spawn(self.clone().rotate(identity.to_string(), slot.clone()));
        slot
    }

    /// The certificate for `identity`, waiting (bounded) for the first one.
    pub async fn get(self: &Arc<Self>, identity: &str) -> Result<Arc<CertifiedKey>, Error> {
        let slot = self.slot(identity);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = slot.cert.load_full() {
                return Ok(c);
            }
            let notified = slot.ready.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::NoCertificate(identity.into()));
            }
        }
    }

    /// Identities with a certificate and when each expires (for the config dump).
    pub fn dump(&self) -> Vec<(String, Option<SystemTime>)> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    *s.expires.lock().unwrap_or_else(|e| e.into_inner()),
                )
            })
            .collect()
    }

    async fn rotate(self: Arc<Self>, identity: String, slot: Arc<Slot>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.fetch(&identity).await {
                Ok((key, _not_before, not_after)) => {
                    slot.cert.store(Some(Arc::new(key)));
                    *slot.expires.lock().unwrap_or_else(|e| e.into_inner()) = Some(not_after);
                    slot.ready.notify_waiters();
                    backoff = Duration::from_millis(200);
                    // Renew at half of the remaining lifetime, as Istio does; counted from
                    // now, not notBefore, because the CA back-dates for clock skew.
                    let remaining = not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    let wait = remaining / 2;
                    tracing::info!(%identity, renew_in_secs = wait.as_secs_f64(), "certificate ready");
                    tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
                }
                Err(e) => {
                    tracing::warn!(%identity, error = %e, "certificate request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                }
            }
        }
    }

    async fn fetch(&self, identity: &str) -> Result<(CertifiedKey, SystemTime, SystemTime), Error> {
        let fail = |reason: String| Error::CertificateRequest {
            identity: identity.into(),
            reason,
        };
        let id: Identity = identity
            .parse()
            .map_err(|e: spar_identity::Error| fail(e.to_string()))?;
        let (csr, key_pem) =
            spar_identity::ca::make_csr(Some(&id)).map_err(|e| fail(e.to_string()))?;
        let metadata = prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(identity.into())),
                },
            )]
            .into_iter()
            .collect(),
        };
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: self.ttl_secs,
            metadata: Some(metadata),
        });
        req.metadata_mut()
            .insert("authorization", self.control.bearer()?);
        req.set_timeout(crate::control::CALL_TIMEOUT);
        let mut client = IstioCertificateServiceClient::new(self.control.channel()?);
        let chain = client
            .create_certificate(req)
            .await
            .map_err(|s| fail(format!("{}: {}", s.code(), s.message())))?
            .into_inner()
            .cert_chain;
        let certs: Vec<CertificateDer<'static>> = chain
            .iter()
            .flat_map(|pem| {
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .filter_map(Result::ok)
                    .collect::<Vec<_>>()
            })
            .collect();
        // The last element is the root: peers have it; send leaf (and intermediates) only.
        let leaf_chain: Vec<CertificateDer<'static>> = certs
            .iter()
            .take(certs.len().saturating_sub(1).max(1))
            .cloned()
            .collect();
        let leaf = leaf_chain
            .first()
            .ok_or_else(|| fail("empty certificate chain".into()))?;
        let (not_before, not_after, sans) =
            leaf_facts(leaf).ok_or_else(|| fail("unreadable certificate".into()))?;
        if !sans.iter().any(|s| s == identity) {
            return Err(fail(format!("the CA returned a certificate for {sans:?}")));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|e| fail(e.to_string()))?;
        Ok((
            CertifiedKey::new(leaf_chain, signing),
            not_before,
            not_after,
        ))
    }
}

/// Validity and URI SANs of a certificate.
pub fn leaf_facts(der: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime, Vec<String>)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let t = |ts: i64| Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).ok()?));
    let nb = t(cert.validity().not_before.timestamp())?;
    let na = t(cert.validity().not_after.timestamp())?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| {
                    if let GeneralName::URI(u) = n {
                        Some(u.to_string())
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Some((nb, na, sans))
}
