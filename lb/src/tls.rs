//! TLS with rustls: server configurations for the HTTPS listeners (certificates chosen by SNI,
//! TLS 1.2 and 1.3 only, ALPN `http/1.1`, optional client certificates) and the client
//! configuration for HTTPS nodes (a configured CA file, or the system roots).
//!
//! Certificates are read when a configuration is compiled, so a bad certificate makes the
//! whole configuration invalid and a reload keeps the running one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The crypto provider of every configuration built here (aws-lc-rs), chosen explicitly so
/// that another provider compiled into the process changes nothing.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

fn certified_key(cert: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = certs(cert)?;
    let key = key(key_path)?;
    let ck = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key_path.display()))?;
    Ok(Arc::new(ck))
}

/// Chooses a certificate by the SNI name: exact names, then `*.domain` wildcards, then the
/// default.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// The server configuration of an HTTPS listener.
pub fn server_config(t: &lb_config::Tls) -> Result<Arc<ServerConfig>, String> {
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: certified_key(&t.cert_file, &t.key_file)?,
    };
    for s in &t.sni {
        let k = certified_key(&s.cert_file, &s.key_file)?;
        for name in &s.server_names {
            match name.strip_prefix("*.") {
                Some(parent) => resolver.wildcard.insert(parent.to_string(), k.clone()),
                None => resolver.exact.insert(name.clone(), k.clone()),
            };
        }
    }
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let builder = match &t.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: invalid CA certificate: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The client configuration for HTTPS nodes.
pub fn client_config(
    ca_file: Option<&Path>,
    insecure: bool,
    system_roots: bool,
) -> Result<Arc<ClientConfig>, String> {
    client_config_with_cert(ca_file, insecure, system_roots, None)
}

/// Like [`client_config`], showing a client certificate (`(cert, key)` PEM files) when set:
/// the REST API listener's connections to the nodes' REST ports.
pub fn client_config_with_cert(
    ca_file: Option<&Path>,
    insecure: bool,
    system_roots: bool,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let with_auth =
        |b: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>| match client_cert
        {
            None => Ok(b.with_no_client_auth()),
            Some((cert, k)) => b
                .with_client_auth_cert(certs(cert)?, key(k)?)
                .map_err(|e| format!("{} and {}: {e}", cert.display(), k.display())),
        };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let mut cfg = if insecure {
        with_auth(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider()))),
        )?
    } else {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(ca) => {
                for c in certs(ca)? {
                    roots
                        .add(c)
                        .map_err(|e| format!("{}: invalid CA certificate: {e}", ca.display()))?;
                }
            }
            // The system roots are read only when an HTTPS node needs them.
            None if system_roots => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
            }
            None => {}
        }
        with_auth(builder.with_root_certificates(roots))?
    };
    // ALPN (http/1.1) is set by the connector.
    cfg.alpn_protocols.clear();
    Ok(Arc::new(cfg))
}

/// `upstream.insecure_skip_verify`: accepts any certificate (signatures are still checked).
#[derive(Debug)]
pub(crate) struct AcceptAny(pub(crate) Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS acceptor of an HTTPS listener.
#[derive(Clone)]
pub struct Acceptor(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor")
    }
}

/// Everything TLS in a configuration, loaded and checked.
#[derive(Clone)]
pub struct Loaded {
    pub listener: Option<Arc<ServerConfig>>,
    /// TLS of each named listener, in the order of `Config::listeners`.
    pub listeners: Vec<Option<Arc<ServerConfig>>>,
    /// A REST API listener's client configuration toward the nodes (its client certificate),
    /// in the order of `Config::listeners`; `None`: `upstream`.
    pub node_clients: Vec<Option<Arc<ClientConfig>>>,
    pub module: Option<Arc<ServerConfig>>,
    pub upstream: Arc<ClientConfig>,
}

/// Loads the certificates a configuration names; every failure carries its key path.
pub fn load(c: &lb_config::Config) -> Result<Loaded, lb_config::ConfigErrors> {
    let mut errors = Vec::new();
    let mut err = |path: &str, message: String| {
        errors.push(lb_config::ConfigError {
            path: path.to_string(),
            message,
        })
    };
    let listener = match &c.listener.tls {
        Some(t) => server_config(t).map_err(|e| err("listener.tls", e)).ok(),
        None => None,
    };
    let mut listeners = Vec::with_capacity(c.listeners.len());
    let mut node_clients = Vec::with_capacity(c.listeners.len());
    for l in &c.listeners {
        listeners.push(match &l.tls {
            Some(t) => server_config(t)
                .map_err(|e| err(&format!("listeners.{}.tls", l.name), e))
                .ok(),
            None => None,
        });
        node_clients.push(match (&l.node_cert_file, &l.node_key_file) {
            (Some(cert), Some(k)) => client_config_with_cert(
                c.upstream.ca_file.as_deref(),
                c.upstream.insecure_skip_verify,
                l.node_tls,
                Some((cert, k)),
            )
            .map_err(|e| err(&format!("listeners.{}.node_cert_file", l.name), e))
            .ok(),
            _ => None,
        });
    }
    let module = match c.module.as_ref().and_then(|module| module.tls.as_ref()) {
        Some(t) => server_config(t).map_err(|e| err("module.tls", e)).ok(),
        None => None,
    };
    let upstream = client_config(
        c.upstream.ca_file.as_deref(),
        c.upstream.insecure_skip_verify,
        c.nodes.iter().any(|n| n.tls) || c.listeners.iter().any(|l| l.node_tls),
    )
    .map_err(|e| err("upstream.ca_file", e))
    .ok();
    match (upstream, errors.is_empty()) {
        (Some(upstream), true) => Ok(Loaded {
            listener,
            listeners,
            node_clients,
            module,
            upstream,
        }),
        _ => Err(lb_config::ConfigErrors(errors)),
    }
}

/// `upstream.insecure_skip_verify` is loud at every start and reload.
pub fn warn_insecure(config: &lb_config::Config) {
    if config.upstream.insecure_skip_verify && config.nodes.iter().any(|n| n.tls) {
        tracing::warn!(
            "upstream.insecure_skip_verify = true: the certificates of HTTPS nodes are NOT verified; \
             anyone on the path to the nodes can impersonate them"
        );
    }
}
