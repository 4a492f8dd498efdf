use super::*;

const MIN: &str = r#"
    [listener]
    address = "127.0.0.1:18000"
    [[nodes]]
    id = "qps1"
    address = "127.0.0.1:19100"
"#;

fn parse(s: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml(s, Path::new("."))
}

#[test]
fn minimal_file_gets_defaults() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.listener.address, "127.0.0.1:18000".parse().unwrap());
    assert_eq!(c.websocket.idle_timeout, Duration::from_secs(3600));
    assert_eq!(c.sticky.session_idle_timeout, Duration::from_secs(35 * 60));
    assert_eq!(c.sticky.route_cookie, "QLB_ROUTE");
    assert_eq!(c.sticky.session_cookies, vec!["X-Qlik-Session".to_string()]);
    assert_eq!(
        c.sticky.session_cookie_prefixes,
        vec!["X-Qlik-Session-".to_string()]
    );
    assert_eq!(c.balance.strategy, BalanceStrategy::RoundRobin);
    assert!(c.admin.is_none() && c.module.is_none());
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let e = parse(
        r#"
        [listener]
        address = "nope"
        [[nodes]]
        id = "a"
        address = "127.0.0.1:1"
        [[nodes]]
        id = "a"
        address = "127.0.0.1:2"
        [[nodes]]
        id = "c"
        address = "10.0.0.1:99999"
        "#,
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("listener.address: invalid socket address \"nope\""),
        "{text}"
    );
    assert!(
        text.contains("nodes[1].id: duplicate node id \"a\""),
        "{text}"
    );
    assert!(
        text.contains("nodes[2].address: invalid socket address \"10.0.0.1:99999\""),
        "{text}"
    );
    assert_eq!(e.0.len(), 3);
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let e = parse(&format!("{MIN}\n[sticky]\nroute_cokie = \"x\"\n")).unwrap_err();
    assert_eq!(e.0[0].path, "sticky.route_cokie");
    assert!(
        e.0[0].message.contains("unknown field `route_cokie`"),
        "{e}"
    );
    let e = parse(&MIN.replace("id = \"qps1\"", "id = \"qps1\"\nwieght = 3")).unwrap_err();
    assert_eq!(e.0[0].path, "nodes[0].wieght");
}

#[test]
fn bad_values_and_syntax() {
    let e = parse(&format!("{MIN}\n[websocket]\nidle_timeout = \"forever\"\n")).unwrap_err();
    assert_eq!(e.0[0].path, "websocket.idle_timeout");
    let e = parse("[listener\naddress = 1").unwrap_err();
    assert!(!e.0[0].message.is_empty());
    let e = parse(&format!("{MIN}\n[sticky]\nroute_key = \"short\"\n")).unwrap_err();
    assert_eq!(e.0[0].path, "sticky.route_key");
    let e = parse(&format!("{MIN}\n[balance]\nstrategy = \"random\"\n")).unwrap_err();
    assert_eq!(e.0[0].path, "balance.strategy");
    let e = parse(&format!("{MIN}\n[admin]\naddress = \"0.0.0.0:18001\"\n")).unwrap_err();
    assert_eq!(e.0[0].path, "admin.token");
    let e = parse("[listener]\naddress = \"127.0.0.1:1\"\n").unwrap_err();
    assert_eq!(e.0[0].path, "nodes");
}

