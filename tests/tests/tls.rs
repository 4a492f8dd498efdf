//! TLS: the HTTPS listener (SNI, versions, ALPN, reloaded certificates), HTTPS nodes verified
//! against a CA file, the HTTP-to-HTTPS redirect, HSTS, and client certificates on the module
//! listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use lb_tests::{config_text, SimCluster, SimOptions};

/// A throwaway CA and certificates signed by it, written as PEM files in a temp folder.
struct Pki {
    dir: PathBuf,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("lb-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "lb test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let ca_der = ca.der().clone();
        Pki {
            dir,
            ca_der,
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes `<name>.pem` and `<name>.key` for the given DNS names (and 127.0.0.1).
    fn leaf(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let mut names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        names.push("127.0.0.1".into());
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn client(&self, client_cert: Option<(&Path, &Path)>) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut cfg = match client_cert {
            Some((c, k)) => {
                use rustls::pki_types::pem::PemObject;
                let chain: Vec<_> = CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
                let key = PrivateKeyDer::from_pem_file(k).unwrap();
                b.with_client_auth_cert(chain, key).unwrap()
            }
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(cfg))
    }
}

fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "/")
}

async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// The CN of the certificate the server presented.
fn presented_cn(s: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let der = &s.get_ref().1.peer_certificates().unwrap()[0];
    let text = String::from_utf8_lossy(der.as_ref()).to_string();
    ["default", "site-a", "site-b", "renewed"]
        .iter()
        .find(|n| text.contains(*n))
        .map(|n| n.to_string())
        .unwrap_or_default()
}

