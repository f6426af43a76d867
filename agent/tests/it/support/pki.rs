//! A throw-away PKI for the TLS tests: a CA, another CA, and leaf certificates for
//! localhost/127.0.0.1 (collector and agent) signed by the first.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate for localhost/127.0.0.1 signed by `ca`: (cert pem, key pem).
pub fn leaf(ca: &Ca, name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A leaf certificate for the names `dns` and addresses `ips` signed by `ca`: (cert pem, key pem).
pub fn leaf_for(ca: &Ca, name: &str, dns: &[&str], ips: &[IpAddr]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate signed by the other CA.
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
    pub ca_obj: Ca,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_obj = ca("podflow test ca");
    let other = ca("some other ca");
    let (server_cert, server_key) = leaf(&ca_obj, "collector");
    let (client_cert, client_key) = leaf(&ca_obj, "agent");
    let (other_client_cert, other_client_key) = leaf(&other, "stranger");
    Pki {
        ca: write(dir.path(), "ca.pem", &ca_obj.pem),
        other_ca: write(dir.path(), "other-ca.pem", &other.pem),
        server_cert: write(dir.path(), "server.pem", &server_cert),
        server_key: write(dir.path(), "server.key", &server_key),
        client_cert: write(dir.path(), "client.pem", &client_cert),
        client_key: write(dir.path(), "client.key", &client_key),
        other_client_cert: write(dir.path(), "other-client.pem", &other_client_cert),
        other_client_key: write(dir.path(), "other-client.key", &other_client_key),
        ca_obj,
        dir,
    }
}
