//! Bad inputs tried on the CA: the CSR PEM in a certificate request is a caller's bytes,
//! and `CertificateAuthority::sign_csr` is what reads it. Whatever it is, the CA must not
//! panic, and whatever it signs must be a workload certificate for exactly the identity the
//! caller was allowed: that one URI SAN, not a CA, for the CSR's own key, chained to the
//! root, within the lifetime cap. A CSR that asks for anything else is refused.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use proptest::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use spar_identity::ca::MAX_CERT_TTL;
use spar_identity::{CertificateAuthority, Identity, make_csr};
use x509_parser::prelude::*;

const TD: &str = "cluster.local";

static CA: LazyLock<(tempfile::TempDir, CertificateAuthority)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::load_or_create(dir.path(), TD).expect("ca");
    (dir, ca)
});

fn ca() -> &'static CertificateAuthority {
    &CA.1
}

/// A workload's real CSR for `sleep` (made once: key generation is the slow part).
static REAL: LazyLock<(Identity, String)> = LazyLock::new(|| {
    let id = Identity::new(TD, "default", "sleep");
    let (csr, _key) = make_csr(Some(&id)).expect("csr");
    (id, csr)
});

fn der_of(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    p.contents
}

fn pem_of(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The public key a CSR carries.
fn csr_key(csr_pem: &str) -> Vec<u8> {
    let der = der_of(csr_pem);
    let (_, csr) = X509CertificationRequest::from_der(&der).expect("csr");
    csr.certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .to_vec()
}

/// Everything a signed certificate must be, for a CSR of the key `key` and identity `id`.
fn check_issued(
    issued: &spar_identity::IssuedCert,
    key: &[u8],
    id: &Identity,
    ttl: Duration,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(issued.chain.len(), 2);
    prop_assert_eq!(
        &issued.chain[1],
        ca().root_pem(),
        "the chain ends at the root"
    );
    let leaf_der = der_of(&issued.chain[0]);
    let root_der = der_of(&issued.chain[1]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf");
    let (_, root) = X509Certificate::from_der(&root_der).expect("root");
    prop_assert!(leaf.verify_signature(Some(root.public_key())).is_ok());
    prop_assert!(!leaf.is_ca(), "a workload certificate is never a CA");
    let san = leaf
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN");
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    prop_assert_eq!(names, vec![format!("URI({id})")], "exactly the identity");
    prop_assert_eq!(
        leaf.subject().iter_attributes().count(),
        0,
        "no subject from the CSR"
    );
    let eku = leaf
        .extended_key_usage()
        .expect("eku")
        .expect("an EKU extension");
    prop_assert!(eku.value.server_auth && eku.value.client_auth);
    prop_assert!(!eku.value.any && !eku.value.code_signing && eku.value.other.is_empty());
    prop_assert_eq!(
        leaf.public_key().subject_public_key.data.to_vec(),
        key,
        "signed for the CSR's own key"
    );
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    prop_assert_eq!(life as u64, ttl.min(MAX_CERT_TTL).as_secs() + 60);
    Ok(())
}

/// A SAN a caller might ask for: its own identity, another, or another kind of name.
fn san() -> impl Strategy<Value = SanType> {
    prop_oneof![
        Just(REAL.0.to_string()).prop_map(|u| SanType::URI(u.as_str().try_into().expect("uri"))),
        "spiffe://[a-z.]{1,12}/ns/[a-z]{1,6}/sa/[a-z]{1,6}"
            .prop_map(|u| SanType::URI(u.as_str().try_into().expect("uri"))),
        "[ -~]{0,24}".prop_map(|u| SanType::URI(u.as_str().try_into().expect("ascii"))),
        "[a-z.]{1,20}".prop_map(|d| SanType::DnsName(d.as_str().try_into().expect("dns"))),
        any::<[u8; 4]>().prop_map(|ip| SanType::IpAddress(IpAddr::from(ip))),
        "[a-z]{1,8}@[a-z.]{1,8}"
            .prop_map(|e| SanType::Rfc822Name(e.as_str().try_into().expect("email"))),
    ]
}

/// A CSR made with a real key, asking for any SANs, CA rights, key usages and subject, and
/// perhaps carrying an extension the CA does not know.
fn crafted_csr() -> impl Strategy<Value = (String, Vec<SanType>, bool)> {
    (
        prop::collection::vec(san(), 0..4),
        prop_oneof![
            Just(IsCa::NoCa),
            Just(IsCa::ExplicitNoCa),
            Just(IsCa::Ca(BasicConstraints::Unconstrained)),
            Just(IsCa::Ca(BasicConstraints::Constrained(0))),
        ],
        prop::collection::vec(
            prop::sample::select(vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ]),
            0..3,
        ),
        prop::collection::vec(
            prop::sample::select(vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::Any,
                ExtendedKeyUsagePurpose::CodeSigning,
            ]),
            0..3,
        ),
        prop::option::of("[a-zA-Z0-9 .]{1,20}"),
        any::<bool>(),
    )
        .prop_filter_map(
            "rcgen writes this CSR",
            |(sans, is_ca, kus, ekus, cn, custom)| {
                let key = KeyPair::generate().ok()?;
                let mut p = CertificateParams::default();
                p.subject_alt_names = sans.clone();
                p.is_ca = is_ca;
                p.key_usages = kus;
                p.extended_key_usages = ekus;
                p.distinguished_name = rcgen::DistinguishedName::new();
                if let Some(cn) = cn {
                    p.distinguished_name.push(DnType::CommonName, cn);
                }
                if custom {
                    // Name constraints, which the CA must not carry over unread.
                    p.custom_extensions = vec![CustomExtension::from_oid_content(
                        &[2, 5, 29, 30],
                        vec![0x30, 0x00],
                    )];
                }
                let pem = p.serialize_request(&key).ok()?.pem().ok()?;
                Some((pem, sans, custom))
            },
        )
}