async fn get(s: &mut tokio_rustls::client::TlsStream<TcpStream>, host: &str, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_sni_alpn_hsts_websocket_and_certificate_reload() {
    let pki = Pki::new("listener");
    let (dc, dk) = pki.leaf("default", &["default.test"]);
    let (ac, ak) = pki.leaf("site-a", &["a.test"]);
    let (bc, bk) = pki.leaf("site-b", &["b.test", "x.b.test"]);
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let extra = format!(
        "[listener]\nhsts_max_age = \"365d\"\n[listener.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [[listener.tls.sni]]\nserver_names = [\"a.test\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [[listener.tls.sni]]\nserver_names = [\"*.b.test\", \"b.test\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        toml_path(&dc), toml_path(&dk), toml_path(&ac), toml_path(&ak), toml_path(&bc), toml_path(&bk)
    );
    let text = config_text(&sim.addrs(), &extra);
    let cfg = lb_config::Config::from_toml(&text, Path::new(".")).unwrap();
    let lb = lb::Server::start(cfg).await.unwrap();
    let addr = lb.proxy_addr();
    let client = pki.client(None);

    // SNI picks the certificate; ALPN is http/1.1.
    for (sni, want) in [
        ("a.test", "site-a"),
        ("b.test", "site-b"),
        ("x.b.test", "site-b"),
        ("default.test", "default"),
    ] {
        let s = tls_connect(&client, addr, sni).await.unwrap();
        assert_eq!(presented_cn(&s), want, "SNI {sni}");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
    // TLS 1.2 and 1.3 both work.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[v])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut s = tls_connect(&TlsConnector::from(Arc::new(cfg)), addr, "a.test")
            .await
            .unwrap();
        assert!(get(&mut s, "a.test", "/hub")
            .await
            .starts_with("HTTP/1.1 200"));
    }

    // Over HTTPS: X-Forwarded-Proto https, the route cookie is Secure, HSTS is sent.
    let mut s = tls_connect(&client, addr, "a.test").await.unwrap();
    let resp = get(&mut s, "a.test", "/_sim/headers").await;
    assert!(resp.contains("\"x-forwarded-proto\":[\"https\"]"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains("strict-transport-security: max-age=31536000"),
        "{resp}"
    );
    let route_line = resp
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: qlb_route="))
        .unwrap();
    assert!(route_line.contains("; Secure"), "{route_line}");
    let session = resp
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: X-Qlik-Session=")
                .or_else(|| l.strip_prefix("Set-Cookie: X-Qlik-Session="))
        })
        .map(|v| v.split(';').next().unwrap().to_string())
        .expect("session cookie");

    // A WebSocket over TLS, on the session's node.
    let tls = tls_connect(&client, addr, "a.test").await.unwrap();
    let mut req = "wss://a.test/app/doc?x=1".into_client_request().unwrap();
    req.headers_mut().insert(
        "cookie",
        format!("X-Qlik-Session={session}").parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    ws.close(None).await.unwrap();
    drop(ws);

    // A renewed certificate is taken on reload; a bad one is refused and the old one stays.
    let (rc, rk) = pki.leaf("renewed", &["a.test"]);
    std::fs::copy(&rc, &ac).unwrap();
    std::fs::copy(&rk, &ak).unwrap();
    let cfg = |t: &str| lb_config::Config::from_toml(t, Path::new(".")).unwrap();
    let text = text.replace("127.0.0.1:0", &addr.to_string());
    lb.reload(cfg(&text)).unwrap();
    let s = tls_connect(&client, addr, "a.test").await.unwrap();
    assert_eq!(presented_cn(&s), "renewed");
    std::fs::write(
        &ac,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = lb.reload(cfg(&text)).unwrap_err();
    assert!(err.contains("listener.tls"), "{err}");
    let s = tls_connect(&client, addr, "a.test").await.unwrap();
    assert_eq!(
        presented_cn(&s),
        "renewed",
        "the old certificate keeps serving"
    );
    // A connection that never sent a request does not hold up the shutdown.
    let t = std::time::Instant::now();
    lb.shutdown().await;
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_nodes_are_verified_against_the_ca_file() {
    // The "node" is itself a balancer with an HTTPS listener in front of a simulated node.
    let pki = Pki::new("upstream");
    let (nc, nk) = pki.leaf("default", &["localhost"]);
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let inner_text = config_text(
        &sim.addrs(),
        &format!(
            "[listener]\ntrusted_proxies = [\"127.0.0.1\"]\n[listener.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            toml_path(&nc),
            toml_path(&nk)
        ),
    );
    let inner =
        lb::Server::start(lb_config::Config::from_toml(&inner_text, Path::new(".")).unwrap())
            .await
            .unwrap();
    let outer_cfg = |extra: &str| {
        let t = format!(
            "[listener]\naddress = \"127.0.0.1:0\"\n{extra}\n[[nodes]]\nid = \"secure\"\naddress = \"{}\"\ntls = true\n",
            inner.proxy_addr()
        );
        lb_config::Config::from_toml(&t, Path::new(".")).unwrap()
    };
    let ok = lb::Server::start(outer_cfg(&format!(
        "[upstream]\nca_file = \"{}\"",
        toml_path(&pki.dir.join("ca.pem"))
    )))
    .await
    .unwrap();
    let mut u = lb_tests::User::new(ok.proxy_addr()).await;
    let r = u.get("/hub").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.node(), Some("node1"));

    // Another CA: the node's certificate is refused, the client gets 502.
    let other = Pki::new("other-ca");
    let bad = lb::Server::start(outer_cfg(&format!(
        "[upstream]\nca_file = \"{}\"",
        toml_path(&other.dir.join("ca.pem"))
    )))
    .await
    .unwrap();
    let mut u = lb_tests::User::new(bad.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, 502);
    // insecure_skip_verify accepts it (with a warning at start).
    let insecure = lb::Server::start(outer_cfg("[upstream]\ninsecure_skip_verify = true"))
        .await
        .unwrap();
    let mut u = lb_tests::User::new(insecure.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, 200);
    for s in [ok, bad, insecure, inner] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn redirect_listener_sends_users_to_https() {
    let pki = Pki::new("redirect");
    let (c, k) = pki.leaf("default", &["qlik.test"]);
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    // Find a free port for the redirect listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = config_text(
        &sim.addrs(),
        &format!(
            "[listener]\nredirect_address = \"127.0.0.1:{port}\"\n[listener.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            toml_path(&c),
            toml_path(&k)
        ),
    );
    let lb = lb::Server::start(lb_config::Config::from_toml(&text, Path::new(".")).unwrap())
        .await
        .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /hub/stream?x=1 HTTP/1.1\r\nHost: qlik.test:80\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 308"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("location: https://qlik.test/hub/stream?x=1"),
        "{text}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn module_listener_can_require_a_client_certificate() {
    let pki = Pki::new("mtls");
    let (c, k) = pki.leaf("default", &["lb.test"]);
    let (cc, ck) = pki.leaf("qps-client", &["qps.test"]);
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let text = config_text(
        &sim.addrs(),
        &format!(
            "[module]\naddress = \"127.0.0.1:0\"\n[module.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            toml_path(&c),
            toml_path(&k),
            toml_path(&pki.dir.join("ca.pem"))
        ),
    );
    let lb = lb::Server::start(lb_config::Config::from_toml(&text, Path::new(".")).unwrap())
        .await
        .unwrap();
    let m = lb.module_addr().unwrap();
    let body = r#"{"AppName":"a","QlikSenseEngines":["wss://e1:4747","wss://e2:4747"]}"#;
    let req = format!(
        "POST /loadbalancing/prioritize HTTP/1.1\r\nHost: lb.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Without a client certificate: no answer.
    let refused = async {
        let mut s = tls_connect(&pki.client(None), m, "lb.test").await?;
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    }
    .await;
    assert!(
        refused.is_err() || refused.as_ref().unwrap().is_empty(),
        "{refused:?}"
    );
    // With one signed by the configured CA: 200 with the engines.
    let mut s = tls_connect(&pki.client(Some((&cc, &ck))), m, "lb.test")
        .await
        .unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("wss://e1:4747") && text.contains("\"AppName\":\"a\""),
        "{text}"
    );
    lb.shutdown().await;
}

/// Reads `lb_health_checks_total{node, result}` from the admin API's metrics.
async fn health_checks(admin: SocketAddr, node: &str, result: &str) -> u64 {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (n, r) = (format!("node=\"{node}\""), format!("result=\"{result}\""));
    text.lines()
        .filter(|l| l.starts_with("lb_health_checks_total{") && l.contains(&n) && l.contains(&r))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_health_checks_verify_the_server_name() {
    // The node's certificate names only `qps-secure.test` (no IP address): a check that
    // verified it against the node's IP would fail and take the node down.
    let pki = Pki::new("health-sni");
    let mut params = CertificateParams::new(vec!["qps-secure.test".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "qps-secure");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    let (nc, nk) = (pki.dir.join("named.pem"), pki.dir.join("named.key"));
    std::fs::write(&nc, cert.pem()).unwrap();
    std::fs::write(&nk, key.serialize_pem()).unwrap();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let inner_text = config_text(
        &sim.addrs(),
        &format!(
            "[listener]\n[listener.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            toml_path(&nc),
            toml_path(&nk)
        ),
    );
    let inner =
        lb::Server::start(lb_config::Config::from_toml(&inner_text, Path::new(".")).unwrap())
            .await
            .unwrap();
    let outer_text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [health]\ninterval = \"100ms\"\nfall = 1\n[upstream]\nca_file = \"{}\"\n\
         [[nodes]]\nid = \"sni-checked\"\naddress = \"{}\"\ntls = true\nserver_name = \"qps-secure.test\"\n",
        toml_path(&pki.dir.join("ca.pem")),
        inner.proxy_addr()
    );
    let outer =
        lb::Server::start(lb_config::Config::from_toml(&outer_text, Path::new(".")).unwrap())
            .await
            .unwrap();
    let admin = outer.admin_addr().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(15), async {
        while health_checks(admin, "sni-checked", "ok").await < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("three passed health checks");
    assert_eq!(health_checks(admin, "sni-checked", "fail").await, 0);
    assert!(outer.test_handle().node("sni-checked").unwrap().healthy());
    let mut u = lb_tests::User::new(outer.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, 200);
    for s in [outer, inner] {
        s.shutdown().await;
    }
}
