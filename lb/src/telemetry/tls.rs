//! The rustls client configuration for polling engines over HTTPS.
//!
//! Qlik's engine port (4747) wants mutual TLS with certificates issued by the site's root CA:
//! `ca_file` is that CA (PEM), `cert_file`/`key_file` the exported client certificate and key.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{TelemetryError, TlsClientFiles};

/// A client config built from `files`, and a fingerprint of the file contents so a reload
/// with renewed certificates restarts the pollers.
pub(super) fn client_config(
    files: &TlsClientFiles,
) -> Result<(Arc<ClientConfig>, u64), TelemetryError> {
    let mut fingerprint = DefaultHasher::new();
    files.insecure_skip_verify.hash(&mut fingerprint);

    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TelemetryError::Tls(e.to_string()))?;

    let builder = if files.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::AcceptAny(provider)))
    } else {
        let Some(ca_file) = &files.ca_file else {
            return Err(TelemetryError::Tls(
                "an https engine URL needs telemetry ca_file (the Qlik site's root CA, PEM) \
                 or insecure_skip_verify = true"
                    .into(),
            ));
        };
        read(ca_file)?.hash(&mut fingerprint);
        let mut roots = RootCertStore::empty();
        let mut added = 0usize;
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| pem_error(ca_file, e))? {
            let cert = cert.map_err(|e| pem_error(ca_file, e))?;
            roots
                .add(cert)
                .map_err(|e| TelemetryError::Tls(format!("{}: {e}", ca_file.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(TelemetryError::Tls(format!(
                "{}: no PEM certificate found",
                ca_file.display()
            )));
        }
        builder.with_root_certificates(roots)
    };

    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert_file), Some(key_file)) => {
            read(cert_file)?.hash(&mut fingerprint);
            read(key_file)?.hash(&mut fingerprint);
            let certs = CertificateDer::pem_file_iter(cert_file)
                .map_err(|e| pem_error(cert_file, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(cert_file, e))?;
            if certs.is_empty() {
                return Err(TelemetryError::Tls(format!(
                    "{}: no PEM certificate found",
                    cert_file.display()
                )));
            }
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| pem_error(key_file, e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TelemetryError::Tls(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TelemetryError::Tls(
                "telemetry cert_file and key_file go together".into(),
            ))
        }
    };
    Ok((Arc::new(config), fingerprint.finish()))
}

fn read(path: &Path) -> Result<Vec<u8>, TelemetryError> {
    std::fs::read(path).map_err(|e| TelemetryError::Tls(format!("{}: {e}", path.display())))
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> TelemetryError {
    TelemetryError::Tls(format!("{}: {e}", path.display()))
}
