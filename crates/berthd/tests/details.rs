//! CRI details a kubelet (or a crictl user) relies on, through berthd's
//! socket with real containers and CNI: resolv.conf, the socket and config
//! file, /metrics, list filters, stop timeouts and signals, a clean
//! restart, kubelet cgroup parents, host namespaces, and serialisation of
//! concurrent requests on one pod.

mod common;
use berth_cri_api::v1 as cri;
use berth_cri_api::v1::runtime_service_client::RuntimeServiceClient;
use common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Rt = RuntimeServiceClient<Channel>;

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn sh(c: &mut Rt, id: &str, script: &str) -> (String, i32) {
    let r = exec(c, id, &["sh", "-c", script]).await;
    (String::from_utf8_lossy(&r.stdout).to_string(), r.exit_code)
}

async fn run_pod_with(c: &mut Rt, cfg: cri::PodSandboxConfig) -> String {
    c.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cfg),
        runtime_handler: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

async fn create(c: &mut Rt, pod: &str, cfg: cri::ContainerConfig) -> String {
    c.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(cfg),
        sandbox_config: None,
    })
    .await
    .unwrap()
    .into_inner()
    .container_id
}

async fn start(c: &mut Rt, id: &str) {
    c.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap();
}

async fn stop_pod(c: &mut Rt, pod: &str) {
    c.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
}

async fn remove_pod(c: &mut Rt, pod: &str) {
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
}

async fn pods(c: &mut Rt, f: Option<cri::PodSandboxFilter>) -> BTreeSet<String> {
    c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: f })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect()
}

async fn containers(c: &mut Rt, f: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
    c.list_containers(cri::ListContainersRequest { filter: f })
        .await
        .unwrap()
        .into_inner()
        .containers
}

async fn container_ids(c: &mut Rt, f: Option<cri::ContainerFilter>) -> BTreeSet<String> {
    containers(c, f).await.into_iter().map(|c| c.id).collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The shortest prefix (at least 5 characters) of `id` that no other id
/// shares, so a prefix filter selects exactly one.
fn unique_prefix(id: &str, others: &[&String]) -> String {
    (5..id.len())
        .map(|n| &id[..n])
        .find(|p| others.iter().all(|o| *o == id || !o.starts_with(p)))
        .unwrap_or(id)
        .to_string()
}

/// Polls `path` until it contains `what`.
async fn wait_for_text(path: &Path, what: &str) -> String {
    let mut text = String::new();
    for _ in 0..500 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never contained {what:?}: {text}", path.display());
}

fn own_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

fn with_namespaces(
    mut cfg: cri::PodSandboxConfig,
    o: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    cfg.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(o),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

// ---------------------------------------------------------------------
// 1. resolv.conf

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolv_conf_comes_from_dns_config_or_the_host() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let mut cfg = pod_config("dns", &b.logs());
    cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into(), "fd00::10".into()],
        searches: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        options: vec!["ndots:5".into(), "timeout:2".into()],
    });
    let (_, ids) = run_pod(
        &mut c,
        cfg,
        vec![
            ctr_config("a", &["sleep", "1000"]),
            ctr_config("b", &["sleep", "1000"]),
        ],
    )
    .await;
    // What a resolver reads: nameservers in order, one search list, options.
    for id in &ids {
        let (text, code) = sh(&mut c, id, "cat /etc/resolv.conf").await;
        assert_eq!(code, 0);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let of = |kw: &str| -> Vec<String> {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix(kw))
                .map(|r| r.trim().to_string())
                .collect()
        };
        assert_eq!(of("nameserver "), ["10.96.0.10", "fd00::10"], "{text}");
        assert_eq!(
            of("search "),
            ["default.svc.cluster.local svc.cluster.local cluster.local"],
            "{text}"
        );
        assert_eq!(of("options "), ["ndots:5 timeout:2"], "{text}");
        assert_eq!(lines.len(), 4, "{text}");
    }
    // No DNSConfig, or an empty one: the node's resolv.conf as it is.
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut empty = pod_config("dns-empty", &b.logs());
    empty.dns_config = Some(cri::DnsConfig::default());
    for cfg in [pod_config("dns-none", &b.logs()), empty] {
        let (_, ids) = run_pod(&mut c, cfg, vec![ctr_config("a", &["sleep", "1000"])]).await;
        let (text, code) = sh(&mut c, &ids[0], "cat /etc/resolv.conf").await;
        assert_eq!((text.as_str(), code), (host.as_str(), 0));
    }
    // A server that is not an IP is refused, naming it.
    let mut bad = pod_config("dns-bad", &b.logs());
    bad.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.1".into(), "dns.example".into()],
        ..Default::default()
    });
    let e = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("config.dns_config.servers[1]"),
        "{}",
        e.message()
    );
    for p in pods(&mut c, None).await {
        remove_pod(&mut c, &p).await;
    }
    assert_eq!(b.leaks(), Vec::<String>::new());
}

// ---------------------------------------------------------------------
// 2. The socket, the config file, /metrics

