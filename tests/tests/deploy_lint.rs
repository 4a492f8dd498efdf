//! Lints of the deployment files under `deploy/`.
//!
//! - `deploy/systemd/lb.service` passes `systemd-analyze verify` (with the `lb` binary path
//!   pointed at an executable that exists here) and keeps its hardening
//!   (`systemd-analyze security --offline` exposure at most 2.0);
//! - `deploy/systemd/lb.sysusers.conf` and `lb.tmpfiles.conf` apply cleanly to a scratch root;
//! - `deploy/aws/lb.yaml` passes `cfn-lint` with no error, warning or informational finding,
//!   its user data is valid bash that fits EC2's 16 KB limit, and the unit it writes has the
//!   same directives as `deploy/systemd/lb.service`.
//!
//! Tools needed (Debian/Ubuntu): `apt-get install -y systemd procps` and `pip install cfn-lint`.
//! A missing tool fails the test with that hint; nothing is skipped silently.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const LB_BIN: &str = "/usr/bin/lb";
const UNIT: &str = "deploy/systemd/lb.service";
const SYSUSERS: &str = "deploy/systemd/lb.sysusers.conf";
const TMPFILES: &str = "deploy/systemd/lb.tmpfiles.conf";
const TEMPLATE: &str = "deploy/aws/lb.yaml";
/// EC2 refuses user data above 16 KB (before base64).
const USER_DATA_LIMIT: usize = 16 * 1024;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-deploy-lint-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a tool, failing the test with an install hint when it is not on PATH.
fn run(cmd: &mut Command, install_hint: &str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` not found on PATH; install it with: {install_hint}")
        }
        Err(e) => panic!("run `{program}`: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn first_existing(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| Path::new(p).is_file())
        .map(|p| (*p).to_string())
}

/// The directive lines of a unit: no comments, no blank lines, trimmed.
fn directives(unit: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(str::to_string)
        .collect()
}

/// The unit with every command that runs the `lb` binary pointed at an executable that
/// exists on this machine (`systemd-analyze verify` checks that each Exec*= program exists).
fn unit_for_verify(unit: &str) -> String {
    let stand_in = first_existing(&["/bin/true", "/usr/bin/true"]).expect("no `true` binary");
    let kill_exists = Path::new("/bin/kill").is_file();
    let mut out = String::new();
    for line in unit.lines() {
        let rewritten = match line.split_once('=') {
            Some((key, value)) if key.starts_with("Exec") => {
                if let Some(rest) = value.strip_prefix(LB_BIN) {
                    format!("{key}={stand_in}{rest}")
                } else if !kill_exists && value.starts_with("/bin/kill ") {
                    // procps is missing here; production hosts have /bin/kill.
                    format!("{key}={stand_in}{}", &value["/bin/kill".len()..])
                } else {
                    line.to_string()
                }
            }
            _ => line.to_string(),
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
}

#[test]
fn unit_has_the_required_directives() {
    let unit = directives(&read(UNIT));
    let required = [
        "Type=notify",
        "ExecStartPre=/usr/bin/lb check --config /etc/lb/lb.toml",
        "ExecStart=/usr/bin/lb run --config /etc/lb/lb.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "LimitNOFILE=1048576",
        "User=lb",
        "Group=lb",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ReadOnlyPaths=/etc/lb",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "WantedBy=multi-user.target",
    ];
    for directive in required {
        assert!(
            unit.iter().any(|l| l == directive),
            "{UNIT} lacks `{directive}`"
        );
    }
    // The stop timeout must leave lb's drain room to finish (default drain deadline 30 s).
    let stop = unit
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec= is set");
    let stop: u64 = stop.parse().expect("TimeoutStopSec in plain seconds");
    assert!(
        stop > 30,
        "TimeoutStopSec={stop} is not above the drain deadline"
    );
}

#[test]
fn systemd_analyze_verify_passes() {
    let unit = read(UNIT);
    let rewritten = unit_for_verify(&unit);
    assert!(
        directives(&rewritten).iter().all(|l| !l.contains(LB_BIN)),
        "every {LB_BIN} command was rewritten"
    );
    let dir = TempDir::new("verify");
    let path = dir.path().join("lb.service");
    fs::write(&path, rewritten).expect("write unit copy");

    let out = run(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .env("SYSTEMD_LOG_COLOR", "0")
            .env("SYSTEMD_PAGER", ""),
        "apt-get install -y systemd procps",
    );
    let all = text(&out);
    let about_unit: Vec<&str> = all.lines().filter(|l| l.contains("lb.service")).collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {UNIT} ({}):\n{all}",
        out.status
    );
}

#[test]
fn systemd_analyze_security_exposure_is_low() {
    let dir = TempDir::new("security");
    let path = dir.path().join("lb.service");
    fs::write(&path, unit_for_verify(&read(UNIT))).expect("write unit copy");
    // Exposure is reported from 0.0 to 10.0; the threshold is in tenths.
    let out = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
            .arg(&path)
            .env("SYSTEMD_LOG_COLOR", "0"),
        "apt-get install -y systemd",
    );
    assert!(
        out.status.success(),
        "exposure of {UNIT} above 2.0 ({}):\n{}",
        out.status,
        text(&out)
    );
}

#[test]
fn sysusers_and_tmpfiles_apply_to_a_scratch_root() {
    let root = TempDir::new("root");
    let etc = root.path().join("etc");
    fs::create_dir_all(&etc).expect("mkdir etc");
    // Minimal account databases so that only our entries are created.
    fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(etc.join("group"), "root:x:0:\n").unwrap();
    fs::write(etc.join("shadow"), "root:*:1::::::\n").unwrap();
    fs::write(etc.join("gshadow"), "root:*::\n").unwrap();

    let sysusers = repo_root().join(SYSUSERS);
    let out = run(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.path().display()))
            .arg("--replace=/usr/lib/sysusers.d/lb.conf")
            .arg(&sysusers),
        "apt-get install -y systemd",
    );
    assert!(out.status.success(), "systemd-sysusers: {}", text(&out));
    let passwd = fs::read_to_string(etc.join("passwd")).unwrap();
    let group = fs::read_to_string(etc.join("group")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("lb:"))
        .unwrap_or_else(|| panic!("no lb user in:\n{passwd}"));
    assert!(
        user.ends_with(":/usr/sbin/nologin"),
        "lb has no login shell: {user}"
    );
    assert!(group.lines().any(|l| l.starts_with("lb:")), "no lb group");

    // A secret with a too-open mode, to see tmpfiles tighten it.
    fs::create_dir_all(etc.join("lb/tls")).unwrap();
    fs::write(etc.join("lb/route.key"), "k").unwrap();
    fs::write(etc.join("lb/tls/key.pem"), "k").unwrap();

    let tmpfiles = repo_root().join(TMPFILES);
    let out = run(
        Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", root.path().display()))
            .arg("--create")
            .arg(&tmpfiles),
        "apt-get install -y systemd",
    );
    let all = text(&out);
    assert!(
        out.status.success() && all.trim().is_empty(),
        "systemd-tmpfiles --create ({}):\n{all}",
        out.status
    );
    // Modes and group ownership, read back through `stat` to stay within std on any Unix.
    let out = run(
        Command::new("stat")
            .args(["-c", "%n %a %G"])
            .arg(etc.join("lb"))
            .arg(etc.join("lb/tls"))
            .arg(etc.join("lb/qlik"))
            .arg(etc.join("lb/route.key"))
            .arg(etc.join("lb/tls/key.pem")),
        "apt-get install -y coreutils",
    );
    let stat = String::from_utf8_lossy(&out.stdout).into_owned();
    let modes: Vec<(String, String)> = stat
        .lines()
        .map(|l| {
            let mut parts = l.rsplitn(3, ' ');
            let grp = parts.next().unwrap_or_default().to_string();
            let mode = parts.next().unwrap_or_default().to_string();
            (mode, grp)
        })
        .collect();
    let expected = ["750", "750", "750", "640", "640"];
    assert_eq!(modes.len(), expected.len(), "stat output:\n{stat}");
    for ((mode, _), want) in modes.iter().zip(expected) {
        assert_eq!(mode, want, "stat output:\n{stat}");
    }
    // The group name resolves through the host's database, not the scratch root's: check the
    // id instead.
    let gid = group
        .lines()
        .find(|l| l.starts_with("lb:"))
        .and_then(|l| l.split(':').nth(2))
        .unwrap()
        .to_string();
    let out = run(
        Command::new("stat")
            .args(["-c", "%g"])
            .arg(etc.join("lb/route.key")),
        "apt-get install -y coreutils",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), gid);
}

#[test]
fn cfn_lint_passes_without_findings() {
    let out = run(
        Command::new("cfn-lint")
            .arg("--format")
            .arg("parseable")
            .arg("--include-checks")
            .arg("I")
            .arg("--")
            .arg(TEMPLATE)
            .current_dir(repo_root()),
        "pip install cfn-lint",
    );
    let all = text(&out);
    assert!(
        out.status.success() && all.trim().is_empty(),
        "cfn-lint {TEMPLATE} ({}):\n{all}",
        out.status
    );
}

/// The user data script of the launch template, dedented, with `${...}` substitutions of
/// `Fn::Sub` replaced by placeholders (and `${!x}` turned into the literal `${x}`).
fn user_data_script(template: &str) -> String {
    user_data_script_with(template, &|name| {
        format!("PLACEHOLDER_{}", name.replace("::", "_").replace('.', "_"))
    })
}

/// Like [`user_data_script`], with `value(name)` for each `${name}`.
fn user_data_script_with(template: &str, value: &dyn Fn(&str) -> String) -> String {
    let start_marker = "Fn::Base64: !Sub\n";
    let start = template
        .find(start_marker)
        .expect("UserData uses Fn::Base64 !Sub")
        + start_marker.len();
    let rest = &template[start..];
    let mut lines = rest.lines();
    let first = lines.next().expect("a line after !Sub");
    assert_eq!(first.trim(), "- |", "user data is a literal block");
    let mut body = Vec::new();
    let mut indent = None;
    for line in lines {
        if line.trim().is_empty() {
            body.push(String::new());
            continue;
        }
        let this_indent = line.len() - line.trim_start().len();
        let block_indent = *indent.get_or_insert(this_indent);
        if this_indent < block_indent {
            break;
        }
        body.push(line[block_indent..].to_string());
    }
    let script = body.join("\n");

    let mut out = String::with_capacity(script.len());
    let mut rest = script.as_str();
    while let Some(pos) = rest.find("${") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after.find('}').expect("closed ${...}");
        let name = &after[..end];
        if let Some(literal) = name.strip_prefix('!') {
            out.push_str("${");
            out.push_str(literal);
            out.push('}');
        } else {
            out.push_str(&value(name));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn user_data_is_valid_bash_within_the_size_limit() {
    let script = user_data_script(&read(TEMPLATE));
    assert!(
        script.starts_with("#!/bin/bash\n"),
        "user data starts with a shebang"
    );
    assert!(
        script.len() < USER_DATA_LIMIT,
        "user data is {} bytes, EC2 takes at most {USER_DATA_LIMIT}",
        script.len()
    );
    let dir = TempDir::new("userdata");
    let path = dir.path().join("user-data.sh");
    fs::write(&path, &script).unwrap();
    let out = run(
        Command::new("bash").arg("-n").arg(&path),
        "apt-get install -y bash",
    );
    assert!(out.status.success(), "bash -n user data:\n{}", text(&out));
}

#[test]
fn template_installs_the_package() {
    let script = user_data_script(&read(TEMPLATE));
    // The unit, the user and /etc/lb come from the package, not from the user data.
    assert!(
        !script.contains("/etc/systemd/system/lb.service") && !script.contains("useradd"),
        "the user data writes no unit and no user of its own"
    );
    assert!(
        !script.contains("/usr/local/bin/lb"),
        "the package installs /usr/bin/lb"
    );
    for expected in [
        "aws s3 cp --only-show-errors 'PLACEHOLDER_PackageS3Uri' /tmp/lb.pkg",
        "sha256sum -c -",
        "apt-get install -y -q /tmp/lb.deb",
        "dnf install -y -q /tmp/lb.rpm",
        "systemd-tmpfiles --create /usr/lib/tmpfiles.d/lb.conf",
        "lb check --config /etc/lb/lb.toml",
        "systemctl enable lb",
    ] {
        assert!(script.contains(expected), "user data lacks `{expected}`");
    }
}

/// The lines of one resource (or output) of the template: from `  <name>:` to the next entry
/// of the same indentation.
fn resource<'a>(template: &'a str, name: &str) -> &'a str {
    let head = format!("\n  {name}:\n");
    let start = template
        .find(&head)
        .unwrap_or_else(|| panic!("{TEMPLATE} has no `{name}`"))
        + 1;
    let rest = &template[start + head.len() - 1..];
    let end = rest
        .lines()
        .scan(0, |pos, line| {
            let at = *pos;
            *pos += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| {
            let indent = line.len() - line.trim_start().len();
            !line.trim().is_empty() && indent <= 2 && !line.trim_start().starts_with('#')
        })
        .map(|(at, _)| at)
        .unwrap_or(rest.len());
    &template[start..start + head.len() - 1 + end]
}

/// Names of the resources of a given type.
fn resources_of_type(template: &str, ty: &str) -> Vec<String> {
    let resources = &template[template.find("\nResources:\n").expect("Resources")..];
    let resources = &resources[..resources.find("\nOutputs:\n").unwrap_or(resources.len())];
    let mut names = Vec::new();
    let mut current = None;
    for line in resources.lines() {
        if line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':') {
            current = Some(line.trim().trim_end_matches(':').to_string());
        } else if line.trim() == format!("Type: {ty}") && line.starts_with("    Type:") {
            names.extend(current.clone());
        }
    }
    names
}

#[test]
fn nlb_health_checks_read_readiness_not_the_proxy_listener() {
    let template = read(TEMPLATE);
    let groups = resources_of_type(&template, "AWS::ElasticLoadBalancingV2::TargetGroup");
    assert_eq!(
        groups,
        ["HttpsTargetGroup", "HttpTargetGroup", "ModuleTargetGroup"],
        "target groups"
    );
    for group in &groups {
        let block = resource(&template, group);
        for expected in [
            "HealthCheckProtocol: HTTP",
            "HealthCheckPort: \"18001\"",
            "HealthCheckPath: /ready",
            "HttpCode: \"200\"",
        ] {
            assert!(
                block.contains(expected),
                "{group} lacks `{expected}`:\n{block}"
            );
        }
    }
    // PROXY protocol only where lb reads it (the 443 listener); its redirect listener on 80
    // reads none.
    let pp = |group: &str| squash(resource(&template, group));
    assert!(pp("HttpsTargetGroup").contains("Key: proxy_protocol_v2.enabled Value: \"true\""));
    assert!(pp("HttpTargetGroup").contains("Key: proxy_protocol_v2.enabled Value: \"false\""));
    // A balancer that stops being ready keeps its users' open WebSockets.
    assert!(pp("HttpsTargetGroup").contains(
        "Key: target_health_state.unhealthy.connection_termination.enabled Value: \"false\""
    ));
    // The NLBs reach the admin listener; the generated config listens there on all addresses
    // (template_writes_a_valid_config).
    let sg = squash(resource(&template, "LbSecurityGroup"));
    for from in ["NlbSecurityGroup", "ModuleNlbSecurityGroup"] {
        assert!(
            sg.contains(&format!(
                "FromPort: 18001 ToPort: 18001 SourceSecurityGroupId: !Ref {from}"
            )),
            "18001 open to {from}:\n{sg}"
        );
    }
    assert!(
        !sg.contains(
            "FromPort: 8187 ToPort: 8187 SourceSecurityGroupId: !Ref QlikNodesSecurityGroupId"
        ),
        "the QPS nodes reach 8187 through the module NLB only"
    );
}

/// Text with every run of white space turned into one space.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn instances_heal_and_the_module_api_has_a_stable_name() {
    let template = read(TEMPLATE);
    assert!(
        resources_of_type(&template, "AWS::EC2::Instance").is_empty(),
        "no single instances"
    );
    let asg = resource(&template, "AutoScalingGroup");
    for expected in [
        "Type: AWS::AutoScaling::AutoScalingGroup",
        "VPCZoneIdentifier: !Ref SubnetIds",
        "LaunchTemplateId: !Ref LaunchTemplate",
        "MinSize: !Ref InstanceCount",
        "- !Ref ModuleTargetGroup",
        "- !If [UseNlb, !Ref HttpsTargetGroup, !Ref AWS::NoValue]",
    ] {
        assert!(
            asg.contains(expected),
            "AutoScalingGroup lacks `{expected}`"
        );
    }
    // The module name points at the internal NLB, and the QMC's URI uses the name.
    assert!(resource(&template, "ModuleNlb").contains("Scheme: internal"));
    let record = resource(&template, "ModuleDnsRecord");
    assert!(record.contains("Name: !Ref ModuleName"));
    assert!(record.contains("DNSName: !GetAtt ModuleNlb.DNSName"));
    let outputs = &template[template.find("\nOutputs:\n").unwrap()..];
    let uri = resource(outputs, "ModuleBaseUri");
    assert!(
        uri.contains("Value: !Sub https://${ModuleName}:8187/"),
        "{uri}"
    );
    assert!(!template.contains("PrivateDnsName"), "no instance names");
    // The Elastic IP follows a replacement instance.
    let script = user_data_script(&read(TEMPLATE));
    assert!(
        script.contains("aws ec2 associate-address --allocation-id 'PLACEHOLDER_EipAllocationId'")
    );
    // The optional CloudWatch agent ships the journal and scrapes /metrics with the token.
    let cw = resource(&template, "CloudWatchAgentConfig");
    assert!(cw.contains("\"file_path\": \"/var/log/lb/lb.log\""));
    assert!(cw.contains("\"prometheus\""));
    for expected in [
        "journalctl -u lb.service -f",
        "credentials_file: /etc/lb/admin.token",
        "targets: ['127.0.0.1:18001']",
        "amazon-cloudwatch-agent-ctl -a fetch-config",
    ] {
        assert!(script.contains(expected), "user data lacks `{expected}`");
    }
}

/// What the user data finds under /etc/lb when it writes lb.toml.
struct Secrets {
    qlik_client_cert: bool,
    module_cert: bool,
}

/// Runs the part of the user data that writes `/etc/lb/lb.toml`, with `/etc/lb` moved into a
/// scratch directory holding the files the secrets would give, and checks the result exactly
/// as `lb check` does (certificates and keys loaded).
fn generated_config(params: &[(&str, &str)], secrets: Secrets) -> (String, TempDir) {
    let template = read(TEMPLATE);
    let script = user_data_script_with(&template, &|name| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_string())
            .unwrap_or_else(|| format!("PLACEHOLDER_{name}"))
    });
    let start = script
        .find("# --- /etc/lb/lb.toml")
        .expect("user data writes lb.toml");
    let end_marker = "} > /etc/lb/lb.toml\n";
    let end = script[start..]
        .find(end_marker)
        .expect("lb.toml block ends")
        + start
        + end_marker.len();

    let dir = TempDir::new("config");
    let etc = dir.path().join("etc-lb");
    fs::create_dir_all(etc.join("qlik")).unwrap();
    fs::create_dir_all(etc.join("tls/module")).unwrap();
    fs::write(etc.join("route.key"), "0123456789abcdef0123456789abcdef").unwrap();
    fs::write(
        etc.join("admin.token"),
        "00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let pki = Pki::new();
    pki.leaf(
        &["qlik.example.com"],
        &etc.join("tls/cert.pem"),
        &etc.join("tls/key.pem"),
    );
    if secrets.module_cert {
        pki.leaf(
            &["lb-module.corp.example"],
            &etc.join("tls/module/cert.pem"),
            &etc.join("tls/module/key.pem"),
        );
    }
    if secrets.qlik_client_cert {
        pki.leaf(
            &["lb1.corp.example"],
            &etc.join("qlik/client.pem"),
            &etc.join("qlik/client_key.pem"),
        );
        fs::write(etc.join("qlik/root.pem"), &pki.ca_pem).unwrap();
    }
    let block = script[start..end].replace("/etc/lb", &etc.display().to_string());
    let path = dir.path().join("gen.sh");
    fs::write(&path, block).unwrap();
    let out = run(
        Command::new("bash")
            .arg("-eu")
            .arg(&path)
            .env("ZONE", "eu-west-1a"),
        "apt-get install -y bash",
    );
    assert!(
        out.status.success(),
        "config generation failed:\n{}",
        text(&out)
    );
    let toml = fs::read_to_string(etc.join("lb.toml")).expect("lb.toml written");
    if let Err(e) = lb::check_config(&etc.join("lb.toml")) {
        panic!("generated lb.toml fails lb check:\n{e}\n--- lb.toml ---\n{toml}");
    }
    (toml.replace(&etc.display().to_string(), "/etc/lb"), dir)
}

#[test]
fn template_writes_a_valid_config() {
    // Behind the NLB, named nodes with zones, engine telemetry, a module certificate.
    let (toml, _dir) = generated_config(
        &[
            ("AWS::StackName", "qlik-lb"),
            ("AdminCidr", "10.0.0.0/16"),
            ("EnableNlb", "true"),
            ("ModuleName", "lb-module.corp.example"),
            ("NodeAddresses", "10.0.1.10,10.0.2.10:443"),
            ("QlikNodeNames", "qlik1.corp.example,qlik2.corp.example"),
            ("QlikNodeZones", "eu-west-1a,eu-west-1b"),
        ],
        Secrets {
            qlik_client_cert: true,
            module_cert: true,
        },
    );
    for expected in [
        "proxy_protocol = \"required\"",
        // All addresses, so that the NLBs' health checks reach /ready; token required.
        "address = \"0.0.0.0:18001\"\ntoken = \"00112233445566778899aabbccddeeff\"",
        "zone = \"eu-west-1a\"",
        "id = \"qlik1-corp-example\"",
        "address = \"10.0.1.10:443\"",
        "zone = \"eu-west-1b\"",
        "engine = \"https://qlik2.corp.example:4747/engine/healthcheck\"",
        "strategy = \"least-loaded\"",
        "https://lb-module.corp.example:8187/",
        "[module.tls]\ncert_file = \"/etc/lb/tls/module/cert.pem\"\nkey_file = \"/etc/lb/tls/module/key.pem\"",
    ] {
        assert!(
            toml.contains(expected),
            "lb.toml lacks `{expected}`:\n{toml}"
        );
    }

    // One instance on its own: no PROXY protocol, anonymous nodes, the module serves the
    // site certificate.
    let (toml, _dir) = generated_config(
        &[
            ("AWS::StackName", "qlik-lb"),
            ("AdminCidr", ""),
            ("EnableNlb", "false"),
            ("ModuleName", "lb-module.corp.example"),
            ("NodeAddresses", "10.0.1.10"),
            ("QlikNodeNames", ""),
            ("QlikNodeZones", ""),
        ],
        Secrets {
            qlik_client_cert: false,
            module_cert: false,
        },
    );
    for expected in [
        "proxy_protocol = \"off\"",
        "address = \"0.0.0.0:18001\"",
        "id = \"qps1\"",
        "strategy = \"least-connections\"",
        "[module.tls]\ncert_file = \"/etc/lb/tls/cert.pem\"",
    ] {
        assert!(
            toml.contains(expected),
            "lb.toml lacks `{expected}`:\n{toml}"
        );
    }
    assert!(
        !toml.contains("engine ="),
        "no telemetry without a client certificate"
    );
}

/// A throwaway CA and certificates signed by it, as PEM files.
struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Qlik site root (test)");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// Writes a certificate for `names` and its key to `cert` and `key`.
    fn leaf(&self, names: &[&str], cert: &Path, key: &Path) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let pair = rcgen::KeyPair::generate().unwrap();
        let signed = params.signed_by(&pair, &self.issuer).unwrap();
        fs::create_dir_all(cert.parent().unwrap()).unwrap();
        fs::write(cert, signed.pem()).unwrap();
        fs::write(key, pair.serialize_pem()).unwrap();
    }
}

/// `rel` with every `/etc/lb/` path moved under `etc` (files there are written by the caller),
/// written next to them and checked with `lb check`'s own function (which also loads every
/// certificate and key).
fn check_relocated(rel: &str, etc: &Path) -> Result<lb_config::Config, String> {
    let text = read(rel);
    assert!(text.contains("/etc/lb/"), "{rel} names files under /etc/lb");
    let moved = text.replace("/etc/lb/", &format!("{}/", etc.display()));
    let path = etc.join("lb.toml");
    fs::write(&path, moved).unwrap();
    lb::check_config(&path).map_err(|e| format!("{rel} fails lb check:\n{e}"))
}

#[test]
fn production_example_passes_lb_check() {
    let dir = TempDir::new("production");
    let etc = dir.path().join("etc-lb");
    let pki = Pki::new();
    pki.leaf(
        &["qlik.example.com"],
        &etc.join("tls/cert.pem"),
        &etc.join("tls/key.pem"),
    );
    pki.leaf(
        &["lb-module.corp.example"],
        &etc.join("tls/module/cert.pem"),
        &etc.join("tls/module/key.pem"),
    );
    pki.leaf(
        &["lb1.corp.example"],
        &etc.join("qlik/client.pem"),
        &etc.join("qlik/client_key.pem"),
    );
    fs::write(etc.join("qlik/root.pem"), &pki.ca_pem).unwrap();
    fs::write(etc.join("route.key"), "0123456789abcdef0123456789abcdef").unwrap();
    fs::write(
        etc.join("admin.token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();

    let cfg =
        check_relocated("deploy/examples/production.toml", &etc).unwrap_or_else(|e| panic!("{e}"));
    // What the example promises in its comments.
    assert_eq!(
        cfg.listener.proxy_protocol,
        lb_config::ProxyProtocolMode::Required
    );
    assert!(cfg.listener.tls.is_some(), "HTTPS for users");
    assert_eq!(cfg.nodes.len(), 3, "three QPS nodes");
    for n in &cfg.nodes {
        assert!(
            n.tls && n.server_name.is_some(),
            "node {} over HTTPS by name",
            n.id
        );
        assert!(
            n.zone.is_some() && n.engine.is_some(),
            "node {} zone, engine",
            n.id
        );
    }
    assert!(
        cfg.upstream.ca_file.is_some(),
        "nodes verified against the Qlik root CA"
    );
    let module = cfg.module.as_ref().expect("module API");
    let module_tls = module.tls.as_ref().expect("module API over HTTPS");
    assert!(
        module_tls.client_ca_file.is_some(),
        "module API requires client certificates"
    );
    let admin = cfg.admin.as_ref().expect("admin listener");
    assert!(
        !admin.address.ip().is_loopback() && admin.token.is_some(),
        "admin reachable by the NLB, with a token"
    );
    assert!(cfg.balance.zone.is_some(), "zone");
    let auth = cfg
        .listeners
        .iter()
        .find(|l| l.name == "auth")
        .expect("a Windows authentication listener");
    assert_eq!(
        auth.address.port(),
        4244,
        "on the QPS's authentication port"
    );
    assert_eq!(auth.node_port, Some(4244));
    assert!(auth.tls.is_some(), "over HTTPS with the site certificate");
    assert_eq!(
        auth.proxy_protocol,
        lb_config::ProxyProtocolMode::Required,
        "behind the NLB"
    );

    // A file the example names and that is missing is reported with its key.
    fs::remove_file(etc.join("tls/module/key.pem")).unwrap();
    let err = check_relocated("deploy/examples/production.toml", &etc).unwrap_err();
    assert!(
        err.contains("module/key.pem"),
        "missing key reported: {err}"
    );
}

#[test]
fn packaged_default_config_passes_lb_check() {
    let dir = TempDir::new("default");
    let etc = dir.path().join("etc-lb");
    fs::create_dir_all(&etc).unwrap();
    // The route key the package's postinst generates: 48 random bytes, base64.
    fs::write(
        etc.join("route.key"),
        "c2l4dHktZm91ciBjaGFyYWN0ZXJzIG9mIGJhc2U2NCwgYXMgdGhlIHBvc3RpbnN0IHdyaXRlcw",
    )
    .unwrap();
    let cfg = check_relocated("deploy/packaging/lb.toml", &etc).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cfg.listener.address.ip().is_loopback(),
        "the default config serves nobody until edited"
    );
    assert!(
        cfg.sticky.route_key.is_some(),
        "route key read from the file"
    );

    // Without the generated key file, the default config is refused.
    fs::remove_file(etc.join("route.key")).unwrap();
    let err = check_relocated("deploy/packaging/lb.toml", &etc).unwrap_err();
    assert!(err.contains("sticky.route_key_file"), "{err}");
}

#[test]
fn template_offers_a_shared_store_created_or_existing() {
    let template = read(TEMPLATE);
    // Created: Valkey across two zones with failover, TLS and encryption at rest, reachable
    // from the balancers only; its TLS endpoint goes into every balancer's configuration.
    let store = squash(resource(&template, "Store"));
    for expected in [
        "Type: AWS::ElastiCache::ReplicationGroup",
        "Condition: CreateStore",
        "Engine: valkey",
        "NumCacheClusters: 2",
        "AutomaticFailoverEnabled: true",
        "MultiAZEnabled: true",
        "TransitEncryptionEnabled: true",
        "AtRestEncryptionEnabled: true",
        "{{resolve:secretsmanager:${SharedStoreSecretArn}}}",
    ] {
        assert!(
            store.contains(expected),
            "Store lacks {expected:?}:\n{store}"
        );
    }
    let sg = squash(resource(&template, "StoreSecurityGroup"));
    assert!(
        sg.contains("FromPort: 6379") && sg.contains("SourceSecurityGroupId: !Ref LbSecurityGroup"),
        "{sg}"
    );
    assert!(
        !sg.contains("CidrIp"),
        "the store is open to addresses: {sg}"
    );
    let role = squash(resource(&template, "InstanceRole"));
    assert!(
        role.contains("!If [HasStoreSecret, !Ref SharedStoreSecretArn, !Ref AWS::NoValue]"),
        "{role}"
    );
    let script = user_data_script(&template);
    assert!(
        script.contains("> /etc/lb/store.password"),
        "the password is written to a file"
    );
    let user_data = squash(resource(&template, "LaunchTemplate"));
    assert!(
        user_data.contains(
            "!Sub rediss://${Store.PrimaryEndPoint.Address}:${Store.PrimaryEndPoint.Port}"
        ) && user_data.contains("!If [UseExistingStore, !Ref SharedStoreUrl, \"\"]"),
        "the store URL reaches the user data"
    );

    // The generated configuration with a store passes lb check; without one it has none.
    let (toml, _dir) = generated_config(
        &[
            ("AWS::StackName", "qlik-lb"),
            ("NodeAddresses", "10.0.1.10,10.0.2.10"),
            (
                "StoreUrl",
                "rediss://master.qlik-lb.abc123.euw1.cache.amazonaws.com:6379",
            ),
        ],
        Secrets {
            qlik_client_cert: false,
            module_cert: false,
        },
    );
    assert!(
        toml.contains(
            "[sticky.shared]\nurl = \"rediss://master.qlik-lb.abc123.euw1.cache.amazonaws.com:6379\""
        ),
        "{toml}"
    );
    let (toml, _dir) = generated_config(
        &[
            ("AWS::StackName", "qlik-lb"),
            ("NodeAddresses", "10.0.1.10"),
            ("StoreUrl", ""),
        ],
        Secrets {
            qlik_client_cert: false,
            module_cert: false,
        },
    );
    assert!(!toml.contains("[sticky.shared]"), "{toml}");
}
