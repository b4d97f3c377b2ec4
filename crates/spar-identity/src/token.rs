//! Bearer tokens that prove who is calling the control plane, like Kubernetes service-account
//! tokens: ES256 JWTs signed by a key that only the control plane holds.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

use crate::{Error, Identity};

const ISSUER: &str = "spar-control";
const AUDIENCE: &str = "spar";

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Subject {
    /// A workload (sidecar or the pod itself): may get only its own identity.
    Pod {
        namespace: String,
        name: String,
        service_account: String,
    },
    /// A node proxy: may get identities of workloads the registry places on this node.
    Node { name: String },
}

impl Subject {
    /// The workload identity of a pod subject.
    pub fn identity(&self, trust_domain: &str) -> Option<Identity> {
        match self {
            Subject::Pod {
                namespace,
                service_account,
                ..
            } => Some(Identity::new(trust_domain, namespace, service_account)),
            Subject::Node { .. } => None,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Pod {
                namespace,
                name,
                service_account,
            } => write!(f, "pod {namespace}/{name} (sa {service_account})"),
            Subject::Node { name } => write!(f, "node {name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(flatten)]
    pub subject: Subject,
}

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer { .. }")
    }
}

impl TokenIssuer {
    /// Load the signing key from `dir/token-key.pem`, creating it when absent.
    pub fn load_or_create(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("token-key.pem");
        let pem = if path.exists() {
            fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?
        } else {
            fs::create_dir_all(dir).map_err(|source| Error::Write {
                path: dir.into(),
                source,
            })?;
            let pem = KeyPair::generate()?.serialize_pem();
            crate::ca::write_private_file(&path, &pem)?;
            pem
        };
        Self::from_pem(&pem)
    }

    pub fn from_pem(private_pem: &str) -> Result<Self, Error> {
        let bad = |e: &dyn std::fmt::Display| Error::BadCaMaterial {
            what: "token key".into(),
            reason: e.to_string(),
        };
        let key = KeyPair::from_pem(private_pem).map_err(|e| bad(&e))?;
        let encoding = EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(|e| bad(&e))?;
        let decoding =
            DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).map_err(|e| bad(&e))?;
        Ok(TokenIssuer { encoding, decoding })
    }

    /// A token for `subject` valid for `ttl` from now.
    pub fn mint(&self, subject: Subject, ttl: Duration) -> Result<String, Error> {
        let now = unix_now();
        self.mint_at(subject, now, now + ttl.as_secs())
    }

    /// A token with explicit issue and expiry times (seconds since the epoch).
    pub fn mint_at(&self, subject: Subject, iat: u64, exp: u64) -> Result<String, Error> {
        let sub = match &subject {
            Subject::Pod {
                namespace,
                service_account,
                ..
            } => format!("system:serviceaccount:{namespace}:{service_account}"),
            Subject::Node { name } => format!("spar:node:{name}"),
        };
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub,
            iat,
            exp,
            subject,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| Error::Token(e.to_string()))
    }

    /// Check signature, issuer, audience and expiry; return who the token speaks for.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map_err(|e| Error::Token(e.to_string()))?;
        Ok(data.claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Subject {
        Subject::Pod {
            namespace: "default".into(),
            name: "sleep-1".into(),
            service_account: "sleep".into(),
        }
    }

    #[test]
    fn mint_and_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = TokenIssuer::load_or_create(dir.path()).expect("issuer");
        let tok = t.mint(pod(), Duration::from_secs(60)).expect("mint");
        let c = t.verify(&tok).expect("valid");
        assert_eq!(c.subject, pod());
        assert_eq!(c.sub, "system:serviceaccount:default:sleep");
        // Same key after reload.
        let again = TokenIssuer::load_or_create(dir.path()).expect("issuer");
        assert!(again.verify(&tok).is_ok());
    }

    #[test]
    fn expired_forged_and_garbage_are_rejected() {
        let a = TokenIssuer::load_or_create(tempfile::tempdir().expect("d").path()).expect("a");
        let b = TokenIssuer::load_or_create(tempfile::tempdir().expect("d").path()).expect("b");
        let now = unix_now();
        let expired = a.mint_at(pod(), now - 3600, now - 600).expect("mint");
        assert!(a.verify(&expired).is_err());
        let forged = b
            .mint(
                Subject::Node {
                    name: "node-1".into(),
                },
                Duration::from_secs(60),
            )
            .expect("mint");
        assert!(a.verify(&forged).is_err());
        assert!(a.verify("not.a.token").is_err());
        assert!(a.verify("").is_err());
    }
}
