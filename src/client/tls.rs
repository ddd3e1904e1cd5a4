//! The client side of TLS, as Felix connects to Typha: the server's chain is verified against
//! a CA file and the server is then identified by its certificate's CN or URI SAN (either
//! match admits), not by host name. The client presents its own certificate.
//!
//! [`ClientTls`] is the whole of it for any event loop: a shared `rustls::ClientConfig` and
//! the server name to open a `rustls::ClientConnection` with. [`BlockingClient`] uses it when
//! [`ClientOptions::tls`](super::ClientOptions::tls) is set; a mio client (the load-test
//! harness) can drive the `ClientConnection` itself.
//!
//! [`BlockingClient`]: super::BlockingClient

use crate::tls::{parse_certs, parse_key, parse_roots, read_pem_file, Identity, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the client's TLS material is and which server it accepts (Felix's `TyphaCAFile`,
/// `TyphaCertFile`, `TyphaKeyFile`, `TyphaCN`, `TyphaURISAN`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsOptions {
    /// CA bundle (PEM) the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// The client's certificate (PEM) and key; both or neither (a Typha server refuses a
    /// client without one, which tests rely on).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The server is accepted if its certificate's CN is this...
    pub server_cn: Option<String>,
    /// ...or one of its URI SANs is this. At least one of the two must be set.
    pub server_uri_san: Option<String>,
}

/// A loaded client TLS configuration; cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the files and builds the configuration.
    pub fn from_files(opts: &ClientTlsOptions) -> Result<ClientTls, TlsError> {
        let identity = Identity::new(opts.server_cn.clone(), opts.server_uri_san.clone());
        if !identity.is_set() {
            return Err(TlsError::NoIdentity);
        }
        let roots = parse_roots(&opts.ca_file, &read_pem_file("CA file", &opts.ca_file)?)?;
        let provider = crate::tls::provider();
        let verifier = Arc::new(TyphaServerVerifier {
            roots: Arc::new(roots),
            identity: identity.clone(),
            provider: provider.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&opts.cert_file, &opts.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let what = "client certificate file";
                let certs = parse_certs(what, cert_file, &read_pem_file(what, cert_file)?)?;
                let what = "client key file";
                let key = parse_key(what, key_file, &read_pem_file(what, key_file)?)?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    crate::tls::cert_key_error(e, cert_file, key_file, TlsError::ClientCertKey)
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Setup(
                    "a client certificate needs its key file, and a key its certificate".into(),
                ))
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: server_name_for(&identity),
        })
    }

    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// The name to open a connection with. Only SNI sees it; the server is identified by CN
    /// or URI SAN, never by this name.
    pub fn server_name(&self) -> ServerName<'static> {
        self.server_name.clone()
    }

    /// A new client connection, ready to be driven over a socket.
    pub fn connection(&self) -> Result<rustls::ClientConnection, rustls::Error> {
        rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

/// The expected CN when it is a valid DNS name (servers may pick a certificate by SNI), else a
/// fixed placeholder.
fn server_name_for(identity: &Identity) -> ServerName<'static> {
    identity
        .cn
        .as_deref()
        .and_then(|cn| ServerName::try_from(cn.to_owned()).ok())
        .filter(|n| matches!(n, ServerName::DnsName(_)))
        .unwrap_or_else(|| ServerName::DnsName("typha".try_into().expect("valid DNS name")))
}

/// Chain to the CA, then CN / URI SAN, as Felix checks Typha.
#[derive(Debug)]
struct TyphaServerVerifier {
    roots: Arc<RootCertStore>,
    identity: Identity,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for TyphaServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        self.identity.check(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