#[test]
fn route_key_file_must_be_a_small_regular_file() {
    let e = parse(&format!(
        "{MIN}\n[sticky]\nroute_key_file = \"/dev/zero\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.0[0].path, "sticky.route_key_file");
    assert!(e.0[0].message.contains("not a regular file"), "{e}");
    let dir = std::env::temp_dir().join(format!("lb-config-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), "  0123456789abcdef0123  \n").unwrap();
    let c = Config::from_toml(
        &format!("{MIN}\n[sticky]\nroute_key_file = \"key\"\n"),
        &dir,
    )
    .unwrap();
    assert_eq!(
        c.sticky.route_key.as_deref(),
        Some(&b"0123456789abcdef0123"[..])
    );
    std::fs::write(dir.join("key"), vec![b'k'; 5000]).unwrap();
    let e = Config::from_toml(
        &format!("{MIN}\n[sticky]\nroute_key_file = \"key\"\n"),
        &dir,
    )
    .unwrap_err();
    assert!(e.0[0].message.contains("larger than"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn engine_same_host() {
    let c = parse(&MIN.replace("id = \"qps1\"", "id = \"qps1\"\nengine = \"same-host\"")).unwrap();
    assert_eq!(
        c.nodes[0].engine.as_deref(),
        Some("https://127.0.0.1:4747/engine/healthcheck")
    );
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            // Examples naming host files (production.toml: /etc/lb/route.key and the
            // certificates) are checked with those files in place by
            // tests/tests/deploy_lint.rs.
            if std::fs::read_to_string(&p).unwrap().contains("/etc/lb/") {
                continue;
            }
            Config::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn problems_come_in_section_order() {
    let e = parse(
        r#"
        [server]
        worker_threads = 5000
        [listener]
        address = "nope"
        max_connections = 0
        [upstream]
        connect_timeout = "0s"
        [sticky]
        max_sessions = 0
        [health]
        rise = 0
        [admin]
        address = "0.0.0.0:1"
        [module]
        address = "127.0.0.1:2"
        base_path = "x"
        [telemetry]
        timeout = "0s"
        headers = { "bad name" = "v" }
        [[nodes]]
        id = ""
        address = "127.0.0.1:1"
        engine = "http://a b/"
        "#,
    )
    .unwrap_err();
    let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "server.worker_threads",
            "listener.address",
            "listener.max_connections",
            "upstream.connect_timeout",
            "sticky.max_sessions",
            "health.rise",
            "admin.token",
            "module.base_path",
            "telemetry.timeout",
            "telemetry.headers.bad name",
            "nodes[0].id",
            "nodes[0].engine",
        ]
    );
}

fn with_engine(engine: &str) -> String {
    MIN.replace(
        "id = \"qps1\"",
        &format!("id = \"qps1\"\nengine = {engine:?}"),
    )
}

#[test]
fn engine_comes_out_as_a_uri() {
    let c = parse(&with_engine(
        "https://Qlik1.example:4747/engine/healthcheck",
    ))
    .unwrap();
    let uri = c.nodes[0].engine_uri.as_ref().unwrap();
    assert_eq!(uri.scheme_str(), Some("https"));
    assert_eq!(uri.host(), Some("Qlik1.example"));
    assert_eq!(uri.port_u16(), Some(4747));
    assert_eq!(uri.path(), "/engine/healthcheck");
    assert_eq!(
        c.nodes[0].engine.as_deref(),
        Some("https://Qlik1.example:4747/engine/healthcheck")
    );

    let c = parse(&with_engine("same-host")).unwrap();
    assert_eq!(
        c.nodes[0].engine_uri.as_ref().map(|u| u.to_string()),
        Some("https://127.0.0.1:4747/engine/healthcheck".to_string())
    );
    let c = parse(
        &MIN.replace("127.0.0.1:19100", "[::1]:19100")
            .replace("id = \"qps1\"", "id = \"qps1\"\nengine = \"same-host\""),
    )
    .unwrap();
    assert_eq!(
        c.nodes[0].engine_uri.as_ref().and_then(|u| u.host()),
        Some("[::1]")
    );

    let c = parse(MIN).unwrap();
    assert!(c.nodes[0].engine.is_none() && c.nodes[0].engine_uri.is_none());
}

#[test]
fn a_bad_engine_url_fails_with_its_key_path() {
    for url in ["http://a b/engine/healthcheck", "http://", "https://[::1/x"] {
        let e = parse(&with_engine(url)).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path, "nodes[0].engine", "{e}");
        assert!(
            e.0[0]
                .message
                .starts_with(&format!("invalid URL {url:?}: ")),
            "{e}"
        );
    }
    // Not http(s): one problem, not two.
    let e = parse(&with_engine("ftp://a b")).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(e.0[0].message.contains("is neither \"same-host\""), "{e}");
}

#[test]
fn telemetry_headers_come_out_typed() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.telemetry.typed_headers.len(), 1);
    let (name, value) = &c.telemetry.typed_headers[0];
    assert_eq!(name, "x-qlik-user");
    assert_eq!(value, "UserDirectory=INTERNAL; UserId=sa_api");

    let c = parse(&format!(
        "{MIN}\n[telemetry]\nheaders = {{ \"X-Qlik-User\" = \"UserDirectory=CORP; UserId=svc\", \
         \"X_Extra\" = \"a\\tb\", \"x-qlik-user\" = \"UserDirectory=LAST; UserId=svc\" }}\n"
    ))
    .unwrap();
    let names: Vec<&str> = c
        .telemetry
        .typed_headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["x-qlik-user", "x_extra", "x-qlik-user"]);
    assert_eq!(c.telemetry.headers.len(), 3);
    let map = c.telemetry.header_map();
    assert_eq!(map.len(), 2);
    assert_eq!(map["x-qlik-user"], "UserDirectory=LAST; UserId=svc");
    assert_eq!(map["x_extra"], "a\tb");
}

#[test]
fn a_bad_header_fails_with_its_key_path() {
    let bad = |headers: &str| {
        parse(&format!("{MIN}\n[telemetry]\nheaders = {{ {headers} }}\n")).unwrap_err()
    };
    let e = bad("\"X Bad\" = \"v\", \"X-Good\" = \"v\"");
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].path, "telemetry.headers.X Bad");
    assert_eq!(e.0[0].message, "invalid header name");
    let e = bad("\"\" = \"v\"");
    assert_eq!(e.0[0].path, "telemetry.headers.");
    assert_eq!(e.0[0].message, "invalid header name");
    for value in ["a\\u0001b", "a\\nb", "a\\u007fb"] {
        let e = bad(&format!("\"X-Value\" = \"{value}\""));
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path, "telemetry.headers.X-Value");
        assert_eq!(e.0[0].message, "invalid header value");
    }
}

