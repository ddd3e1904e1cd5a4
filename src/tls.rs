//! TLS pieces shared by the server (`server::tls`) and the client library (`client::tls`):
//! reading PEM files, the crypto provider, and the peer identity check.
//!
//! Typha's TLS is mutual and checks identities its own way: each side verifies the peer's chain
//! against a CA file, then admits the peer if its certificate's subject Common Name equals the
//! expected CN or one of its URI SANs equals the expected URI SAN (either match admits). Host
//! names are not checked: Felix finds Typha by endpoint IP and checks the CN / URI SAN instead.
//! See `docs/tls.md`.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use thiserror::Error;

/// A certificate, key or CA file larger than this is refused rather than read into memory.
pub const MAX_PEM_FILE: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is larger than {MAX_PEM_FILE} bytes")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{what} {path}: bad PEM: {detail}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("CA file {path}: {detail}")]
    BadCa { path: PathBuf, detail: String },
    #[error("key {key} does not match certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// The key or the certificate is unusable.
    #[error("server certificate and key: {0}")]
    CertKey(rustls::Error),
    #[error("client certificate and key: {0}")]
    ClientCertKey(rustls::Error),
    #[error("TLS setup: {0}")]
    Setup(String),
    /// Typha's rule: with TLS on, the peer must be pinned by a CN, a URI SAN, or both.
    #[error("TLS needs an expected peer identity: set a CN, a URI SAN, or both")]
    NoIdentity,
}

static FIPS_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `TYPHA_FIPSMODEENABLED`: from now on, TLS configurations offer only FIPS-approved algorithms
/// (AES-GCM suites, NIST P-256/P-384 key exchange), as Typha's FIPS build does. The `ring`
/// module itself is not FIPS 140 validated; the operations guide says so.
pub fn enable_fips_mode() {
    FIPS_MODE.store(true, std::sync::atomic::Ordering::SeqCst);
}

pub fn fips_mode() -> bool {
    FIPS_MODE.load(std::sync::atomic::Ordering::SeqCst)
}

/// The `ring` provider (the one kube's rustls already uses), built once; restricted to the
/// FIPS-approved algorithms in FIPS mode.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static FIPS_PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    if fips_mode() {
        return FIPS_PROVIDER
            .get_or_init(|| Arc::new(fips_approved(rustls::crypto::ring::default_provider())))
            .clone();
    }
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Keeps the AES-GCM cipher suites and the NIST curves: ChaCha20-Poly1305 and X25519 are not
/// FIPS-approved.
fn fips_approved(mut p: CryptoProvider) -> CryptoProvider {
    use rustls::crypto::ring::{cipher_suite as cs, kx_group};
    let suites = [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    p.cipher_suites
        .retain(|s| suites.iter().any(|a| a.suite() == s.suite()));
    p.kx_groups = vec![kx_group::SECP256R1, kx_group::SECP384R1];
    p
}

/// Reads a whole PEM file, refusing one over [`MAX_PEM_FILE`].
pub fn read_pem_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    f.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Every certificate in a PEM file, in order; at least one.
pub fn parse_certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn parse_key(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what,
        path: path.to_owned(),
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no private key found".to_owned(),
            e => e.to_string(),
        },
    })
}

/// A trust store of every certificate in a CA file.
pub fn parse_roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs("CA file", path, pem)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The identity a peer must prove: its certificate's CN equals `cn`, or one of its URI SANs
/// equals `uri_san`. Empty strings count as unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub cn: Option<String>,
    pub uri_san: Option<String>,
}

/// Why a peer certificate was not admitted; says what it held and what was wanted, for the log.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("peer sent no certificate")]
    NoCertificate,
    #[error("peer certificate does not parse: {0}")]
    Unparseable(String),
    #[error(
        "peer certificate has {}, {}; wanted {}",
        describe_cn(cert_cn.as_deref()),
        describe_uris(cert_uris),
        describe_wanted(want_cn.as_deref(), want_uri.as_deref())
    )]
    Mismatch {
        cert_cn: Option<String>,
        cert_uris: Vec<String>,
        want_cn: Option<String>,
        want_uri: Option<String>,
    },
}

fn describe_cn(cn: Option<&str>) -> String {
    cn.map_or_else(|| "no CN".to_owned(), |c| format!("CN {c:?}"))
}