fn berthd(args: &[&str]) -> std::process::Output {
    Command::new(bin("berthd")).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_0660_root_and_the_printed_config_round_trips() {
    let mut b = Berthd::start();
    let m = std::fs::metadata(&b.socket).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o7777, 0o660, "{:o}", m.mode());
    assert_eq!((m.uid(), m.gid()), (0, 0));

    // A second berthd (its own root and state) on the same socket is
    // refused: the first keeps its socket and goes on serving.
    let second = |socket: &Path| {
        let cfg = b.tmp.path().join("second.toml");
        std::fs::write(
            &cfg,
            format!(
                "root = {:?}\nstate = {:?}\nsocket = {:?}\n[runtime]\ncgroup_parent = {:?}\nmonitor = {:?}\n[cni]\nconf_dir = {:?}\n",
                b.tmp.path().join("second-root"),
                b.tmp.path().join("second-state"),
                socket,
                format!("{}/second", b.cgroup_parent),
                bin("berth-monitor"),
                b.tmp.path().join("net.d"),
            ),
        )
        .unwrap();
        Command::new(bin("berthd"))
            .arg("--config")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let ino = m.ino();
    let mut other = second(&b.socket);
    let t = Instant::now();
    while other.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still running (it took the socket): stopped, so the test fails
    // instead of hanging. Not reaped yet, so the pid is still its own.
    if other.try_wait().unwrap().is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &other.id().to_string()])
            .status();
    }
    let out = other.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second berthd took the socket: {err}"
    );
    assert!(err.contains(&b.socket.display().to_string()), "{err}");
    assert_eq!(std::fs::metadata(&b.socket).unwrap().ino(), ino);
    let mut c = b.rt().await;
    c.version(cri::VersionRequest::default()).await.unwrap();
    drop(c);
    // berthd's log goes to a file here: plain text, no colour codes.
    let log = b.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in the log file: {log:?}"
    );
    // A stale socket (nobody listening, as a killed berthd leaves it) is
    // replaced.
    let stale = b.tmp.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let other = second(&stale);
    let mut up = false;
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(&stale).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut oc = RuntimeServiceClient::new(channel(&stale).await);
    let served = up && oc.version(cri::VersionRequest::default()).await.is_ok();
    drop(oc);
    let _ = Command::new("kill")
        .args(["-TERM", &other.id().to_string()])
        .status();
    let out = other.wait_with_output().unwrap();
    assert!(served, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(&stale).unwrap().mode() & 0o777, 0o660);

    // --print-config: the file merged with the defaults.
    let cfg = b.config.to_str().unwrap().to_string();
    let o = berthd(&["--config", &cfg, "--print-config"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8(o.stdout).unwrap();
    for want in [
        format!("socket = {:?}", b.socket.display().to_string()),
        format!("cgroup_parent = {:?}", b.cgroup_parent),
        "[metrics]".to_string(),
        "max_exec_output = 16777216".to_string(),
        "cgroup_driver = \"cgroupfs\"".to_string(),
    ] {
        assert!(printed.contains(&want), "{want} not in:\n{printed}");
    }
    // Printed again from its own output: the same text.
    let again = b.tmp.path().join("printed.toml");
    std::fs::write(&again, &printed).unwrap();
    let o = berthd(&["--config", again.to_str().unwrap(), "--print-config"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), printed);

    // And berthd serves with it, finding its pods.
    let mut c = b.rt().await;
    let (pod, _) = run_pod(
        &mut c,
        pod_config("rt", &b.logs()),
        vec![ctr_config("s", &["sleep", "1000"])],
    )
    .await;
    drop(c);
    assert!(b.terminate().is_some_and(|s| s.success()), "{}", b.log());
    std::fs::write(&b.config, &printed).unwrap();
    b.spawn();
    let mut c = b.rt().await;
    assert_eq!(pods(&mut c, None).await, set(&[&pod]));
    remove_pod(&mut c, &pod).await;

    // Unknown keys anywhere are refused, naming the key.
    let base = format!(
        "root = {:?}\nstate = {:?}\nsocket = {:?}\n",
        b.tmp.path().join("bad-root"),
        b.tmp.path().join("bad-state"),
        b.tmp.path().join("bad.sock"),
    );
    let bad = b.tmp.path().join("bad.toml");
    for (extra, key) in [
        ("colour = \"blue\"\n", "colour"),
        ("[runtime]\ncgroup_drvier = \"cgroupfs\"\n", "cgroup_drvier"),
        ("[cni]\nconfdir = \"/x\"\n", "confdir"),
        ("[metrcis]\naddress = \"127.0.0.1:1\"\n", "metrcis"),
        (
            "[runtime.handlers.runc]\npath = \"/usr/sbin/runc\"\nargs = []\n",
            "args",
        ),
    ] {
        std::fs::write(&bad, format!("{base}{extra}")).unwrap();
        let o = berthd(&["--config", bad.to_str().unwrap(), "--print-config"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra} accepted");
        assert!(o.stdout.is_empty());
        assert!(err.contains(key), "{key} not named: {err}");
    }
    // The daemon itself refuses to start with it (and makes nothing).
    std::fs::write(
        &bad,
        format!(
            "{base}[runtime]\ncgroup_parent = {:?}\ncgroup_drvier = \"cgroupfs\"\n",
            b.cgroup_parent
        ),
    )
    .unwrap();
    let o = berthd(&["--config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cgroup_drvier"));
    assert!(!b.tmp.path().join("bad.sock").exists());
    assert!(!b.tmp.path().join("bad-root").exists());
    assert_eq!(b.leaks(), Vec::<String>::new());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over plain HTTP/1.1; the server closes the connection after the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// Samples of a Prometheus text exposition, `name{labels}` → value; checks
/// that every sample's family was declared with a TYPE first.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut out = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            types.insert(w.next().unwrap().to_string(), w.next().unwrap().to_string());
            continue;
        }
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        let (key, value) = l.rsplit_once(' ').unwrap();
        let name = key.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {name}: {l}");
        out.insert(key.to_string(), value.parse::<f64>().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_each_rpc_its_errors_and_latencies() {
    let addr = format!("127.0.0.1:{}", free_port());
    let b = Berthd::start_with(Options {
        extra_toml: format!("[metrics]\naddress = {addr:?}\n"),
        ..Default::default()
    });
    let mut c = b.rt().await;
    // The endpoint comes up with the daemon (a task of its own).
    for _ in 0..200 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        pods(&mut c, None).await;
    }
    let (_pod, ids) = run_pod(
        &mut c,
        pod_config("m", &b.logs()),
        vec![ctr_config("s", &["sleep", "1000"])],
    )
    .await;
    containers(&mut c, None).await;
    containers(&mut c, None).await;
    let _ = status(&mut c, &ids[0]).await;
    // Failing calls: an unknown container, a pod config without a uid.
    let e = c
        .container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let mut bad = pod_config("bad", &b.logs());
    bad.metadata.as_mut().unwrap().uid.clear();
    c.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(bad),
        runtime_handler: String::new(),
    })
    .await
    .unwrap_err();

    let (head, body) = http_get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let m = parse_prometheus(&body);
    let get = |name: &str, op: &str| -> f64 {
        *m.get(&format!("{name}{{operation=\"{op}\"}}"))
            .unwrap_or_else(|| panic!("{name} {op} missing:\n{body}"))
    };
    let total = "berth_cri_operations_total";
    let errors = "berth_cri_operation_errors_total";
    for (op, n, errs) in [
        ("ListPodSandbox", 3.0, 0.0),
        ("RunPodSandbox", 2.0, 1.0),
        ("CreateContainer", 1.0, 0.0),
        ("StartContainer", 1.0, 0.0),
        ("ListContainers", 2.0, 0.0),
        ("ContainerStatus", 2.0, 1.0),
    ] {
        assert_eq!(
            (get(total, op), get(errors, op)),
            (n, errs),
            "{op}:\n{body}"
        );
        // The histogram: cumulative buckets ending at the count, a sum.
        let h = "berth_cri_operation_duration_seconds";
        assert_eq!(get(&format!("{h}_count"), op), n, "{op}");
        let mut buckets: Vec<(f64, f64)> = m
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&format!("{h}_bucket{{operation=\"{op}\",le=\""))?;
                let le = rest.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() > 5, "{op}: {buckets:?}");
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, n), "{op}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{op}: {buckets:?}"
        );
        let sum = get(&format!("{h}_sum"), op);
        assert!(sum > 0.0 && sum < 60.0, "{op}: {sum}");
    }
    // A pod takes milliseconds to make: the good RunPodSandbox is not in
    // the first bucket (the refused one may be).
    let first =
        "berth_cri_operation_duration_seconds_bucket{operation=\"RunPodSandbox\",le=\"0.001\"}";
    assert!(m.get(first).is_some_and(|v| *v <= 1.0), "{body}");
}

