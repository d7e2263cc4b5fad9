//! Signed JSON Web Tokens (RFC 7519) for the two places a client proves itself with a key:
//! a Microsoft client assertion (PS256, RFC 7523 section 2.2) and a Google service
//! account's grant (RS256, RFC 7523 section 2.1).
//!
//! Signing uses ring, which the TLS stack already brings; no JWT crate is needed for
//! building three base64url parts.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{RsaEncoding, RsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256};
use serde_json::Value;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How a JWT is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256 (what Microsoft asks for in client assertions).
    Ps256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Ps256 => "PS256",
        }
    }

    fn encoding(self) -> &'static dyn RsaEncoding {
        match self {
            Algorithm::Rs256 => &RSA_PKCS1_SHA256,
            Algorithm::Ps256 => &RSA_PSS_SHA256,
        }
    }
}

/// An RSA private key. Deliberately without `Debug` output of its content.
pub struct RsaKey(RsaKeyPair);

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaKey({} bits)", self.0.public().modulus_len() * 8)
    }
}

impl RsaKey {
    /// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, as in Google's JSON keys and
    /// what `openssl genpkey` writes) or PKCS#1 (`BEGIN RSA PRIVATE KEY`). The error never
    /// contains key material.
    pub fn from_pem(pem: &[u8]) -> Result<RsaKey, String> {
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
            tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"
                    .to_string()
            }
            _ => "not a readable PEM private key".to_string(),
        })?;
        let pair = match &key {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(_) => {
                return Err("an elliptic-curve key; an RSA key is needed".into());
            }
            _ => return Err("an unsupported kind of private key; an RSA key is needed".into()),
        }
        .map_err(|e| format!("not a usable RSA key ({e}); RSA keys of 2048 bits or more work"))?;
        Ok(RsaKey(pair))
    }

    /// The public key as PKCS#1 `RSAPublicKey` DER.
    pub fn public_key_der(&self) -> &[u8] {
        self.0.public().as_ref()
    }
}

/// A certificate and its key, for Microsoft's certificate credentials.
#[derive(Debug)]
pub struct Certificate {
    /// DER of the (first, leaf) certificate.
    pub der: Vec<u8>,
    pub key: RsaKey,
}

impl Certificate {
    /// Reads `tls.crt` (PEM, the first certificate is the one registered with the app; a
    /// chain may follow) and `tls.key`, and checks that they belong together.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Certificate, String> {
        let der = CertificateDer::pem_slice_iter(cert_pem)
            .next()
            .ok_or("tls.crt: no PEM certificate found (expected BEGIN CERTIFICATE)")?
            .map_err(|_| "tls.crt: not a readable PEM certificate")?
            .to_vec();
        let key = RsaKey::from_pem(key_pem).map_err(|e| format!("tls.key: {e}"))?;
        // The certificate's subjectPublicKey holds exactly the PKCS#1 public key, so a byte
        // search tells whether the two belong together without parsing X.509.
        let public = key.public_key_der();
        if !der.windows(public.len()).any(|window| window == public) {
            return Err("tls.key is not the private key of the certificate in tls.crt".into());
        }
        Ok(Certificate { der, key })
    }

    /// `x5t#S256`: base64url of the SHA-256 of the certificate's DER.
    pub fn thumbprint_sha256(&self) -> String {
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &self.der))
    }
}

/// `header.claims.signature`, each part base64url without padding. `alg` and `typ` are
/// set here; `header` adds further fields (`kid`, `x5t#S256`).
pub fn sign(
    algorithm: Algorithm,
    key: &RsaKey,
    header: serde_json::Map<String, Value>,
    claims: &Value,
) -> Result<String, String> {
    let mut header = header;
    header.insert("alg".into(), Value::from(algorithm.name()));
    header.insert("typ".into(), Value::from("JWT"));
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; key.0.public().modulus_len()];
    key.0
        .sign(
            algorithm.encoding(),
            &SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| "signing failed".to_string())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::signature::{
        UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    };

    /// A 2048-bit key made for these tests only (`openssl genpkey -algorithm RSA`).
    pub(crate) const TEST_KEY: &str = include_str!("testdata/test-key.pem");
    /// A self-signed certificate for [`TEST_KEY`].
    pub(crate) const TEST_CERT: &str = include_str!("testdata/test-cert.pem");
    /// The same key in PKCS#1 form.
    const TEST_KEY_PKCS1: &str = include_str!("testdata/test-key-pkcs1.pem");

    fn parts(jwt: &str) -> (Value, Value, Vec<u8>, String) {
        let mut it = jwt.split('.');
        let header = it.next().unwrap();
        let claims = it.next().unwrap();
        let signature = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
        assert!(it.next().is_none());
        (
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap(),
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap(),
            signature,
            format!("{header}.{claims}"),
        )
    }

    #[test]
    fn rs256_and_ps256_signatures_verify_with_the_public_key() {
        let key = RsaKey::from_pem(TEST_KEY.as_bytes()).unwrap();
        let claims = serde_json::json!({"iss": "me", "n": 1});
        for (algorithm, verifier) in [
            (Algorithm::Rs256, &RSA_PKCS1_2048_8192_SHA256),
            (Algorithm::Ps256, &RSA_PSS_2048_8192_SHA256),
        ] {
            let mut header = serde_json::Map::new();
            header.insert("kid".into(), "k1".into());
            let jwt = sign(algorithm, &key, header, &claims).unwrap();
            let (header, decoded, signature, input) = parts(&jwt);
            assert_eq!(header["alg"], algorithm.name());
            assert_eq!(header["typ"], "JWT");
            assert_eq!(header["kid"], "k1");
            assert_eq!(decoded, claims);
            UnparsedPublicKey::new(verifier, key.public_key_der())
                .verify(input.as_bytes(), &signature)
                .unwrap();
            let mut tampered = input.into_bytes();
            tampered[0] ^= 1;
            assert!(UnparsedPublicKey::new(verifier, key.public_key_der())
                .verify(&tampered, &signature)
                .is_err());
        }
    }

    #[test]
    fn pkcs1_and_pkcs8_keys_are_the_same_key() {
        let a = RsaKey::from_pem(TEST_KEY.as_bytes()).unwrap();
        let b = RsaKey::from_pem(TEST_KEY_PKCS1.as_bytes()).unwrap();
        assert_eq!(a.public_key_der(), b.public_key_der());
        assert_eq!(format!("{a:?}"), "RsaKey(2048 bits)");
    }

    #[test]
    fn bad_keys_are_described_without_their_content() {
        let e = RsaKey::from_pem(b"hello").unwrap_err();
        assert!(e.contains("no PEM private key"), "{e}");
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n";
        let e = RsaKey::from_pem(garbage.as_bytes()).unwrap_err();
        assert!(!e.contains("AAAA"), "{e}");
    }

    #[test]
    fn certificate_and_key_must_belong_together() {
        let cert = Certificate::from_pem(TEST_CERT.as_bytes(), TEST_KEY.as_bytes()).unwrap();
        assert_eq!(cert.thumbprint_sha256().len(), 43);
        let e = Certificate::from_pem(TEST_KEY.as_bytes(), TEST_KEY.as_bytes()).unwrap_err();
        assert!(e.contains("tls.crt"), "{e}");
        let other = include_str!("testdata/other-key.pem");
        let e = Certificate::from_pem(TEST_CERT.as_bytes(), other.as_bytes()).unwrap_err();
        assert!(e.contains("not the private key"), "{e}");
    }
}
