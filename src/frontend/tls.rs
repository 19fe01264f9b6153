//! TLS toward clients (`--client-tls-cert`/`--client-tls-key`): a rustls server
//! configuration from PEM files, TLS 1.2 and 1.3, the aws-lc-rs provider as upstream.
//! A client's SSLRequest is answered `S` only when this is configured. With
//! `--client-ca-file`, clients may present a certificate chaining to those CAs (required
//! unless SCRAM is configured too); its subject's CN ([`common_name`]) is their identity.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
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

/// Builds the server configuration; `ca` asks clients for certificates (required unless
/// `optional`). The error says which file and why.
pub fn server_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    optional: bool,
) -> Result<Arc<ServerConfig>, String> {
    let chain = certs(cert, "--client-tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read --client-tls-key {}: {e}", key.display()))?;
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
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("client TLS certificate and key: {e}"))?;
    Ok(Arc::new(config))
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
