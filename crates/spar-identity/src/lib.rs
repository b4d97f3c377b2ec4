//! Spar's identity layer: SPIFFE identities, the mesh CA that signs workload certificates,
//! and the bearer tokens that prove who is asking for one.
//!
//! Private keys never leave the process that made them: the CA signs CSRs, it never generates
//! workload keys, and nothing here logs key material.

pub mod ca;
pub mod error;
pub mod jwt_issuer;
pub mod spiffe;
pub mod token;

pub use ca::{CertificateAuthority, IssuedCert, make_csr, write_private_file};
pub use error::Error;
pub use jwt_issuer::JwtIssuer;
pub use spiffe::Identity;
pub use token::{Claims, Subject, TokenIssuer};

/// Install aws-lc-rs as the process-wide rustls provider (idempotent). Every binary and test
/// that uses rustls calls this first, so no dependency can pick another provider.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