// ---------------------------------------------------------------------
// 3. List filters

fn pod_filter(
    id: &str,
    state: Option<cri::PodSandboxState>,
    sel: &[(&str, &str)],
) -> Option<cri::PodSandboxFilter> {
    Some(cri::PodSandboxFilter {
        id: id.into(),
        state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
        label_selector: labels(sel),
    })
}

fn ctr_filter(
    id: &str,
    pod: &str,
    state: Option<cri::ContainerState>,
    sel: &[(&str, &str)],
) -> Option<cri::ContainerFilter> {
    Some(cri::ContainerFilter {
        id: id.into(),
        pod_sandbox_id: pod.into(),
        state: state.map(|s| cri::ContainerStateValue { state: s as i32 }),
        label_selector: labels(sel),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_select_by_id_prefix_state_labels_and_pod() {
    use cri::ContainerState::*;
    use cri::PodSandboxState::*;
    let b = Berthd::start();
    let mut c = b.rt().await;
    let labelled = |name: &str, kv: &[(&str, &str)]| {
        let mut p = pod_config(name, &b.logs());
        p.labels = labels(kv);
        p
    };
    let ctr = |name: &str, cmd: &[&str], role: &str| {
        let mut x = ctr_config(name, cmd);
        x.labels = labels(&[("role", role), ("name", name)]);
        x
    };
    // Pod A: a running and a created container; pod B: a running and an
    // exited one; pod C: stopped, its container exited.
    let pa = run_pod_with(&mut c, labelled("pa", &[("app", "a"), ("tier", "web")])).await;
    let a1 = create(&mut c, &pa, ctr("a1", &["sleep", "1000"], "main")).await;
    start(&mut c, &a1).await;
    let a2 = create(&mut c, &pa, ctr("a2", &["sleep", "1000"], "side")).await;
    let pb = run_pod_with(&mut c, labelled("pb", &[("app", "b"), ("tier", "web")])).await;
    let b1 = create(&mut c, &pb, ctr("b1", &["sleep", "1000"], "main")).await;
    start(&mut c, &b1).await;
    let b2 = create(&mut c, &pb, ctr("b2", &["true"], "side")).await;
    start(&mut c, &b2).await;
    wait_exited(&mut c, &b2).await;
    let pc = run_pod_with(&mut c, labelled("pc", &[("app", "c"), ("tier", "db")])).await;
    let c1 = create(&mut c, &pc, ctr("c1", &["sleep", "1000"], "main")).await;
    start(&mut c, &c1).await;
    stop_pod(&mut c, &pc).await;

    let all_pods = [&pa, &pb, &pc];
    let all_ctrs = [&a1, &a2, &b1, &b2, &c1];
    let pa_prefix = unique_prefix(&pa, &all_pods);
    let pb_prefix = unique_prefix(&pb, &all_pods);

    // ListPodSandbox.
    let cases: Vec<(Option<cri::PodSandboxFilter>, BTreeSet<String>)> = vec![
        (None, set(&all_pods)),
        (pod_filter("", None, &[]), set(&all_pods)),
        (pod_filter(&pa, None, &[]), set(&[&pa])),
        (pod_filter(&pa_prefix, None, &[]), set(&[&pa])),
        (pod_filter("nope", None, &[]), set(&[])),
        (pod_filter("", Some(SandboxReady), &[]), set(&[&pa, &pb])),
        (pod_filter("", Some(SandboxNotready), &[]), set(&[&pc])),
        (pod_filter(&pc, Some(SandboxReady), &[]), set(&[])),
        (pod_filter("", None, &[("tier", "web")]), set(&[&pa, &pb])),
        (
            pod_filter("", None, &[("app", "a"), ("tier", "web")]),
            set(&[&pa]),
        ),
        (
            pod_filter("", None, &[("app", "a"), ("tier", "db")]),
            set(&[]),
        ),
        (pod_filter("", None, &[("app", "")]), set(&[])),
        (
            pod_filter(&pb_prefix, Some(SandboxReady), &[("tier", "web")]),
            set(&[&pb]),
        ),
    ];
    for (f, want) in cases {
        assert_eq!(pods(&mut c, f.clone()).await, want, "{f:?}");
    }
    // Items carry what the kubelet matches on.
    let items = c
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: pod_filter(&pa, None, &[]),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items[0].labels, labels(&[("app", "a"), ("tier", "web")]));
    assert_eq!(items[0].metadata.as_ref().unwrap().name, "pa");
    assert_eq!(items[0].state, SandboxReady as i32);

    // ListContainers.
    let a1_prefix = unique_prefix(&a1, &all_ctrs);
    let cases: Vec<(Option<cri::ContainerFilter>, BTreeSet<String>)> = vec![
        (None, set(&all_ctrs)),
        (ctr_filter(&a1, "", None, &[]), set(&[&a1])),
        (ctr_filter(&a1_prefix, "", None, &[]), set(&[&a1])),
        (ctr_filter("nope", "", None, &[]), set(&[])),
        (ctr_filter("", &pa, None, &[]), set(&[&a1, &a2])),
        (ctr_filter("", &pb_prefix, None, &[]), set(&[&b1, &b2])),
        (ctr_filter("", "nope", None, &[]), set(&[])),
        (
            ctr_filter("", "", Some(ContainerRunning), &[]),
            set(&[&a1, &b1]),
        ),
        (ctr_filter("", "", Some(ContainerCreated), &[]), set(&[&a2])),
        (
            ctr_filter("", "", Some(ContainerExited), &[]),
            set(&[&b2, &c1]),
        ),
        (
            ctr_filter("", "", None, &[("role", "main")]),
            set(&[&a1, &b1, &c1]),
        ),
        (ctr_filter("", &pa, None, &[("role", "main")]), set(&[&a1])),
        (
            ctr_filter("", "", Some(ContainerRunning), &[("role", "side")]),
            set(&[]),
        ),
        (ctr_filter(&a2, &pb, None, &[]), set(&[])),
        (
            ctr_filter(
                &a1,
                &pa,
                Some(ContainerRunning),
                &[("role", "main"), ("name", "a1")],
            ),
            set(&[&a1]),
        ),
    ];
    for (f, want) in cases {
        assert_eq!(container_ids(&mut c, f.clone()).await, want, "{f:?}");
    }
    let l = containers(&mut c, ctr_filter(&b1, "", None, &[])).await;
    assert_eq!(
        (
            l[0].pod_sandbox_id.as_str(),
            l[0].state,
            l[0].metadata.as_ref().unwrap().name.as_str()
        ),
        (pb.as_str(), ContainerRunning as i32, "b1")
    );

    // ListContainerStats: running containers only, then the filter.
    let cstats = |f: Option<cri::ContainerStatsFilter>| {
        let mut c = c.clone();
        async move {
            c.list_container_stats(cri::ListContainerStatsRequest { filter: f })
                .await
                .unwrap()
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect::<BTreeSet<String>>()
        }
    };
    let sf = |id: &str, pod: &str, sel: &[(&str, &str)]| {
        Some(cri::ContainerStatsFilter {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            label_selector: labels(sel),
        })
    };
    assert_eq!(cstats(None).await, set(&[&a1, &b1]));
    assert_eq!(cstats(sf(&a1, "", &[])).await, set(&[&a1]));
    assert_eq!(cstats(sf(&a1_prefix, "", &[])).await, set(&[&a1]));
    assert_eq!(
        cstats(sf(&a2, "", &[])).await,
        set(&[]),
        "created: no stats"
    );
    assert_eq!(cstats(sf("", &pb, &[])).await, set(&[&b1]));
    assert_eq!(cstats(sf("", &pc, &[])).await, set(&[]));
    assert_eq!(
        cstats(sf("", "", &[("role", "main")])).await,
        set(&[&a1, &b1])
    );
    assert_eq!(cstats(sf("", &pa, &[("name", "b1")])).await, set(&[]));

    // ListPodSandboxStats: ready pods only, then the filter.
    let pstats = |f: Option<cri::PodSandboxStatsFilter>| {
        let mut c = c.clone();
        async move {
            c.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: f })
                .await
                .unwrap()
                .into_inner()
                .stats
                .into_iter()
                .map(|s| {
                    let id = s.attributes.unwrap().id;
                    let running: BTreeSet<String> = s
                        .linux
                        .unwrap()
                        .containers
                        .into_iter()
                        .map(|c| c.attributes.unwrap().id)
                        .collect();
                    (id, running)
                })
                .collect::<BTreeMap<String, BTreeSet<String>>>()
        }
    };
    let pf = |id: &str, sel: &[(&str, &str)]| {
        Some(cri::PodSandboxStatsFilter {
            id: id.into(),
            label_selector: labels(sel),
        })
    };
    let both: BTreeMap<String, BTreeSet<String>> =
        [(pa.clone(), set(&[&a1])), (pb.clone(), set(&[&b1]))].into();
    assert_eq!(pstats(None).await, both);
    assert_eq!(pstats(pf("", &[("tier", "web")])).await, both);
    assert_eq!(
        pstats(pf(&pa_prefix, &[]))
            .await
            .into_keys()
            .collect::<Vec<_>>(),
        vec![pa.clone()]
    );
    assert_eq!(
        pstats(pf("", &[("app", "b")]))
            .await
            .into_keys()
            .collect::<Vec<_>>(),
        vec![pb.clone()]
    );
    assert!(pstats(pf(&pc, &[])).await.is_empty(), "not ready: no stats");
    assert!(pstats(pf("", &[("app", "a"), ("tier", "db")]))
        .await
        .is_empty());

    for p in all_pods {
        remove_pod(&mut c, p).await;
    }
    assert_eq!(b.leaks(), Vec::<String>::new());
}

