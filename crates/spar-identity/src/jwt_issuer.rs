//! A JWT issuer for RequestAuthentication: a signing key (ES256, RS256 or PS256), the JWKS that
//! publishes its public half, and signed tokens. `spar jwt` uses it, so Istio's JWT tasks run
//! without fetching Istio's demo keys from the internet; tests use it to mint tokens.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};

use crate::Error;

pub struct JwtIssuer {
    pub kid: String,
    pub alg: Algorithm,
    private_pem: String,
    jwk: serde_json::Value,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn bad(reason: impl std::fmt::Display) -> Error {
    Error::BadCaMaterial {
        what: "JWT signing key".into(),
        reason: reason.to_string(),
    }
}

impl JwtIssuer {
    /// A new key: `alg` is `ES256`, `RS256` or `PS256`.
    pub fn generate(alg: &str, kid: &str) -> Result<JwtIssuer, Error> {
        let key = match alg {
            "ES256" => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
            // PS256 signs with the same kind of RSA key as RS256; only the padding differs.
            "RS256" | "PS256" => KeyPair::generate_for(&PKCS_RSA_SHA256)?,
            other => {
                return Err(bad(format!(
                    "algorithm {other:?}: use ES256, RS256 or PS256"
                )));
            }
        };
        Self::from_key(&key, kid, Some(alg))
    }

    /// A key from its PKCS#8 PEM (what `private_pem` wrote); an RSA key signs RS256.
    pub fn from_pem(pem: &str, kid: &str) -> Result<JwtIssuer, Error> {
        Self::from_key(&KeyPair::from_pem(pem)?, kid, None)
    }

    /// A key from its PKCS#8 PEM for `alg`: the PEM alone cannot tell RS256 from PS256.
    pub fn from_pem_with_alg(pem: &str, kid: &str, alg: &str) -> Result<JwtIssuer, Error> {
        Self::from_key(&KeyPair::from_pem(pem)?, kid, Some(alg))
    }

    fn from_key(key: &KeyPair, kid: &str, want: Option<&str>) -> Result<JwtIssuer, Error> {
        let (alg, jwk) = if key.algorithm() == &PKCS_ECDSA_P256_SHA256 {
            if let Some(a) = want.filter(|a| *a != "ES256") {
                return Err(bad(format!("a P-256 key signs ES256, not {a}")));
            }
            let raw = key.public_key_raw();
            if raw.len() != 65 || raw[0] != 4 {
                return Err(bad("not an uncompressed P-256 point"));
            }
            (
                Algorithm::ES256,
                serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
                    "kid": kid, "alg": "ES256", "use": "sig"}),
            )
        } else if key.algorithm() == &PKCS_RSA_SHA256 {
            let (alg, name) = match want {
                None | Some("RS256") => (Algorithm::RS256, "RS256"),
                Some("PS256") => (Algorithm::PS256, "PS256"),
                Some(other) => {
                    return Err(bad(format!("an RSA key signs RS256 or PS256, not {other}")));
                }
            };
            use x509_parser::prelude::FromDer;
            use x509_parser::public_key::PublicKey;
            let der = rcgen::PublicKeyData::subject_public_key_info(key);
            let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).map_err(bad)?;
            let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
                return Err(bad("not an RSA public key"));
            };
            let trim = |b: &[u8]| {
                let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b64(&b[i..])
            };
            (
                alg,
                serde_json::json!({"kty": "RSA", "n": trim(rsa.modulus), "e": trim(rsa.exponent),
                    "kid": kid, "alg": name, "use": "sig"}),
            )
        } else {
            return Err(bad("use a P-256 (ES256) or RSA (RS256, PS256) key"));
        };
        Ok(JwtIssuer {
            kid: kid.to_string(),
            alg,
            private_pem: key.serialize_pem(),
            jwk,
        })
    }

    /// The private key as PKCS#8 PEM, to keep (never log it).
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }

    /// `{"keys": [the public key]}`.
    pub fn jwks(&self) -> String {
        serde_json::json!({ "keys": [self.jwk] }).to_string()
    }

    /// A token with these claims (add `iss`, `sub`, `exp` yourself).
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, Error> {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        let key = match self.alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(self.private_pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(self.private_pem.as_bytes()),
        }
        .map_err(bad)?;
        jsonwebtoken::encode(&h, claims, &key).map_err(|e| Error::Token(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_against_the_published_jwks() {
        for alg in ["ES256", "RS256", "PS256"] {
            let iss = JwtIssuer::generate(alg, "k1").expect("key");
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_secs()
                + 600;
            let token = iss
                .sign(&serde_json::json!({"iss": "me", "sub": "you", "exp": exp}))
                .expect("sign");
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&iss.jwks()).expect("jwks");
            let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).expect("key");
            let mut v = jsonwebtoken::Validation::new(iss.alg);
            v.validate_aud = false;
            let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(data.claims["sub"], "you");
            let want: Algorithm = alg.parse().expect("algorithm");
            assert_eq!(iss.alg, want);
            let header = jsonwebtoken::decode_header(&token).expect("header");
            assert_eq!(header.alg, want, "the header names the algorithm");
            assert_eq!(
                set.keys[0].common.key_algorithm,
                Some(want.into()),
                "{alg}: the JWK names it too"
            );
            let again = JwtIssuer::from_pem_with_alg(iss.private_pem(), "k1", alg).expect("reload");
            assert_eq!(again.jwks(), iss.jwks(), "{alg}: the same key from its PEM");
        }
    }

    #[test]
    fn algorithms_must_fit_the_key() {
        assert!(JwtIssuer::generate("HS256", "k1").is_err());
        let ec = JwtIssuer::generate("ES256", "k1").expect("key");
        assert!(JwtIssuer::from_pem_with_alg(ec.private_pem(), "k1", "PS256").is_err());
        let rsa = JwtIssuer::generate("PS256", "k1").expect("key");
        assert!(JwtIssuer::from_pem_with_alg(rsa.private_pem(), "k1", "ES256").is_err());
        // Without a hint an RSA key signs RS256, as before.
        let rs = JwtIssuer::from_pem(rsa.private_pem(), "k1").expect("key");
        assert_eq!(rs.alg, Algorithm::RS256);
    }
}
