//! TLS files shared by the exporter, `podflow tail`/`status` (client side) and the collector
//! (server side). Files are read when a connection is made, so rotated certificates are used
//! without a restart; [`TlsClientConfig::snapshot`] tells when they changed.
use std::{io, path::PathBuf, sync::Arc, time::SystemTime};

use thiserror::Error;
use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("failed to read {what} {}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a client certificate needs its key and a key its certificate")]
    IncompleteIdentity,
    #[error("{what} {} holds no PEM {kind}", path.display())]
    NoPem {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("invalid TLS configuration")]
    Config {
        #[source]
        source: rustls::Error,
    },
    #[error("invalid client CA")]
    ClientCa {
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        what,
        path: path.clone(),
        source,
    })
}

/// TLS towards a server (the collector): the CA that signed the server's certificate and, for
/// mutual TLS, this client's certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientConfig {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry; default: the host of the address.
    pub domain: Option<String>,
}

/// The files' contents at one point in time.
#[derive(Debug)]
pub struct LoadedTls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl LoadedTls {
    pub fn client_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

/// What a change of the files is detected by: (path, mtime, size) of each.
pub type TlsSnapshot = Vec<(PathBuf, Option<SystemTime>, Option<u64>)>;

impl TlsClientConfig {
    pub fn load(&self) -> Result<LoadedTls, TlsError> {
        let ca = read("the CA certificate", &self.ca)?;
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                read("the client certificate", cert)?,
                read("the client key", key)?,
            )),
            (None, None) => None,
            _ => return Err(TlsError::IncompleteIdentity),
        };
        Ok(LoadedTls {
            ca,
            identity,
            domain: self.domain.clone(),
        })
    }

    /// A rustls client configuration from the files (for clients other than tonic's, e.g. the
    /// ClickHouse HTTP client), offering `alpn` protocols.
    pub fn rustls_client(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let loaded = self.load()?;
        let certs = |what, path: &PathBuf, pem: &[u8]| {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| TlsError::NoPem {
                    what,
                    path: path.clone(),
                    kind: "certificate",
                })?;
            if certs.is_empty() {
                return Err(TlsError::NoPem {
                    what,
                    path: path.clone(),
                    kind: "certificate",
                });
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certs("the CA certificate", &self.ca, &loaded.ca)?);
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|source| TlsError::Config { source })?
                .with_root_certificates(roots);
        let mut config = match (&loaded.identity, &self.cert, &self.key) {
            (Some((cert, key)), Some(cert_path), Some(key_path)) => {
                let chain = certs("the client certificate", cert_path, cert)?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| TlsError::NoPem {
                    what: "the client key",
                    path: key_path.clone(),
                    kind: "private key",
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsError::Config { source })?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    pub fn snapshot(&self) -> TlsSnapshot {
        [Some(&self.ca), self.cert.as_ref(), self.key.as_ref()]
            .into_iter()
            .flatten()
            .map(|path| {
                let meta = std::fs::metadata(path).ok();
                (
                    path.clone(),
                    meta.as_ref().and_then(|m| m.modified().ok()),
                    meta.map(|m| m.len()),
                )
            })
            .collect()
    }
}

/// The collector's side: its certificate and key and, for mutual TLS, the CA its clients'
/// certificates must chain to (a client without one is refused). ALPN offers HTTP/2 only.
pub fn server_config(
    cert: &PathBuf,
    key: &PathBuf,
    client_ca: Option<&PathBuf>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let no_pem = |what, path: &PathBuf, kind| TlsError::NoPem {
        what,
        path: path.clone(),
        kind,
    };
    let certs = |what, path: &PathBuf| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&read(what, path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| no_pem(what, path, "certificate"))?;
        if certs.is_empty() {
            return Err(no_pem(what, path, "certificate"));
        }
        Ok(certs)
    };
    let chain = certs("the server certificate", cert)?;
    let key_der = PrivateKeyDer::from_pem_slice(&read("the server key", key)?)
        .map_err(|_| no_pem("the server key", key, "private key"))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config { source })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs("the client CA", ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa { source })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|source| TlsError::Config { source })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