// ---------------------------------------------------------------------
// 4. StopContainer: timeout, SIGKILL, the image's STOPSIGNAL

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The busybox layout of berth_testutil with `StopSignal` set in its image
/// config (testutil has no knob for it): the config, manifest and index
/// blobs are rewritten with their new digests.
fn layout_with_stop_signal(dir: &Path, signal: &str) -> PathBuf {
    use serde_json::{json, Value};
    berth_testutil::write_image_layout(dir, "stopsig", &["sh"]).unwrap();
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |data: &[u8]| {
        let hex = sha256_hex(data);
        std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
        format!("sha256:{hex}")
    };
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(&mdigest)).unwrap()).unwrap();
    let cdigest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(blob(&cdigest)).unwrap()).unwrap();
    config["config"]["StopSignal"] = json!(signal);
    let config = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = json!(put(&config));
    manifest["config"]["size"] = json!(config.len());
    let manifest = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = json!(put(&manifest));
    index["manifests"][0]["size"] = json!(manifest.len());
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    dir.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_the_timeout_then_kills_and_uses_the_image_stop_signal() {
    const STOPSIG_IMAGE: &str = "localhost/berth-test/stopsig:1";
    let layouts = tempfile::tempdir().unwrap();
    let layout = layout_with_stop_signal(&layouts.path().join("stopsig"), "SIGUSR1");
    let b = Berthd::start_with(Options {
        images: vec![(layout, STOPSIG_IMAGE.into())],
        ..Default::default()
    });
    let mut c = b.rt().await;
    let stubborn = ctr_config(
        "stubborn",
        &[
            "sh",
            "-c",
            "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    );
    let mut usr1 = ctr_config(
        "usr1",
        &[
            "sh",
            "-c",
            "trap 'echo got USR1; exit 7' USR1; echo ready; while :; do sleep 0.1; done",
        ],
    );
    usr1.image.as_mut().unwrap().image = STOPSIG_IMAGE.into();
    let (pod, ids) = run_pod(&mut c, pod_config("stop", &b.logs()), vec![stubborn, usr1]).await;
    let log = |n: &str| b.logs().join("stop").join(format!("{n}.log"));
    wait_for_text(&log("stubborn"), "ready").await;
    wait_for_text(&log("usr1"), "ready").await;

    // SIGTERM first (the trap answers it and the loop goes on), SIGKILL
    // once the 2 s are over.
    let t = Instant::now();
    c.stop_container(cri::StopContainerRequest {
        container_id: ids[0].clone(),
        timeout: 2,
    })
    .await
    .unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let s = status(&mut c, &ids[0]).await;
    assert_eq!(
        (s.state, s.exit_code, s.reason.as_str()),
        (cri::ContainerState::ContainerExited as i32, 137, "Error"),
        "{s:?}"
    );
    assert!(s.finished_at > s.started_at);
    assert!(std::fs::read_to_string(log("stubborn"))
        .unwrap()
        .contains("got TERM"));

    // The image says SIGUSR1: that is what ends it, at once (a SIGTERM
    // would be ignored and end in a SIGKILL after 10 s).
    let t = Instant::now();
    c.stop_container(cri::StopContainerRequest {
        container_id: ids[1].clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let s = status(&mut c, &ids[1]).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"), "{s:?}");
    assert!(std::fs::read_to_string(log("usr1"))
        .unwrap()
        .contains("got USR1"));

    remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}

// ---------------------------------------------------------------------
// 5. A clean SIGTERM restart

/// Everything a kubelet compares across a restart: pods with their state
/// and IP, containers with state, exit code, reason and times.
async fn snapshot(c: &mut Rt) -> (BTreeMap<String, (i32, String)>, BTreeMap<String, String>) {
    let mut p = BTreeMap::new();
    for id in pods(c, None).await {
        let s = c
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        p.insert(id, (s.state, s.network.unwrap().ip));
    }
    let mut ctrs = BTreeMap::new();
    for x in containers(c, None).await {
        let s = status(c, &x.id).await;
        ctrs.insert(
            x.id.clone(),
            format!(
                "pod={} state={} exit={} reason={} created={} started={} finished={}",
                x.pod_sandbox_id,
                s.state,
                s.exit_code,
                s.reason,
                s.created_at,
                s.started_at,
                s.finished_at
            ),
        );
    }
    (p, ctrs)
}

fn log_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_sigterm_restart_keeps_every_pod_container_and_state() {
    use cri::ContainerState::*;
    let mut b = Berthd::start();
    let mut c = b.rt().await;
    let logger = ctr_config(
        "logger",
        &[
            "sh",
            "-c",
            "i=0; while :; do echo tick$i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    let (p1, ids) = run_pod(
        &mut c,
        pod_config("live", &b.logs()),
        vec![
            logger,
            ctr_config("quit", &["sh", "-c", "exit 3"]),
            ctr_config(
                "stubborn",
                &[
                    "sh",
                    "-c",
                    "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.1; done",
                ],
            ),
        ],
    )
    .await;
    let (logger, quit, stubborn) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let idle = create(&mut c, &p1, ctr_config("idle", &["sleep", "1000"])).await;
    let (p2, ids2) = run_pod(
        &mut c,
        pod_config("stopped", &b.logs()),
        vec![ctr_config("s", &["sleep", "1000"])],
    )
    .await;
    stop_pod(&mut c, &p2).await;
    wait_exited(&mut c, &quit).await;
    let before = snapshot(&mut c).await;
    assert_eq!(before.0.len(), 2);
    assert_eq!(before.1.len(), 5);

    // The kubelet's connection stays open, as it would, with its event
    // stream (evented PLEG) too.
    let mut events = c
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let t = Instant::now();
    let st = b.terminate().expect("berthd did not exit on SIGTERM");
    assert!(st.success(), "{st:?}: {}", b.log());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(b.log().contains("shutting down"), "{}", b.log());
    // The stream ends with the daemon instead of holding it up.
    let end = tokio::time::timeout(Duration::from_secs(5), events.message()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
    let log = b.logs().join("live/logger.log");
    let len = log_len(&log);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(log_len(&log) > len, "the logger stopped with berthd");

    b.spawn();
    let mut c = b.rt().await;
    let after = snapshot(&mut c).await;
    assert_eq!(after, before);
    assert_eq!(status(&mut c, &logger).await.state, ContainerRunning as i32);
    assert_eq!(status(&mut c, &idle).await.state, ContainerCreated as i32);
    let q = status(&mut c, &quit).await;
    assert_eq!(
        (q.state, q.exit_code, q.reason.as_str()),
        (ContainerExited as i32, 3, "Error")
    );
    let s = status(&mut c, &ids2[0]).await;
    assert_eq!((s.state, s.exit_code), (ContainerExited as i32, 137));
    // Still logging, still manageable: exec, start the created one.
    let len = log_len(&log);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(log_len(&log) > len);
    let tail = std::fs::read_to_string(&log).unwrap();
    assert!(
        tail.lines().last().unwrap().contains("stdout F tick"),
        "{tail}"
    );
    let (out, code) = sh(&mut c, &logger, "echo alive").await;
    assert_eq!((out.as_str(), code), ("alive\n", 0));
    start(&mut c, &idle).await;
    assert_eq!(status(&mut c, &idle).await.state, ContainerRunning as i32);

    // A call in flight at SIGTERM is finished and answered before berthd
    // exits: a StopContainer that has to wait out its 2 s timeout.
    wait_for_text(&b.logs().join("live/stubborn.log"), "ready").await;
    let stop = {
        let mut c = c.clone();
        let id = stubborn.clone();
        tokio::spawn(async move {
            c.stop_container(cri::StopContainerRequest {
                container_id: id,
                timeout: 2,
            })
            .await
        })
    };
    wait_for_text(&b.logs().join("live/stubborn.log"), "got TERM").await;
    let t = Instant::now();
    let st = b.terminate().expect("berthd did not exit on SIGTERM");
    assert!(st.success(), "{st:?}");
    assert!(
        t.elapsed() > Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    stop.await.unwrap().unwrap();
    b.spawn();
    let mut c = b.rt().await;
    let s = status(&mut c, &stubborn).await;
    assert_eq!((s.state, s.exit_code), (ContainerExited as i32, 137));

    for p in [&p1, &p2] {
        remove_pod(&mut c, p).await;
    }
    assert_eq!(b.leaks(), Vec::<String>::new());
}

// ---------------------------------------------------------------------
// 6. A kubelet-supplied cgroup parent

/// The container's init as the host sees it (verbose ContainerStatus).
async fn host_pid(c: &mut Rt, id: &str) -> u32 {
    let r = c
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    info["pid"].as_u64().unwrap() as u32
}

/// Every mounted hierarchy's directory for cgroup `path`.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(path.trim_start_matches('/')))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_cgroup_parent_holds_the_containers_and_is_emptied_with_the_pod() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let uid = berth_testutil::random_suffix();
    // Only under this berthd's own parent (the harness removes it).
    let kubepods = format!("{}/kubepods", b.cgroup_parent);
    let parent = format!("{kubepods}/pod{uid}");
    let mut cfg = pod_config("cg", &b.logs());
    cfg.linux = Some(cri::LinuxPodSandboxConfig {
        cgroup_parent: parent.clone(),
        ..Default::default()
    });
    let (pod, ids) = run_pod(
        &mut c,
        cfg,
        vec![
            ctr_config("a", &["sleep", "4242"]),
            ctr_config("b", &["sleep", "4343"]),
        ],
    )
    .await;
    for (id, arg) in ids.iter().zip(["4242", "4343"]) {
        let pid = host_pid(&mut c, id).await;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert_eq!(String::from_utf8_lossy(&cmdline), format!("sleep\0{arg}\0"));
        // From the host (inside, its cgroup namespace shows "/").
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let want = format!("{parent}/{id}");
        for ctrl in ["memory", "pids", "cpu", "cpuacct", "devices", "freezer"] {
            let line = cg.lines().find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|cs| cs.split(',').any(|x| x == ctrl))
            });
            let l = line.unwrap_or_else(|| panic!("no {ctrl} line: {cg}"));
            assert_eq!(l.split(':').nth(2), Some(want.as_str()), "{ctrl}: {cg}");
        }
        let procs = Path::new("/sys/fs/cgroup/memory")
            .join(want.trim_start_matches('/'))
            .join("cgroup.procs");
        let procs = std::fs::read_to_string(&procs).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    }
    // The kubelet's pod stats come from that parent.
    let st = c
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .linux
        .unwrap();
    assert!(st.process.unwrap().process_count.unwrap().value >= 2);
    assert!(st.memory.unwrap().working_set_bytes.is_some());

    remove_pod(&mut c, &pod).await;
    for id in &ids {
        for d in cgroup_dirs(&format!("{parent}/{id}")) {
            assert!(!d.exists(), "{} left", d.display());
        }
    }
    // The pod cgroup is the kubelet's to remove: empty, so it can.
    for p in [&parent, &kubepods] {
        for d in cgroup_dirs(p).into_iter().filter(|d| d.is_dir()) {
            std::fs::remove_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
    }
    assert_eq!(b.leaks(), Vec::<String>::new());
}

// ---------------------------------------------------------------------
// 7. Host network, IPC and PID

const NS_SCRIPT: &str = "for n in net ipc pid uts; do echo $n $(readlink /proc/self/ns/$n); done";

async fn container_ns(c: &mut Rt, id: &str) -> BTreeMap<String, String> {
    let (out, code) = sh(c, id, NS_SCRIPT).await;
    assert_eq!(code, 0, "{out}");
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_ipc_and_pid_pods_share_the_nodes_namespaces() {
    use cri::NamespaceMode::Node;
    let b = Berthd::start();
    let mut c = b.rt().await;
    // The test runs in the node's namespaces (PID 1 here may not).
    let host: BTreeMap<String, String> = ["net", "ipc", "pid", "uts"]
        .iter()
        .map(|k| (k.to_string(), own_ns(k)))
        .collect();
    let node_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let mut all = Vec::new();
    for (name, o, shared) in [
        (
            "hostnet",
            cri::NamespaceOption {
                network: Node as i32,
                ..Default::default()
            },
            // The pod's UTS namespace goes with its network (the node's name).
            &["net", "uts"][..],
        ),
        (
            "hostipc",
            cri::NamespaceOption {
                ipc: Node as i32,
                ..Default::default()
            },
            &["ipc"][..],
        ),
        (
            "hostpid",
            cri::NamespaceOption {
                pid: Node as i32,
                ..Default::default()
            },
            &["pid"][..],
        ),
    ] {
        let mut cfg = with_namespaces(pod_config(name, &b.logs()), o);
        if name == "hostnet" {
            // As the kubelet sends it for hostNetwork pods.
            cfg.hostname.clear();
        }
        let (pod, ids) = run_pod(&mut c, cfg, vec![ctr_config("s", &["sleep", "1000"])]).await;
        let ns = container_ns(&mut c, &ids[0]).await;
        for k in ["net", "ipc", "pid", "uts"] {
            if shared.contains(&k) {
                assert_eq!(ns[k], host[k], "{name}: {k}");
            } else {
                assert_ne!(ns[k], host[k], "{name}: {k}");
            }
        }
        let st = c
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        let opts = st.linux.unwrap().namespaces.unwrap().options.unwrap();
        let ip = st.network.unwrap().ip;
        match name {
            "hostnet" => {
                assert_eq!(opts.network, Node as i32);
                // The node's interfaces (this test's bridge among them), its
                // hostname, and no pod IP or veth from CNI.
                let (links, _) = sh(&mut c, &ids[0], "ip -o link show").await;
                assert!(links.contains(&format!(": {}:", b.bridge)), "{links}");
                let (h, _) = sh(&mut c, &ids[0], "hostname").await;
                assert_eq!(h.trim(), node_hostname);
                assert_eq!(ip, "");
                let leaks = b.leaks();
                assert!(
                    !leaks
                        .iter()
                        .any(|l| l.starts_with("veth ") || l.starts_with("IP ")),
                    "{leaks:?}"
                );
            }
            "hostipc" => {
                assert_eq!(opts.ipc, Node as i32);
                // A System V segment made on the node is seen inside.
                let o = Command::new("ipcmk").args(["-M", "4096"]).output().unwrap();
                let out = String::from_utf8_lossy(&o.stdout).to_string();
                let shmid = out.split_whitespace().last().unwrap().to_string();
                assert!(o.status.success() && shmid.parse::<u32>().is_ok(), "{out}");
                let (seen, _) = sh(&mut c, &ids[0], "cat /proc/sysvipc/shm").await;
                let _ = Command::new("ipcrm").args(["-m", &shmid]).status();
                assert!(
                    seen.lines()
                        .skip(1)
                        .any(|l| l.split_whitespace().nth(1) == Some(shmid.as_str())),
                    "{shmid} not in {seen}"
                );
                assert!(ip.starts_with(&b.subnet_prefix), "{ip}");
            }
            _ => {
                assert_eq!(opts.pid, Node as i32);
                // The node's processes: this test's own among them.
                let me = std::process::id();
                let (_, code) = sh(&mut c, &ids[0], &format!("test -d /proc/{me}")).await;
                assert_eq!(code, 0);
                let (comm, _) = sh(&mut c, &ids[0], &format!("cat /proc/{me}/comm")).await;
                let mine = std::fs::read_to_string("/proc/self/comm").unwrap();
                assert_eq!(comm, mine);
            }
        }
        all.push(pod);
    }
    for p in &all {
        remove_pod(&mut c, p).await;
    }
    assert!(pods(&mut c, None).await.is_empty());
    assert_eq!(b.leaks(), Vec::<String>::new());
}

// ---------------------------------------------------------------------
// 8. Concurrent requests on one pod

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_one_pod_are_serialised() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    for round in 0..3 {
        let pod = run_pod_with(&mut c, pod_config(&format!("busy{round}"), &b.logs())).await;
        // Ten distinct names and three of one name, all at once, each on
        // its own connection.
        let mut tasks = Vec::new();
        for name in (0..10)
            .map(|i| format!("c{i}"))
            .chain((0..3).map(|_| "dup".to_string()))
        {
            let sock = b.socket.clone();
            let pod = pod.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = RuntimeServiceClient::new(channel(&sock).await);
                let r = c
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: pod,
                        config: Some(ctr_config(&name, &["sleep", "1000"])),
                        sandbox_config: None,
                    })
                    .await;
                (name, r.map(|r| r.into_inner().container_id))
            }));
        }
        let mut made = BTreeMap::new();
        let mut dup_refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                (name, Ok(id)) => assert!(made.insert(id, name).is_none()),
                (name, Err(e)) => {
                    assert_eq!(name, "dup", "{e:?}");
                    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
                    assert!(e.message().contains("already exists"), "{e:?}");
                    dup_refused += 1;
                }
            }
        }
        assert_eq!((made.len(), dup_refused), (11, 2), "{made:?}");
        let listed: BTreeMap<String, String> = containers(&mut c, ctr_filter("", &pod, None, &[]))
            .await
            .into_iter()
            .map(|x| (x.id, x.metadata.unwrap().name))
            .collect();
        assert_eq!(listed, made);
        // Started all at once too.
        let starts: Vec<_> = made
            .keys()
            .map(|id| {
                let mut c = c.clone();
                let id = id.clone();
                tokio::spawn(async move { start(&mut c, &id).await })
            })
            .collect();
        for s in starts {
            s.await.unwrap();
        }
        let running = ctr_filter("", &pod, Some(cri::ContainerState::ContainerRunning), &[]);
        assert_eq!(container_ids(&mut c, running).await.len(), 11);

        // Stop, remove and reads of the same pod at once: stop and remove
        // succeed whatever their order; the reads see the pod whole or gone.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (mut c, pod, done) = (c.clone(), pod.clone(), done.clone());
            let ids: Vec<String> = made.keys().cloned().collect();
            tokio::spawn(async move {
                let mut n = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) || n < 3 {
                    let _ = c
                        .list_containers(cri::ListContainersRequest { filter: None })
                        .await
                        .unwrap();
                    let _ = c
                        .list_containers(cri::ListContainersRequest {
                            filter: ctr_filter("", &pod, None, &[]),
                        })
                        .await
                        .unwrap();
                    for id in ids.iter().step_by(4) {
                        match c
                            .container_status(cri::ContainerStatusRequest {
                                container_id: id.clone(),
                                verbose: false,
                            })
                            .await
                        {
                            Ok(_) => {}
                            Err(e) => assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}"),
                        }
                    }
                    n += 1;
                }
                n
            })
        };
        let (mut c1, mut c2, mut c3) = (c.clone(), c.clone(), c.clone());
        let order = round;
        let (s, r, late) = tokio::join!(
            async {
                if order == 1 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                c1.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await
            },
            async {
                if order == 2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                c2.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await
            },
            // A kubelet still creating a container as the pod goes: it is
            // made and removed with the pod, or refused.
            async {
                tokio::time::sleep(Duration::from_millis(10 * order as u64)).await;
                c3.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(ctr_config("late", &["sleep", "1000"])),
                    sandbox_config: None,
                })
                .await
            },
        );
        s.unwrap();
        r.unwrap();
        if let Err(e) = late {
            assert!(
                matches!(
                    e.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ),
                "{e:?}"
            );
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(reader.await.unwrap() >= 3);

        // Nothing of the pod is listed, now or once the exit watcher (one
        // second ticks) has run.
        for _ in 0..2 {
            assert!(pods(&mut c, None).await.is_empty());
            let left = containers(&mut c, None).await;
            assert!(left.is_empty(), "{left:?}");
            assert!(container_ids(&mut c, ctr_filter("", &pod, None, &[]))
                .await
                .is_empty());
            for id in made.keys() {
                let e = c
                    .container_status(cri::ContainerStatusRequest {
                        container_id: id.clone(),
                        verbose: false,
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), tonic::Code::NotFound);
            }
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        assert_eq!(b.leaks(), Vec::<String>::new(), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_rpc_and_refused_requests() {
    let addr = format!("127.0.0.1:{}", free_port());
    let b = Berthd::start_with(Options {
        extra_toml: format!("[metrics]\naddress = {addr:?}\n"),
        ..Default::default()
    });
    let mut c = b.rt().await;
    // What a kubelet calls all the time.
    c.version(cri::VersionRequest::default()).await.unwrap();
    c.status(cri::StatusRequest { verbose: false })
        .await
        .unwrap();
    c.runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap();
    // Refused before any work: an empty id.
    let e = c
        .container_status(cri::ContainerStatusRequest {
            container_id: String::new(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let (_, body) = http_get(&addr, "/metrics");
    let m = parse_prometheus(&body);
    let get = |name: &str, op: &str| m.get(&format!("{name}{{operation=\"{op}\"}}")).copied();
    // All of them checked, then reported at once.
    let mut missing = Vec::new();
    for op in ["Version", "Status", "RuntimeConfig"] {
        if get("berth_cri_operations_total", op) != Some(1.0) {
            missing.push(format!("{op} not counted"));
        }
    }
    if get("berth_cri_operation_errors_total", "ContainerStatus") != Some(1.0) {
        missing.push("the refused ContainerStatus not counted as an error".to_string());
    }
    assert!(missing.is_empty(), "{missing:?}:\n{body}");
}
