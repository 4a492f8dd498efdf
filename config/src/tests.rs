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
        engine = "ftp://x"
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
