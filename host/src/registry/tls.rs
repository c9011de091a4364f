//! TLS towards a registry as docker, podman and skopeo set it up: a CA file
//! (`--ca-cert`), or the registry's directory of certificates
//! (`--cert-dir`, else `certs.d/HOST[:PORT]` under `/etc/containers` and
//! `/etc/docker`): `*.crt` CAs to trust, and a `NAME.cert` / `NAME.key` pair
//! presented as the client certificate.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use super::ConnectOptions;

/// Where registries' certificate directories are looked for, in order.
pub const CERTS_D: [&str; 2] = ["/etc/containers/certs.d", "/etc/docker/certs.d"];

/// The TLS configuration for `registry` (`host[:port]`).
pub fn config(registry: &str, opts: &ConnectOptions) -> Result<TlsConfig> {
    let mut tls = TlsConfig::builder();
    let mut roots = Vec::new();
    if let Some(ca) = &opts.ca_cert {
        roots.extend(certificates(ca)?);
    }
    let dir = match &opts.cert_dir {
        Some(d) => Some(d.clone()),
        None => cert_dir(registry, &CERTS_D.map(PathBuf::from)),
    };
    if let Some(dir) = dir {
        let files = CertDir::read(&dir)?;
        for ca in &files.cas {
            roots.extend(certificates(ca)?);
        }
        if let Some((cert, key)) = &files.client {
            tls = tls.client_cert(Some(client_cert(cert, key)?));
        }
    }
    if !roots.is_empty() {
        tls = tls.root_certs(RootCerts::new_with_certs(&roots));
    }
    if opts.insecure {
        tls = tls.disable_verification(true);
    }
    Ok(tls.build())
}

/// `registry`'s directory under the first of `roots` that has one.
pub fn cert_dir(registry: &str, roots: &[PathBuf]) -> Option<PathBuf> {
    roots.iter().map(|r| r.join(registry)).find(|d| d.is_dir())
}

/// What a certificate directory holds.
#[derive(Debug, Default, PartialEq)]
pub struct CertDir {
    /// `*.crt`: CA certificates to trust.
    pub cas: Vec<PathBuf>,
    /// The first `NAME.cert` (by name) and its `NAME.key`.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl CertDir {
    /// Reads `dir`; a `NAME.cert` without `NAME.key` (or the reverse) is an
    /// error, as docker makes it.
    pub fn read(dir: &Path) -> Result<CertDir> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading certificate directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let ext = |p: &Path, e: &str| p.extension().is_some_and(|x| x == e);
        let mut out = CertDir::default();
        for p in &names {
            if ext(p, "crt") {
                out.cas.push(p.clone());
            } else if ext(p, "cert") {
                let key = p.with_extension("key");
                ensure!(
                    key.exists(),
                    "{}: no matching {}",
                    p.display(),
                    key.display()
                );
                out.client.get_or_insert((p.clone(), key));
            } else if ext(p, "key") {
                let cert = p.with_extension("cert");
                ensure!(
                    cert.exists(),
                    "{}: no matching {}",
                    p.display(),
                    cert.display()
                );
            }
        }
        Ok(out)
    }
}

/// The PEM certificates in `file`.
fn certificates(file: &Path) -> Result<Vec<Certificate<'static>>> {
    let pem =
        std::fs::read(file).with_context(|| format!("reading certificates {}", file.display()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c.to_owned()),
            _ => None,
        })
        .collect();
    ensure!(!certs.is_empty(), "{}: no PEM certificates", file.display());
    Ok(certs)
}

/// The client certificate chain in `cert` with the private key in `key`,
/// checked as rustls will use them (the TLS stack would otherwise fail on a
/// bad pair only once connecting, and not with an error).
fn client_cert(cert: &Path, key: &Path) -> Result<ClientCert> {
    let chain = certificates(cert)?;
    let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key_pem = PrivateKey::from_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?
        .to_owned();
    check_pair(&chain, &pem).with_context(|| {
        format!(
            "{} and {}: not a usable client certificate",
            cert.display(),
            key.display()
        )
    })?;
    Ok(ClientCert::new_with_certs(&chain, key_pem))
}

/// Whether rustls takes `chain` and the PEM key `key` as a client's
/// certificate (an X.509 v3 certificate whose key matches).
fn check_pair(chain: &[Certificate<'static>], key: &[u8]) -> Result<()> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_certs_d_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("registry.example:5000");
        std::fs::create_dir(&dir).unwrap();
        for f in ["ca.crt", "b.cert", "b.key", "a.cert", "a.key", "README"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let other = root.path().join("elsewhere");
        let found = cert_dir("registry.example:5000", &[other, root.path().to_path_buf()]);
        assert_eq!(found.as_deref(), Some(dir.as_path()));
        assert_eq!(cert_dir("registry.example", &[root.path().into()]), None);
        let files = CertDir::read(&dir).unwrap();
        assert_eq!(files.cas, vec![dir.join("ca.crt")]);
        assert_eq!(files.client, Some((dir.join("a.cert"), dir.join("a.key"))));
        std::fs::remove_file(dir.join("b.key")).unwrap();
        let err = CertDir::read(&dir).unwrap_err();
        assert!(err.to_string().contains("no matching"), "{err:#}");
    }
}