fn ttl() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::from_secs(3600)),
        (0u64..=2 * MAX_CERT_TTL.as_secs()).prop_map(Duration::from_secs),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any text, and PEM armour around any bytes: refused, never a panic.
    #[test]
    fn arbitrary_text_is_refused(
        text in prop_oneof![
            ".{0,300}",
            prop::collection::vec(any::<u8>(), 0..400)
                .prop_map(|b| pem_of("CERTIFICATE REQUEST", &b)),
            prop::collection::vec(any::<u8>(), 0..400).prop_map(|b| pem_of("CERTIFICATE", &b)),
        ],
    ) {
        prop_assert!(ca().sign_csr(&text, &REAL.0, Duration::from_secs(60)).is_err());
    }

    /// The real CSR with its DER bytes poked, cut or extended, or its PEM text edited:
    /// refused, or signed for exactly the identity (the CSR's self-signature protects its
    /// key and names, so an edit that survives can only be one the DER ignores).
    #[test]
    fn mutated_real_csrs_are_refused_or_exact(
        pokes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop_oneof![3 => Just(0usize), 1 => 1usize..8],
        tail in prop::collection::vec(any::<u8>(), 0..4),
        text_edit in prop::option::of((any::<prop::sample::Index>(), "[A-Za-z0-9+/=\n -]{0,3}")),
        ttl in ttl(),
    ) {
        let (id, real) = &*REAL;
        let csr = match text_edit {
            Some((at, with)) => {
                let mut s = real.clone();
                let at = at.index(s.len());
                s.replace_range(at..(at + 1).min(s.len()), &with);
                s
            }
            None => {
                let mut der = der_of(real);
                for (at, b) in pokes {
                    let at = at.index(der.len());
                    der[at] = b;
                }
                der.truncate(der.len().saturating_sub(cut));
                der.extend(tail);
                pem_of("CERTIFICATE REQUEST", &der)
            }
        };
        if let Ok(issued) = ca().sign_csr(&csr, id, ttl) {
            // The key of the CSR as made: an edit that survives cannot have changed it.
            check_issued(&issued, &csr_key(real), id, ttl)?;
        }
    }

    /// CSRs asking for other names, CA rights, other usages, a subject, or carrying an
    /// unknown extension: refused unless every SAN is the caller's own identity; and what
    /// is signed is a workload certificate for that identity only.
    #[test]
    fn crafted_csrs_get_exactly_the_allowed_identity(
        (csr, sans, custom) in crafted_csr(),
        ttl in ttl(),
    ) {
        let id = &REAL.0;
        let own = sans
            .iter()
            .all(|s| matches!(s, SanType::URI(u) if u.as_str() == id.to_string()));
        match ca().sign_csr(&csr, id, ttl) {
            Ok(issued) => {
                prop_assert!(own, "signed a CSR asking for {:?}", sans);
                prop_assert!(!custom, "signed a CSR with an extension it cannot read");
                check_issued(&issued, &csr_key(&csr), id, ttl)?;
            }
            Err(e) => prop_assert!(!own || custom, "refused {:?}: {}", sans, e),
        }
    }

    /// Any identity asked for with a real CSR without SANs: signed only in the CA's trust
    /// domain, and then for exactly that identity.
    #[test]
    fn requested_identities_outside_the_trust_domain_are_refused(
        td in prop_oneof![Just(TD.to_string()), "[a-z.]{0,12}", ".{0,8}"],
        ns in prop_oneof!["[a-z0-9-]{1,10}", ".{0,10}"],
        sa in prop_oneof!["[a-z0-9-]{1,10}", ".{0,10}"],
    ) {
        static BARE: LazyLock<String> = LazyLock::new(|| make_csr(None).expect("csr").0);
        let id = Identity::new(&td, &ns, &sa);
        let ttl = Duration::from_secs(600);
        let result = ca().sign_csr(&BARE, &id, ttl);
        // An IA5 (ASCII) URI in the CA's own trust domain is signed; nothing else is.
        let signable = td == TD && id.to_string().is_ascii();
        prop_assert_eq!(result.is_ok(), signable, "{}: {:?}", id, result.as_ref().err());
        if let Ok(issued) = result {
            check_issued(&issued, &csr_key(&BARE), &id, ttl)?;
        }
    }
}