#[test]
fn health_path_comes_out_as_a_request_target() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.health.path_and_query.as_ref().unwrap().as_str(), "/");
    let c = parse(&format!("{MIN}\n[health]\npath = \"/status?full=1\"\n")).unwrap();
    let p = c.health.path_and_query.unwrap();
    assert_eq!((p.path(), p.query()), ("/status", Some("full=1")));
    let c = parse(&format!("{MIN}\n[health]\npath = \"\"\n")).unwrap();
    assert!(c.health.path_and_query.is_none());
}

#[test]
fn node_authority_and_tls_name_come_out_typed() {
    use rustls_pki_types::ServerName;
    let c = parse(MIN).unwrap();
    assert_eq!(c.nodes[0].authority.as_str(), "127.0.0.1:19100");
    assert_eq!(
        c.nodes[0].tls_server_name,
        ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
    );
    let c = parse(&MIN.replace("127.0.0.1:19100", "[2001:db8::5]:443")).unwrap();
    assert_eq!(c.nodes[0].authority.as_str(), "[2001:db8::5]:443");
    let named = |name: &str| {
        parse(&MIN.replace(
            "id = \"qps1\"",
            &format!("id = \"qps1\"\ntls = true\nserver_name = {name:?}"),
        ))
        .unwrap()
        .nodes
        .remove(0)
        .tls_server_name
    };
    assert_eq!(
        named("qlik1.corp.example"),
        ServerName::try_from("qlik1.corp.example").unwrap()
    );
    // Not a name: the node's IP address, as before.
    assert_eq!(
        named("bad name!"),
        ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
    );
}

