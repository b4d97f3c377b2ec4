//! mTLS for HBONE: TLS 1.3 only, ALPN `h2`, no SNI. The server picks the certificate of the
//! pod it serves; both sides check the mesh root and the peer's SPIFFE identity (the client
//! the exact identity it expects, the server that the client is in the trust domain).

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::Error;
use crate::certs::{Slot, leaf_facts};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn roots(root_pem: &str) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        store
            .add(c.map_err(|e| Error::Tls(e.to_string()))?)
            .map_err(|e| Error::Tls(e.to_string()))?;
    }
    Ok(Arc::new(store))
}

/// Serves the current certificate of one identity (rotations take effect at once).
#[derive(Debug)]
struct SlotResolver(Arc<Slot>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl ResolvesServerCert for SlotResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.cert.load_full()
    }
}

impl ResolvesClientCert for SlotResolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.cert.load_full()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The HBONE server side for one pod: its certificate; clients must present a mesh certificate.
pub fn server_config(
    slot: Arc<Slot>,
    roots: Arc<RootCertStore>,
    trust_domain: &str,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let base = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let verifier = Arc::new(TrustDomainVerifier {
        base,
        trust_domain: trust_domain.to_string(),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SlotResolver(slot)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The HBONE client side: present `slot`'s certificate, accept only `expected` as the server.
pub fn client_config(
    slot: Arc<Slot>,
    roots: Arc<RootCertStore>,
    expected: &str,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let verifier = Arc::new(IdentityVerifier {
        roots,
        expected: expected.to_string(),
        provider: provider(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SlotResolver(slot)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The SPIFFE identity in a peer's leaf certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let (_, _, sans) = leaf_facts(certs?.first()?)?;
    sans.into_iter().find(|s| s.starts_with("spiffe://"))
}

#[derive(Debug)]
struct TrustDomainVerifier {
    base: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.base.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .base
            .verify_client_cert(end_entity, intermediates, now)?;
        let prefix = format!("spiffe://{}/", self.trust_domain);
        match leaf_facts(end_entity) {
            Some((_, _, sans)) if sans.iter().any(|s| s.starts_with(&prefix)) => Ok(ok),
            _ => Err(rustls::Error::General(format!(
                "client identity is not in trust domain {}",
                self.trust_domain
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.base.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.base.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.base.supported_verify_schemes()
    }
}

/// Chain to the mesh root, then exactly the expected SPIFFE identity; the TLS server name is
/// ignored (HBONE sends none and certificates carry only URI SANs).
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match leaf_facts(end_entity) {
            Some((_, _, sans)) if sans.contains(&self.expected) => {
                Ok(ServerCertVerified::assertion())
            }
            Some((_, _, sans)) => Err(rustls::Error::General(format!(
                "server identity {sans:?} is not the expected {}",
                self.expected
            ))),
            None => Err(rustls::Error::General(
                "unreadable server certificate".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How specifically a host name pattern (`name`, `*.suffix`, or `*`) matches `name` (both
/// lower case): `None` when it does not; an exact name above any wildcard, a longer wildcard
/// above a shorter, `*` lowest.
pub fn host_specificity(pattern: &str, name: &str) -> Option<usize> {
    match pattern.strip_prefix('*') {
        Some("") => Some(0),
        Some(rest) => (name.ends_with(rest) && name.len() > rest.len()).then_some(rest.len()),
        None => (pattern == name).then_some(usize::MAX),
    }
}

/// The certificates of one HTTPS port, each for its host names (lower case; empty: any),
/// chosen by the client's SNI: the most specific match, the first among equals; a client
/// naming none of them, or no name at all, gets the first.
#[derive(Debug)]
pub struct BySni {
    certs: Vec<(Vec<String>, Arc<rustls::sign::CertifiedKey>)>,
}

impl BySni {
    pub fn new(certs: Vec<(Vec<String>, Arc<rustls::sign::CertifiedKey>)>) -> BySni {
        BySni { certs }
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let sni = sni.map(str::to_ascii_lowercase);
        let mut best: Option<(usize, &Arc<rustls::sign::CertifiedKey>)> = None;
        for (hosts, ck) in &self.certs {
            let score = if hosts.is_empty() {
                Some(1)
            } else {
                sni.as_deref().and_then(|s| {
                    hosts
                        .iter()
                        .filter_map(|h| host_specificity(h, s))
                        .max()
                        .map(|x| x.saturating_add(1))
                })
            };
            if let Some(score) = score
                && best.is_none_or(|(b, _)| score > b)
            {
                best = Some((score, ck));
            }
        }
        best.map(|(_, ck)| ck.clone())
            .or_else(|| self.certs.first().map(|(_, ck)| ck.clone()))
    }
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.pick(hello.server_name())
    }
}
