//! The REST API listener over TLS as a portal reaches it: the exported Qlik server certificate
//! toward the portal and the portal's client certificate checked against the Qlik root CA. A
//! ticket made through it brings the browser to the node that made it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lb_config::Config;
use lb_sim::browser::{Browser, Identity};
use lb_sim::{Auth, SimCluster, SimOptions, SimUser};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A throwaway Qlik-like CA (`root.pem`), the server certificate and a client certificate.
struct QlikCerts {
    dir: PathBuf,
    ca: CertificateDer<'static>,
}

fn write_leaf(dir: &Path, name: &str, issuer: &Issuer<'static, KeyPair>) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}_key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

impl Drop for QlikCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl QlikCerts {
    /// `tag`: one folder per test (tests of a binary run at once).
    fn new(tag: &str) -> QlikCerts {
        let dir = std::env::temp_dir().join(format!("lb-rest-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "qlik test root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("root.pem"), ca.pem()).unwrap();
        let issuer = Issuer::new(params, key);
        write_leaf(&dir, "server", &issuer);
        write_leaf(&dir, "client", &issuer);
        QlikCerts {
            dir,
            ca: ca.der().clone(),
        }
    }

    fn connector(&self, with_client_cert: bool) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let cfg = if with_client_cert {
            let chain: Vec<_> = CertificateDer::pem_file_iter(self.dir.join("client.pem"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(self.dir.join("client_key.pem")).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        } else {
            b.with_no_client_auth()
        };
        TlsConnector::from(Arc::new(cfg))
    }
}

/// `POST /qps/ticket` over TLS; the raw answer, or the error that ended the exchange.
async fn post_ticket(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    user: &str,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1".to_string()).unwrap();
    let mut s = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let body = format!("{{\"UserDirectory\":\"PORTAL\",\"UserId\":\"{user}\"}}");
    let req = format!(
        "POST /qps/portal/ticket HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_with_a_qlik_client_certificate_gets_a_ticket_that_finds_its_node() {
    let certs = QlikCerts::new("portal");
    let sim = SimCluster::start(3, 0, SimOptions::with_auth(Auth::Windows))
        .await
        .unwrap();
    let d = |f: &str| certs.dir.join(f).display().to_string();
    let mut text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n\
         [listeners.rest]\naddress = \"127.0.0.1:0\"\nrole = \"rest-api\"\n\
         [listeners.rest.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        d("server.pem"),
        d("server_key.pem"),
        d("root.pem")
    );
    let rest = sim.rest_addrs();
    for (i, a) in sim.addrs().iter().enumerate() {
        text.push_str(&format!(
            "[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\naddresses = {{ rest = \"{}\" }}\n",
            i + 1,
            rest[i]
        ));
    }
    let lb = lb::Server::start(Config::from_toml(&text, Path::new(".")).unwrap())
        .await
        .unwrap();
    let rest_addr = lb.listener_addr("rest").unwrap();

    // Without a client certificate: no TLS session, no ticket.
    let refused = post_ticket(&certs.connector(false), rest_addr, "mallory").await;
    assert!(
        refused.as_ref().map_or(true, |r| !r.contains("Ticket")),
        "{refused:?}"
    );
    let issued: u64 = sim.nodes().iter().map(|n| n.stats().tickets_issued).sum();
    assert_eq!(issued, 0);

    // With the Qlik client certificate: tickets, each redeemed on the node that made it.
    let portal = certs.connector(true);
    for i in 0..6 {
        let user = format!("t{i}");
        let raw = post_ticket(&portal, rest_addr, &user).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 201"), "{raw}");
        let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| {
            // A chunked answer: the JSON is the middle line.
            let line = body
                .lines()
                .find(|l| l.starts_with('{'))
                .unwrap_or_default();
            serde_json::from_str(line).unwrap_or_else(|_| panic!("{e}: {body}"))
        });
        let ticket = v["Ticket"].as_str().unwrap();
        let mut b = Browser::new(Identity::None);
        let page = b
            .navigate(&format!(
                "http://{}/hub/?qlikTicket={ticket}",
                lb.proxy_addr()
            ))
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{:?}", b.trail);
        let u = SimUser::new("PORTAL", &user);
        assert_eq!(sim.sessions_of(&u).len(), 1);
        assert_eq!(Some(sim.sessions_of(&u)[0].0.as_str()), page.node());
    }
    let made: Vec<u64> = sim
        .nodes()
        .iter()
        .map(|n| n.stats().tickets_issued)
        .collect();
    assert!(made.iter().filter(|&&m| m > 0).count() >= 2, "{made:?}");
}

/// A node's REST port over HTTPS that requires a client certificate of the Qlik root CA (as a
/// QPS's 4243 does), in front of the simulator's plain one. Returns its address.
async fn qlik_rest_front(certs: &QlikCerts, to: std::net::SocketAddr) -> std::net::SocketAddr {
    let chain: Vec<_> = CertificateDer::pem_file_iter(certs.dir.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(certs.dir.join("server_key.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut node) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut node).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_listener_shows_the_qlik_client_certificate_to_https_nodes() {
    let certs = QlikCerts::new("nodes");
    let sim = SimCluster::start(2, 0, SimOptions::with_auth(Auth::Windows))
        .await
        .unwrap();
    let mut fronts = Vec::new();
    for a in sim.rest_addrs() {
        fronts.push(qlik_rest_front(&certs, a).await);
    }
    let d = |f: &str| certs.dir.join(f).display().to_string();
    let config = |node_cert: bool| {
        let mut text = format!(
            "[listener]\naddress = \"127.0.0.1:0\"\n\
             [listeners.rest]\naddress = \"127.0.0.1:0\"\nrole = \"rest-api\"\nnode_tls = true\n{}\
             [upstream]\nca_file = \"{}\"\n",
            if node_cert {
                format!(
                    "node_cert_file = \"{}\"\nnode_key_file = \"{}\"\n",
                    d("client.pem"),
                    d("client_key.pem")
                )
            } else {
                String::new()
            },
            d("root.pem")
        );
        for (i, a) in sim.addrs().iter().enumerate() {
            text.push_str(&format!(
                "[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\naddresses = {{ rest = \"{}\" }}\n",
                i + 1,
                fronts[i]
            ));
        }
        Config::from_toml(&text, Path::new(".")).unwrap()
    };
    let post = |rest: std::net::SocketAddr| async move {
        let mut c = lb_sim::browser::Conn::connect(rest).await.unwrap();
        c.send(
            http::Method::POST,
            "/qps/ticket",
            &[("content-type", "application/json")],
            "{\"UserDirectory\":\"PORTAL\",\"UserId\":\"n\"}",
        )
        .await
        .unwrap()
    };
    // With the client certificate the nodes' HTTPS REST ports answer.
    let lb = lb::Server::start(config(true)).await.unwrap();
    let r = post(lb.listener_addr("rest").unwrap()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.contains("Ticket"));
    lb.shutdown().await;
    // Without it they refuse the TLS session: 502, no ticket.
    let lb = lb::Server::start(config(false)).await.unwrap();
    let r = post(lb.listener_addr("rest").unwrap()).await;
    assert_eq!(r.status, 502, "{}", r.body);
    let issued: u64 = sim.nodes().iter().map(|n| n.stats().tickets_issued).sum();
    assert_eq!(issued, 1);
}