#[test]
fn admin_token_file() {
    let dir = std::env::temp_dir().join(format!("lb-config-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = |admin: &str| format!("{MIN}\n[admin]\naddress = \"0.0.0.0:18001\"\n{admin}");
    let load = |admin: &str| Config::from_toml(&cfg(admin), &dir);

    // Read, with the trailing newline trimmed; relative to the configuration's folder.
    std::fs::write(dir.join("admin.token"), "0123456789abcdef0123\n").unwrap();
    let c = load("token_file = \"admin.token\"\n").unwrap();
    assert_eq!(
        c.admin.unwrap().token.as_deref(),
        Some("0123456789abcdef0123")
    );
    std::fs::write(dir.join("admin.token"), "0123456789abcdef0123\r\n").unwrap();
    let c = load("token_file = \"admin.token\"\n").unwrap();
    assert_eq!(
        c.admin.unwrap().token.as_deref(),
        Some("0123456789abcdef0123")
    );

    // Not both.
    let e = load("token = \"0123456789abcdef0123\"\ntoken_file = \"admin.token\"\n").unwrap_err();
    assert_eq!(e.0[0].path, "admin.token");
    assert!(e.0[0].message.contains("not both"), "{e}");

    // Missing, not a regular file, empty, too large, more than the token: errors naming the key.
    for (content, want) in [
        (None, "cannot read"),
        (Some(&b"\n"[..]), "is empty"),
        (Some(&b""[..]), "is empty"),
        (Some(&[b'k'; 5000][..]), "larger than"),
        (Some(&b"0123456789abcdef\nsecond line\n"[..]), "one line"),
    ] {
        let _ = std::fs::remove_file(dir.join("admin.token"));
        if let Some(c) = content {
            std::fs::write(dir.join("admin.token"), c).unwrap();
        }
        let e = load("token_file = \"admin.token\"\n").unwrap_err();
        assert_eq!(e.0[0].path, "admin.token_file", "{e}");
        assert!(e.0[0].message.contains(want), "{want}: {e}");
    }
    let e = load("token_file = \"/dev/zero\"\n").unwrap_err();
    assert_eq!(e.0[0].path, "admin.token_file");
    assert!(e.0[0].message.contains("not a regular file"), "{e}");

    // A token too short for a non-loopback listener is reported on the key it came from.
    std::fs::write(dir.join("admin.token"), "short\n").unwrap();
    let e = load("token_file = \"admin.token\"\n").unwrap_err();
    assert_eq!(e.0[0].path, "admin.token_file");
    assert!(e.0[0].message.contains("at least 16"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

const SIGNIN: &str = r#"
    [listener]
    address = "127.0.0.1:18000"
    [listeners.auth]
    address = "127.0.0.1:18044"
    node_port = 4244
    [listeners.rest]
    address = "127.0.0.1:18043"
    role = "rest-api"
    node_port = 4243
    [[nodes]]
    id = "qps1"
    address = "10.0.0.1:443"
    [[nodes]]
    id = "qps2"
    address = "10.0.0.2:443"
    addresses = { auth = "10.0.0.2:14244" }
"#;

#[test]
fn named_listeners_give_each_node_an_address_per_listener() {
    let c = parse(SIGNIN).unwrap();
    let names: Vec<_> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["auth", "rest"]);
    assert_eq!(c.listener.name, "users");
    assert_eq!(c.listener_at(2).role, ListenerRole::RestApi);
    let addrs =
        |i: usize| -> Vec<String> { c.nodes[i].addresses.iter().map(|a| a.to_string()).collect() };
    assert_eq!(addrs(0), ["10.0.0.1:4244", "10.0.0.1:4243"]);
    assert_eq!(addrs(1), ["10.0.0.2:14244", "10.0.0.2:4243"]);
    assert_eq!(c.sticky.same_site, SameSite::Lax);
    assert_eq!(c.sticky.ticket_lifetime, Duration::from_secs(90));
}

#[test]
fn named_listener_problems_are_reported_with_their_keys() {
    let bad = SIGNIN
        .replace("node_port = 4243\n", "")
        .replace("[listeners.auth]", "[listeners.Auth]")
        .replace(
            "address = \"127.0.0.1:18043\"",
            "address = \"127.0.0.1:18000\"",
        )
        .replace(
            "addresses = { auth",
            "addresses = { nope = \"1.2.3.4:5\", Auth",
        );
    let e = parse(&bad).unwrap_err().to_string();
    for want in [
        "listeners.Auth: \"Auth\" is not a listener name",
        "listeners.rest.address: 127.0.0.1:18000 is already the address of another listener",
        "nodes[0].addresses.rest: no address for listener \"rest\"",
        "nodes[1].addresses.nope: there is no [listeners.nope]",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    let e = parse(&SIGNIN.replace(
        "role = \"rest-api\"",
        "role = \"rest-api\"\nallowed_hosts = [\"a\"]",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("listeners.rest.allowed_hosts: set in [listener]"),
        "{e}"
    );
    let e = parse(&MIN.replace("[[nodes]]", "node_port = 1\n[[nodes]]"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("listener.node_port"), "{e}");
}

#[test]
fn same_site_none_needs_https_on_every_users_listener() {
    let none = format!("{SIGNIN}\n[sticky]\nsame_site = \"none\"\n");
    let e = parse(&none).unwrap_err().to_string();
    assert!(
        e.contains("sticky.same_site") && e.contains("users, auth"),
        "{e}"
    );
    // A trusted front terminating TLS for both users' listeners is enough (the REST API
    // listener sets no route cookie).
    let fronted = none
        .replace(
            "address = \"127.0.0.1:18000\"",
            "address = \"127.0.0.1:18000\"\ntls_front = true",
        )
        .replace("node_port = 4244", "node_port = 4244\ntls_front = true");
    let c = parse(&fronted).unwrap();
    assert_eq!(c.sticky.same_site, SameSite::None);
    assert!(c.listener.clients_use_https());
    let e = parse(&format!("{MIN}\n[sticky]\ndomain = \"bad domain\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("sticky.domain"), "{e}");
    let c = parse(&format!("{MIN}\n[sticky]\ndomain = \".Example.com\"\n")).unwrap();
    assert_eq!(c.sticky.domain.as_deref(), Some("example.com"));
}

#[test]
fn header_lists_come_out_typed() {
    let c = parse(&MIN.replace(
        "address = \"127.0.0.1:18000\"",
        "address = \"127.0.0.1:18000\"\nstrip_headers = [\"X-Qlik-HeaderAuth\"]\ntrusted_headers = [\"X-Portal-User\"]",
    ))
    .unwrap();
    assert_eq!(c.listener.strip_headers[0].as_str(), "x-qlik-headerauth");
    assert_eq!(c.listener.trusted_headers[0].as_str(), "x-portal-user");
    let e = parse(&MIN.replace(
        "address = \"127.0.0.1:18000\"",
        "address = \"127.0.0.1:18000\"\nstrip_headers = [\"bad header\"]",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("listener.strip_headers[0]"), "{e}");
}
