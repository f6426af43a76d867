//! The exporter's TLS files: read on every connection attempt, watched for changes.
use std::{path::PathBuf, time::SystemTime};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::ExportError;

/// TLS towards the collector: the CA that signed the collector's certificate and, for mutual
/// TLS, this agent's certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientConfig {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the collector's certificate must carry; default: the host of the address.
    pub domain: Option<String>,
}

/// The files' contents at one point in time.
#[derive(Debug)]
pub(super) struct LoadedTls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl LoadedTls {
    pub(super) fn client_config(&self) -> ClientTlsConfig {
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
pub(super) type TlsSnapshot = Vec<(PathBuf, Option<SystemTime>, Option<u64>)>;

impl TlsClientConfig {
    pub(super) fn load(&self) -> Result<LoadedTls, ExportError> {
        let read = |what, path: &PathBuf| {
            std::fs::read(path).map_err(|source| ExportError::ReadTlsFile {
                what,
                path: path.clone(),
                source,
            })
        };
        let ca = read("the CA certificate", &self.ca)?;
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                read("the client certificate", cert)?,
                read("the client key", key)?,
            )),
            (None, None) => None,
            _ => return Err(ExportError::TlsIncompleteIdentity),
        };
        Ok(LoadedTls {
            ca,
            identity,
            domain: self.domain.clone(),
        })
    }

    pub(super) fn snapshot(&self) -> TlsSnapshot {
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