fn describe_uris(uris: &[String]) -> String {
    if uris.is_empty() {
        "no URI SAN".to_owned()
    } else {
        format!("URI SANs {uris:?}")
    }
}

fn describe_wanted(cn: Option<&str>, uri: Option<&str>) -> String {
    match (cn, uri) {
        (Some(c), Some(u)) => format!("CN {c:?} or URI SAN {u:?}"),
        (Some(c), None) => format!("CN {c:?}"),
        (None, Some(u)) => format!("URI SAN {u:?}"),
        (None, None) => "nothing (no identity configured)".to_owned(),
    }
}

/// A certificate/key error, with the key mismatch named plainly.
pub(crate) fn cert_key_error(
    e: rustls::Error,
    cert: &Path,
    key: &Path,
    other: fn(rustls::Error) -> TlsError,
) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            }
        }
        e => other(e),
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

impl Identity {
    pub fn new(cn: Option<String>, uri_san: Option<String>) -> Identity {
        Identity {
            cn: cn.filter(|s| !s.is_empty()),
            uri_san: uri_san.filter(|s| !s.is_empty()),
        }
    }

    /// Whether a CN or a URI SAN is set (Typha requires one with TLS on).
    pub fn is_set(&self) -> bool {
        non_empty(&self.cn).is_some() || non_empty(&self.uri_san).is_some()
    }

    /// Checks an end-entity certificate (already verified against the CA).
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), IdentityError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, parsed) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
        // As Go's `pkix.Name.CommonName`: the last CN attribute of the subject.
        let cert_cn = parsed
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .last();
        if let (Some(want), Some(have)) = (non_empty(&self.cn), cert_cn) {
            if want == have {
                return Ok(());
            }
        }
        let mut cert_uris = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    if non_empty(&self.uri_san) == Some(*uri) {
                        return Ok(());
                    }
                    cert_uris.push((*uri).to_owned());
                }
            }
        }
        Err(IdentityError::Mismatch {
            cert_cn: cert_cn.map(str::to_owned),
            cert_uris,
            want_cn: non_empty(&self.cn).map(str::to_owned),
            want_uri: non_empty(&self.uri_san).map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fips_mode_keeps_only_approved_algorithms() {
        let p = fips_approved(rustls::crypto::ring::default_provider());
        let names: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert!(!names.is_empty());
        assert!(names.iter().all(|n| n.contains("GCM")), "{names:?}");
        let groups: Vec<String> = p
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect();
        assert_eq!(groups, ["secp256r1", "secp384r1"], "{groups:?}");
        // Both TLS versions stay usable.
        let all = rustls::crypto::ring::default_provider();
        assert!(all.cipher_suites.len() > p.cipher_suites.len());
    }
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, uris: &[&str]) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI((*u).to_owned().try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn either_cn_or_uri_san_admits() {
        let both = Identity::new(Some("felix".into()), Some("spiffe://c/felix".into()));
        assert!(both.check(&cert(Some("felix"), &[])).is_ok());
        assert!(both
            .check(&cert(Some("x"), &["spiffe://c/a", "spiffe://c/felix"]))
            .is_ok());
        assert!(both.check(&cert(None, &["spiffe://c/felix"])).is_ok());
        let e = both
            .check(&cert(Some("x"), &["spiffe://c/a"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CN \"x\"") && e.contains("spiffe://c/a") && e.contains("\"felix\""),
            "{e}"
        );
        assert!(both.check(&cert(None, &[])).is_err());
    }

    #[test]
    fn an_unset_name_matches_nothing() {
        let cn_only = Identity::new(Some("felix".into()), Some(String::new()));
        assert!(cn_only.is_set());
        assert_eq!(cn_only.uri_san, None);
        assert!(cn_only.check(&cert(Some("other"), &[""])).is_err());
        let uri_only = Identity::new(None, Some("spiffe://c/felix".into()));
        assert!(uri_only.check(&cert(Some("felix"), &[])).is_err());
        assert!(!Identity::new(Some(String::new()), None).is_set());
    }

    #[test]
    fn garbage_is_unparseable_not_a_panic() {
        let id = Identity::new(Some("felix".into()), None);
        let e = id.check(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]));
        assert!(matches!(e, Err(IdentityError::Unparseable(_))), "{e:?}");
    }
}
