//! The mesh certificate authority: a root (self-signed and persisted, or supplied by the
//! operator) that signs workload CSRs with exactly the identity the caller is allowed.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::{Error, Identity};

/// Istio's cap on workload certificate lifetime.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
const ROOT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Back-date certificates a little so peers with a slightly slow clock accept them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A signed certificate: the chain as PEM strings, leaf first and root last (Istio's order).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub chain: Vec<String>,
    pub not_after: OffsetDateTime,
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    trust_domain: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

impl CertificateAuthority {
    /// Load the root from `dir` (`root-cert.pem`, `root-key.pem`), creating and persisting a
    /// new self-signed one when the directory has none, so that restarts keep trust.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, Error> {
        let cert_path = dir.join("root-cert.pem");
        let key_path = dir.join("root-key.pem");
        if cert_path.exists() && key_path.exists() {
            return Self::from_files(&cert_path, &key_path, trust_domain);
        }
        fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.into(),
            source,
        })?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params
            .distinguished_name
            .push(DnType::CommonName, "spar root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ROOT_TTL;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        write_private(&key_path, &key.serialize_pem())?;
        fs::write(&cert_path, cert.pem()).map_err(|source| Error::Write {
            path: cert_path.clone(),
            source,
        })?;
        Self::from_pem(&cert.pem(), &key.serialize_pem(), trust_domain)
    }

    /// Use an operator-supplied root (or intermediate) certificate and key.
    pub fn from_files(cert: &Path, key: &Path, trust_domain: &str) -> Result<Self, Error> {
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| Error::Read {
                path: PathBuf::from(p),
                source,
            })
        };
        Self::from_pem(&read(cert)?, &read(key)?, trust_domain)
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Self, Error> {
        let bad = |what: &str, e: rcgen::Error| Error::BadCaMaterial {
            what: what.into(),
            reason: e.to_string(),
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad("CA key", e))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| bad("CA certificate", e))?;
        Ok(CertificateAuthority {
            issuer,
            root_pem: cert_pem.trim().to_string() + "\n",
            trust_domain: trust_domain.into(),
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Sign `csr_pem` for `identity`. The CSR's own SANs may be empty or name exactly this
    /// identity; anything else is refused rather than rewritten, so a confused caller notices.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<IssuedCert, Error> {
        if identity.trust_domain != self.trust_domain {
            return Err(Error::CsrIdentityMismatch {
                requested: identity.to_string(),
                allowed: format!("identities in trust domain {}", self.trust_domain),
            });
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::InvalidCsr(e.to_string()))?;
        let wanted = identity.to_string();
        for san in &csr.params.subject_alt_names {
            let ok = matches!(san, SanType::URI(u) if u.as_str() == wanted);
            if !ok {
                return Err(Error::CsrIdentityMismatch {
                    requested: format!("{san:?}"),
                    allowed: wanted,
                });
            }
        }
        let params = &mut csr.params;
        params.subject_alt_names = vec![SanType::URI(wanted.as_str().try_into()?)];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        let ttl = ttl.min(MAX_CERT_TTL);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ttl;
        params.serial_number = Some(random_serial()?);
        let cert = csr.signed_by(&self.issuer)?;
        Ok(IssuedCert {
            chain: vec![cert.pem(), self.root_pem.clone()],
            not_after: now + ttl,
        })
    }

    /// A server certificate for the control plane itself (DNS and IP SANs), with a fresh key.
    /// Returns (chain PEM: leaf then root, key PEM).
    pub fn issue_server_cert(
        &self,
        dns: &[&str],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(String, String), Error> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params
            .distinguished_name
            .push(DnType::CommonName, "spar control plane");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ttl;
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.root_pem),
            key.serialize_pem(),
        ))
    }
}

fn random_serial() -> Result<SerialNumber, Error> {
    // A fresh key's public bytes are unpredictable; hash-free and dependency-free randomness.
    let k = KeyPair::generate()?;
    let raw = k.public_key_raw();
    let mut bytes = raw[raw.len().saturating_sub(16)..].to_vec();
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

/// Write a private key readable by its owner only.
/// Write a key owner-only: into a new file created 0600 beside `path`, then renamed over it,
/// so an existing file's looser mode never carries over and a reader never sees half a key.
fn write_private(path: &Path, pem: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let werr = |source| Error::Write {
        path: path.into(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(pem.as_bytes()).map_err(werr)?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        werr(e)
    })
}

/// Public helper for other crates: persist a private key with owner-only permissions.
pub fn write_private_file(path: &Path, pem: &str) -> Result<(), Error> {
    write_private(path, pem)
}

/// Make a P-256 key and a CSR for `identity`, as a workload proxy would. Returns (CSR PEM, key PEM).
pub fn make_csr(identity: Option<&Identity>) -> Result<(String, String), Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(id) = identity {
        params.subject_alt_names = vec![SanType::URI(id.to_string().as_str().try_into()?)];
    }
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn a_private_file_is_owner_only_even_over_a_readable_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        fs::write(&path, "old").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private_file(&path, "new").expect("write");
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).expect("read"), "new");
    }

    fn ca() -> (tempfile::TempDir, CertificateAuthority) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").expect("ca");
        (dir, ca)
    }

    fn der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        p.contents
    }

    #[test]
    fn signs_with_spiffe_san_and_ttl_and_chain_verifies() {
        let (_d, ca) = ca();
        let id = Identity::new("cluster.local", "default", "sleep");
        let (csr, _key) = make_csr(Some(&id)).expect("csr");
        let issued = ca
            .sign_csr(&csr, &id, Duration::from_secs(30))
            .expect("signed");
        assert_eq!(issued.chain.len(), 2);
        let leaf_der = der(&issued.chain[0]);
        let root_der = der(&issued.chain[1]);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf");
        let (_, root) = X509Certificate::from_der(&root_der).expect("root");
        leaf.verify_signature(Some(root.public_key()))
            .expect("leaf signed by root");
        let san = leaf.subject_alternative_name().expect("ext").expect("san");
        let uris: Vec<String> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            uris,
            vec!["spiffe://cluster.local/ns/default/sa/sleep".to_string()]
        );
        let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(life, 30 + 60);
        assert!(!leaf.is_ca());
    }

    #[test]
    fn csr_for_another_identity_is_refused() {
        let (_d, ca) = ca();
        let other = Identity::new("cluster.local", "default", "admin");
        let (csr, _) = make_csr(Some(&other)).expect("csr");
        let me = Identity::new("cluster.local", "default", "sleep");
        assert!(matches!(
            ca.sign_csr(&csr, &me, Duration::from_secs(60)),
            Err(Error::CsrIdentityMismatch { .. })
        ));
        let foreign = Identity::new("evil.org", "default", "sleep");
        let (csr, _) = make_csr(None).expect("csr");
        assert!(
            ca.sign_csr(&csr, &foreign, Duration::from_secs(60))
                .is_err()
        );
        assert!(matches!(
            ca.sign_csr("garbage", &me, Duration::from_secs(60)),
            Err(Error::InvalidCsr(_))
        ));
    }

    #[test]
    fn root_persists_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = CertificateAuthority::load_or_create(dir.path(), "cluster.local").expect("ca");
        let b = CertificateAuthority::load_or_create(dir.path(), "cluster.local").expect("ca");
        assert_eq!(a.root_pem(), b.root_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("root-key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "root key must be private");
    }
}
