//! `spar jwt ...`: a local JWT issuer for RequestAuthentication. `keygen` makes a signing key
//! and its public JWKS, `token` signs tokens with chosen claims, `jwks` prints the JWKS again.
//! With it Istio's JWT tasks run without Istio's demo keys from the internet: put the JWKS in
//! a RequestAuthentication (`jwks: '...'`) and send the token as `Authorization: Bearer ...`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Map, Value};
use spar_identity::JwtIssuer;

const KEY: &str = "key.pem";
const META: &str = "key.json";
const JWKS: &str = "jwks.json";

#[derive(Subcommand)]
pub enum JwtCommand {
    /// Make a signing key: DIR/key.pem (mode 0600), DIR/key.json (kid and alg) and
    /// DIR/jwks.json (the public JWKS); prints the JWKS path.
    Keygen {
        /// Directory to write the key into (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "RS256", value_parser = ["ES256", "RS256", "PS256"])]
        alg: String,
        /// The key id, put in the JWKS and in every token's header.
        #[arg(long, default_value = "k1")]
        kid: String,
        /// Replace a key already in DIR (tokens it signed stop verifying).
        #[arg(long)]
        force: bool,
    },
    /// Print a signed token: iss, sub, aud, iat = now, exp = now + ttl, plus any claims given.
    Token {
        /// Directory `spar jwt keygen` wrote.
        #[arg(long)]
        key_dir: PathBuf,
        /// Issuer: a RequestAuthentication's `jwtRules[].issuer`.
        #[arg(long)]
        iss: String,
        /// Subject: the request principal is ISS/SUB.
        #[arg(long)]
        sub: String,
        /// Audience (repeatable; one is a string claim, several an array).
        #[arg(long)]
        aud: Vec<String>,
        /// A string claim, NAME=VALUE (repeatable; overrides the claims above).
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
        /// A JSON claim, NAME=JSON, e.g. groups='["group1","group2"]' (repeatable; applied
        /// after --claim).
        #[arg(long = "claim-json", value_name = "NAME=JSON")]
        claims_json: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Print the public JWKS of the key in DIR.
    Jwks {
        #[arg(long)]
        key_dir: PathBuf,
    },
}

pub fn run(cmd: JwtCommand) -> anyhow::Result<()> {
    match cmd {
        JwtCommand::Keygen {
            out,
            alg,
            kid,
            force,
        } => keygen(&out, &alg, &kid, force),
        JwtCommand::Token {
            key_dir,
            iss,
            sub,
            aud,
            claims,
            claims_json,
            ttl,
        } => {
            let issuer = load(&key_dir)?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs();
            let body = token_claims(&iss, &sub, &aud, &claims, &claims_json, now, ttl)?;
            println!("{}", issuer.sign(&body)?);
            Ok(())
        }
        JwtCommand::Jwks { key_dir } => {
            println!("{}", load(&key_dir)?.jwks());
            Ok(())
        }
    }
}

fn keygen(out: &Path, alg: &str, kid: &str, force: bool) -> anyhow::Result<()> {
    let key = out.join(KEY);
    anyhow::ensure!(
        force || !key.exists(),
        "{} already holds a key; pass --force to replace it, or choose another --out",
        key.display()
    );
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let issuer = JwtIssuer::generate(alg, kid)?;
    // A replaced file keeps its old mode: remove it so the new key is created 0600.
    let _ = std::fs::remove_file(&key);
    spar_identity::write_private_file(&key, issuer.private_pem())?;
    let meta = serde_json::json!({ "kid": kid, "alg": alg });
    write(&out.join(META), &format!("{meta}\n"))?;
    let jwks = out.join(JWKS);
    write(&jwks, &format!("{}\n", issuer.jwks()))?;
    println!("{}", jwks.display());
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The issuer in `dir`: key.pem signs, key.json says with which kid and algorithm.
fn load(dir: &Path) -> anyhow::Result<JwtIssuer> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {}; make a key with `spar jwt keygen --out {}`",
                p.display(),
                dir.display()
            )
        })
    };
    let pem = read(KEY)?;
    let meta_path = dir.join(META);
    let meta: Value = serde_json::from_str(&read(META)?)
        .with_context(|| format!("{} is not JSON", meta_path.display()))?;
    let field = |name: &str| {
        meta[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{} has no string {name:?}", meta_path.display()))
    };
    let (kid, alg) = (field("kid")?, field("alg")?);
    JwtIssuer::from_pem_with_alg(&pem, &kid, &alg)
        .with_context(|| format!("cannot use the key in {}", dir.display()))
}

fn split<'a>(flag: &str, arg: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    arg.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .with_context(|| format!("{flag} {arg:?}: expected NAME=VALUE"))
}

/// The claims of a token; pure, so the flags' meaning is tested without a clock or a key.
fn token_claims(
    iss: &str,
    sub: &str,
    aud: &[String],
    claims: &[String],
    claims_json: &[String],
    now: u64,
    ttl: u64,
) -> anyhow::Result<Value> {
    let mut c = Map::new();
    c.insert("iss".into(), iss.into());
    c.insert("sub".into(), sub.into());
    c.insert("iat".into(), now.into());
    c.insert("exp".into(), now.saturating_add(ttl).into());
    match aud {
        [] => {}
        [one] => {
            c.insert("aud".into(), one.as_str().into());
        }
        many => {
            c.insert("aud".into(), many.into());
        }
    }
    for arg in claims {
        let (k, v) = split("--claim", arg)?;
        c.insert(k.into(), v.into());
    }
    for arg in claims_json {
        let (k, v) = split("--claim-json", arg)?;
        let v: Value = serde_json::from_str(v)
            .with_context(|| format!("--claim-json {k}: {v:?} is not JSON"))?;
        c.insert(k.into(), v);
    }
    Ok(Value::Object(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn claims_from_flags() {
        let c = token_claims(
            "me",
            "you",
            &s(&["a"]),
            &s(&["groups=group1", "x=a=b"]),
            &s(&[r#"scope=["r","w"]"#, "n=7"]),
            100,
            60,
        )
        .expect("claims");
        assert_eq!(
            c,
            serde_json::json!({"iss": "me", "sub": "you", "iat": 100, "exp": 160, "aud": "a",
                "groups": "group1", "x": "a=b", "scope": ["r", "w"], "n": 7})
        );
        let c = token_claims("me", "you", &s(&["a", "b"]), &[], &[], 0, 1).expect("claims");
        assert_eq!(c["aud"], serde_json::json!(["a", "b"]));
        assert!(token_claims("me", "you", &[], &s(&["novalue"]), &[], 0, 1).is_err());
        assert!(token_claims("me", "you", &[], &s(&["=v"]), &[], 0, 1).is_err());
        assert!(token_claims("me", "you", &[], &[], &s(&["g=[oops"]), 0, 1).is_err());
    }

    #[test]
    fn keygen_then_sign_with_the_stored_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("keys");
        keygen(&out, "PS256", "k9", false).expect("keygen");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join(KEY))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            keygen(&out, "ES256", "k9", false).is_err(),
            "an existing key is kept without --force"
        );
        let issuer = load(&out).expect("load");
        assert_eq!(issuer.kid, "k9");
        let stored = std::fs::read_to_string(out.join(JWKS)).expect("jwks");
        assert_eq!(
            stored.trim(),
            issuer.jwks(),
            "the JWKS on disk is the key's"
        );
        assert!(stored.contains("\"PS256\""), "{stored}");
        let e = load(dir.path()).err().expect("no key there");
        assert!(format!("{e:#}").contains("spar jwt keygen"), "{e:#}");
    }
}
