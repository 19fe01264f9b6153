//! TLS toward clients (`--client-tls-cert`/`--client-tls-key`): a rustls server
//! configuration from PEM files, TLS 1.2 and 1.3, the aws-lc-rs provider as upstream.
//! A client's SSLRequest is answered `S` only when this is configured. With
//! `--client-ca-file`, clients may present a certificate chaining to those CAs (required
//! unless SCRAM is configured too); its subject's CN ([`common_name`]) is their identity.
//! The certificate and key are re-read on SIGHUP ([`CertStore::reload`]); a pair that does
//! not load keeps the previous one in service.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::Decode;

/// The commonName attribute (2.5.4.3).
const CN: &str = "2.5.4.3";

fn certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The certificate and key shown to clients, replaceable while the proxy runs.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = certs(cert, "--client-tls-cert")?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read --client-tls-key {}: {e}", key.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, der, &provider)
        .map(Arc::new)
        .map_err(|e| format!("client TLS certificate and key: {e}"))
}

impl CertStore {
    /// Loads the pair.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        Ok(Self {
            current: RwLock::new(certified(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Re-reads the files; on failure the previous pair stays in service.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = certified(&self.cert, &self.key)?;
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = fresh;
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

/// SIGHUP re-reads the client TLS certificate and key; a pair that does not load keeps the
/// previous one in service.
pub async fn reload_on_hangup(certs: Arc<CertStore>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        match certs.reload() {
            Ok(()) => tracing::info!("SIGHUP: client TLS certificate reloaded"),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP: kept the previous client TLS certificate")
            }
        }
    }
}

/// Builds the server configuration around `store`; `ca` asks clients for certificates
/// (required unless `optional`). The error says which file and why.
pub fn server_config(
    store: Arc<CertStore>,
    ca: Option<&Path>,
    optional: bool,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("client TLS: {e}"))?;
    let builder = match ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs(ca, "--client-ca-file")?);
            if added == 0 {
                return Err(format!("--client-ca-file {}: no usable CA", ca.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("--client-ca-file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(Arc::new(builder.with_cert_resolver(store)))
}

/// The CN of a certificate's subject (the last one, if several), as text.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let mut found = None;
    for rdn in &cert.tbs_certificate.subject.0 {
        for atv in rdn.0.iter().filter(|a| a.oid.to_string() == CN) {
            let v = &atv.value;
            found = v
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.to_string())
                .or_else(|_| {
                    v.decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.to_string())
                })
                .or_else(|_| v.decode_as::<Ia5StringRef<'_>>().map(|s| s.to_string()))
                .ok()
                .or(found);
        }
    }
    found
}
