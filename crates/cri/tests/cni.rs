//! CNI with Debian's real plugins (/usr/lib/cni) and small script plugins: every test has its own
//! conf/cache dirs, bridge (`bt` + random hex), random 10.2xx.yy.0/24 subnet, host-local data
//! dir and network namespaces, and removes them. Needs root.

use berth_cri::cni::{Bandwidth, Cni, CniConfig, PodNetwork, PortMapping};
use serde_json::{json, Value};
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

const PLUGINS: &str = "/usr/lib/cni";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// A network namespace bind-mounted onto a file: a thread unshares one and binds its own
/// `/proc/thread-self/ns/net`, then ends (the mount keeps the namespace alive).
struct NetNs {
    path: PathBuf,
    mounted: bool,
}

impl NetNs {
    fn new(path: PathBuf) -> NetNs {
        fs::File::create(&path).unwrap();
        let p = path.clone();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &p,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind mount of the netns");
        })
        .join()
        .unwrap();
        NetNs {
            path,
            mounted: true,
        }
    }

    /// `nsenter --net=<ns> args...`
    fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .args(args)
            .output()
            .unwrap()
    }

    /// `ip -j addr` inside: interface name -> its JSON.
    fn links(&self) -> Vec<Value> {
        let o = self.exec(&["ip", "-j", "addr", "show"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Unmounts and removes the file (the namespace goes with its last user).
    fn remove(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
            self.mounted = false;
        }
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One test's network: dirs in a temp dir, a bridge name and a /24.
struct Net {
    dir: tempfile::TempDir,
    bridge: String,
    /// "10.a.b"
    prefix: String,
    name: String,
}

impl Net {
    fn new() -> Net {
        let r = random_bytes::<5>();
        let dir = tempfile::tempdir().unwrap();
        for d in ["conf", "cache", "bin", "ipam"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        Net {
            dir,
            bridge: format!("bt{}", &hex(&r[..3])[..6]),
            prefix: format!("10.{}.{}", 200 + r[3] % 50, r[4]),
            name: format!("btnet-{}", hex(&r[..3])),
        }
    }

    fn cfg(&self) -> CniConfig {
        CniConfig {
            conf_dir: self.path("conf"),
            bin_dirs: vec![self.path("bin"), PLUGINS.into()],
            cache_dir: self.path("cache"),
        }
    }

    fn cni(&self) -> Cni {
        Cni::new(self.cfg())
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// bridge (host-local IPAM in our temp dir) followed by `more` plugins.
    fn bridge_conflist(&self, subnet: &str, more: &[Value]) -> Value {
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": self.bridge,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet, "gateway": format!("{}.1", self.prefix)}]],
                "dataDir": self.path("ipam"),
            }
        })];
        plugins.extend(more.iter().cloned());
        json!({"cniVersion": "1.0.0", "name": self.name, "plugins": plugins})
    }

    fn write_conf(&self, file: &str, v: &Value) -> PathBuf {
        let p = self.path("conf").join(file);
        fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p
    }

    fn subnet(&self) -> String {
        format!("{}.0/24", self.prefix)
    }

    /// A shell script plugin in our bin dir.
    fn plugin(&self, name: &str, body: &str) {
        let p = self.path("bin").join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn netns(&self, name: &str) -> NetNs {
        NetNs::new(self.path(name))
    }

    fn pod(&self, ns: &NetNs) -> PodNetwork {
        PodNetwork {
            id: format!("sb{}", hex(&random_bytes::<8>())),
            name: "web".into(),
            namespace: "default".into(),
            uid: "0b2c6a8e-1111-4d2e-9c1a-5e0f00000001".into(),
            netns: ns.path.clone(),
            ..Default::default()
        }
    }

    /// IPs host-local holds for our network (one file per address).
    fn allocated(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.path("ipam").join(&self.name)) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect()
    }

    /// Interfaces enslaved to our bridge.
    fn ports(&self) -> Vec<String> {
        let o = run("ip", &["-j", "link", "show", "master", &self.bridge]);
        if !o.status.success() {
            return Vec::new(); // no bridge
        }
        let v: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn link<'a>(links: &'a [Value], name: &str) -> &'a Value {
    links
        .iter()
        .find(|l| l["ifname"] == name)
        .unwrap_or_else(|| panic!("no {name} in {links:?}"))
}

fn is_up(l: &Value) -> bool {
    l["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

/// The host side of the pod's veth, from the bridge plugin's result.
fn host_veth(raw: &Value, bridge: &str) -> String {
    raw["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i.get("sandbox").is_none() && i["name"] != bridge)
        .and_then(|i| i["name"].as_str())
        .unwrap_or_else(|| panic!("no host veth in {raw}"))
        .to_string()
}

/// A global IPv4 address of the host on an interface other than `not_on`.
fn host_address(not_on: &str) -> Option<String> {
    let o = run("ip", &["-j", "-4", "addr", "show", "scope", "global"]);
    let links: Vec<Value> = serde_json::from_slice(&o.stdout).ok()?;
    links
        .iter()
        .filter(|l| {
            l["ifname"] != not_on && l["ifname"].as_str().is_some_and(|n| !n.starts_with("bt"))
        })
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .find_map(|a| a["local"].as_str().map(str::to_string))
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

#[test]
fn status_reports_a_missing_config_then_picks_up_one_written_later() {
    let net = Net::new();
    let cni = net.cni();
    let err = cni.status().unwrap_err();
    assert_eq!(
        err,
        format!("no network config found in {}", net.path("conf").display())
    );

    // A plugin that is not installed makes the config unusable, naming the plugin.
    net.write_conf(
        "20-x.conflist",
        &net.bridge_conflist(&net.subnet(), &[json!({"type": "bt-missing"})]),
    );
    let err = cni.status().unwrap_err();
    assert!(
        err.contains("\"bt-missing\"") && err.contains("not found"),
        "{err}"
    );

    net.write_conf("20-x.conflist", &net.bridge_conflist(&net.subnet(), &[]));
    cni.status().unwrap();

    // An invalid file sorting first is skipped (the kubelet's rule) ...
    fs::write(net.path("conf/10-bad.conf"), "{not json").unwrap();
    cni.status().unwrap();
    // ... and named when nothing valid is left.
    fs::remove_file(net.path("conf/20-x.conflist")).unwrap();
    let err = cni.status().unwrap_err();
    assert!(err.contains("10-bad.conf: invalid JSON"), "{err}");
    // A .conf holding one plugin is a network too.
    fs::write(
        net.path("conf/05-one.conf"),
        json!({"cniVersion": "0.4.0", "name": "one", "type": "bridge"}).to_string(),
    )
    .unwrap();
    cni.status().unwrap();
}

#[test]
fn two_pods_on_a_bridge_reach_each_other_and_teardown_releases_everything() {
    let net = Net::new();
    let conf = net.write_conf("10-bt.conflist", &net.bridge_conflist(&net.subnet(), &[]));
    let cni = net.cni();
    let (ns_a, ns_b) = (net.netns("a"), net.netns("b"));
    let (pod_a, pod_b) = (net.pod(&ns_a), net.pod(&ns_b));
    let a = cni.setup(&pod_a).unwrap();
    let b = cni.setup(&pod_b).unwrap();

    for (ns, res) in [(&ns_a, &a), (&ns_b, &b)] {
        assert_eq!(res.ips.len(), 1, "{:?}", res);
        let ip = res.ips[0].to_string();
        assert!(
            ip.starts_with(&format!("{}.", net.prefix)),
            "{ip} not in {}",
            net.subnet()
        );
        let links = ns.links();
        assert!(is_up(link(&links, "lo")), "lo is down: {links:?}");
        let eth0 = link(&links, "eth0");
        assert!(is_up(eth0), "eth0 is down: {eth0}");
        let addrs: Vec<&str> = eth0["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["local"].as_str())
            .collect();
        assert!(addrs.contains(&ip.as_str()), "{ip} not on eth0: {eth0}");
    }
    let mut allocated = net.allocated();
    allocated.sort();
    let mut want = vec![a.ips[0].to_string(), b.ips[0].to_string()];
    want.sort();
    assert_eq!(allocated, want);

    let ping = ns_a.exec(&["busybox", "ping", "-c1", "-W2", &b.ips[0].to_string()]);
    assert!(ping.status.success(), "a cannot ping b: {}", text(&ping));

    assert_eq!(cni.cached(&pod_a.id).unwrap().ips, a.ips);
    let mut ids = vec![pod_a.id.clone(), pod_b.id.clone()];
    ids.sort();
    assert_eq!(cni.cached_ids(), ids);
    // CHECK of the pod that joined last: the bridge plugin (without isGateway) leaves the
    // bridge's MAC to the kernel, which changes it as ports join, so an older pod's cached result
    // no longer matches (containernetworking/plugins#60).
    cni.check(&pod_b).unwrap();

    let (veth_a, veth_b) = (
        host_veth(&a.raw, &net.bridge),
        host_veth(&b.raw, &net.bridge),
    );
    assert!(link_exists(&veth_a) && link_exists(&veth_b));
    cni.teardown(&pod_a).unwrap();
    assert!(!link_exists(&veth_a), "{veth_a} left behind");
    assert_eq!(net.allocated(), vec![b.ips[0].to_string()]);
    assert!(cni.cached(&pod_a.id).is_none());
    assert!(ns_a.links().iter().all(|l| l["ifname"] != "eth0"));

    // After a "restart" with the conf dir emptied, DEL still runs the cached config.
    fs::remove_file(conf).unwrap();
    let cni = net.cni();
    assert!(cni.status().is_err());
    assert_eq!(cni.cached(&pod_b.id).unwrap().ips, b.ips);
    cni.teardown(&pod_b).unwrap();
    assert!(!link_exists(&veth_b), "{veth_b} left behind");
    assert!(net.allocated().is_empty());
    assert!(cni.cached_ids().is_empty());
    assert_eq!(net.ports(), Vec::<String>::new());
    // Again: nothing cached, nothing to do.
    cni.teardown(&pod_b).unwrap();

    // A pod whose namespace is already gone: DEL runs with an empty CNI_NETNS and the bridge
    // plugin still gives the address back.
    net.write_conf("10-bt.conflist", &net.bridge_conflist(&net.subnet(), &[]));
    let mut ns_c = net.netns("c");
    let pod_c = net.pod(&ns_c);
    let c = cni.setup(&pod_c).unwrap();
    assert_eq!(net.allocated(), vec![c.ips[0].to_string()]);
    let veth_c = host_veth(&c.raw, &net.bridge);
    ns_c.remove();
    cni.teardown(&PodNetwork {
        id: pod_c.id.clone(),
        ..Default::default()
    })
    .unwrap();
    assert!(net.allocated().is_empty());
    assert!(cni.cached_ids().is_empty());
    // The veth went with the namespace, which the kernel dismantles in the background.
    for _ in 0..100 {
        if !link_exists(&veth_c) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!link_exists(&veth_c), "{veth_c} left behind");
}

#[test]
fn a_host_port_reaches_a_server_in_the_pod() {
    let net = Net::new();
    // The bridge exists with an address of our own (no isGateway, so the plugin leaves the
    // host's ip_forward alone); the host reaches the pod subnet through it.
    let gw = format!("{}.1", net.prefix);
    for args in [
        vec!["link", "add", "name", &net.bridge, "type", "bridge"],
        vec!["addr", "add", &format!("{gw}/24"), "dev", &net.bridge],
        vec!["link", "set", &net.bridge, "up"],
    ] {
        let o = run("ip", &args);
        assert!(o.status.success(), "ip {args:?}: {}", text(&o));
    }
    let mut conf = net.bridge_conflist(
        &net.subnet(),
        &[json!({"type": "portmap", "capabilities": {"portMappings": true}})],
    );
    // The pod answers a connection to any host address through the bridge's address.
    conf["plugins"][0]["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    net.write_conf("10-bt.conflist", &conf);
    let cni = net.cni();
    let ns = net.netns("pod");
    let host_port = 20000 + u16::from_le_bytes(random_bytes::<2>()) % 20000;
    let pod = PodNetwork {
        port_mappings: vec![PortMapping {
            container_port: 80,
            host_port,
            protocol: "TCP".into(),
            host_ip: String::new(),
        }],
        ..net.pod(&ns)
    };
    let res = cni.setup(&pod).unwrap();
    let www = net.path("www");
    fs::create_dir(&www).unwrap();
    fs::write(www.join("index.html"), "hello from the pod\n").unwrap();
    let mut httpd = Command::new("nsenter")
        .arg(format!("--net={}", ns.path.display()))
        .args(["busybox", "httpd", "-f", "-p", "80", "-h"])
        .arg(&www)
        .spawn()
        .unwrap();
    let get = |addr: &str| -> std::io::Result<String> {
        let to = Duration::from_secs(5);
        let mut s =
            TcpStream::connect_timeout(&(addr.parse::<IpAddr>().unwrap(), host_port).into(), to)?;
        s.set_read_timeout(Some(to))?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    // httpd needs a moment to listen.
    let mut reply = get(&gw);
    for _ in 0..100 {
        if reply.as_ref().is_ok_and(|b| b.contains("hello")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        reply = get(&gw);
    }
    // Also through loopback (portmap marks it for masquerading and sets route_localnet on the
    // bridge) and the host's own address on another interface, if it has one.
    let mut addrs = vec![(gw.clone(), reply), ("127.0.0.1".into(), get("127.0.0.1"))];
    if let Some(host_ip) = host_address(&net.bridge) {
        let r = get(&host_ip);
        addrs.push((host_ip, r));
    }
    let _ = httpd.kill();
    let _ = httpd.wait();
    for (addr, reply) in addrs {
        let reply =
            reply.unwrap_or_else(|e| panic!("{addr}:{host_port} -> {}:80: {e}", res.ips[0]));
        assert!(reply.contains("hello from the pod"), "{addr}: {reply}");
    }

    let rules = run("iptables", &["-t", "nat", "-S"]);
    assert!(String::from_utf8_lossy(&rules.stdout).contains(&pod.id));
    cni.teardown(&pod).unwrap();
    let rules = run("iptables", &["-t", "nat", "-S"]);
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains(&pod.id),
        "{}",
        text(&rules)
    );
    assert!(net.allocated().is_empty());
}

#[test]
fn the_bandwidth_plugin_shapes_the_pod_from_runtime_config() {
    let net = Net::new();
    net.write_conf(
        "10-bt.conflist",
        &net.bridge_conflist(
            &net.subnet(),
            &[json!({"type": "bandwidth", "capabilities": {"bandwidth": true}})],
        ),
    );
    let cni = net.cni();
    let ns = net.netns("pod");
    let pod = PodNetwork {
        bandwidth: Some(Bandwidth {
            ingress_rate: 8_000_000,
            ingress_burst: 800_000,
            egress_rate: 16_000_000,
            // berthd's (and containerd's) "no burst limit" for the kubernetes.io annotations.
            egress_burst: u32::MAX as u64,
        }),
        ..net.pod(&ns)
    };
    let res = cni.setup(&pod).unwrap();
    let veth = host_veth(&res.raw, &net.bridge);
    // Ingress (towards the pod) is a tbf on the host veth; egress goes through an ifb device
    // that the plugin adds to the result.
    let qdisc = run("tc", &["qdisc", "show", "dev", &veth]);
    let qdisc = String::from_utf8_lossy(&qdisc.stdout).to_string();
    assert!(
        qdisc.contains("tbf") && qdisc.contains("rate 8Mbit"),
        "{qdisc}"
    );
    let ifb = res.raw["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .find(|n| n.starts_with("bwp"))
        .unwrap_or_else(|| panic!("no ifb in {}", res.raw))
        .to_string();
    let qdisc = run("tc", &["qdisc", "show", "dev", &ifb]);
    let qdisc = String::from_utf8_lossy(&qdisc.stdout).to_string();
    assert!(qdisc.contains("rate 16Mbit"), "{qdisc}");
    cni.teardown(&pod).unwrap();
    assert!(!link_exists(&ifb), "{ifb} left behind");
    assert!(!link_exists(&veth), "{veth} left behind");
    assert!(net.allocated().is_empty());
}

#[test]
fn a_failing_plugin_is_named_and_leaves_nothing_behind() {
    let net = Net::new();
    net.plugin(
        "bt-fail",
        r#"cat >/dev/null
[ "$CNI_COMMAND" = DEL ] && exit 0
echo '{"cniVersion":"1.0.0","code":7,"msg":"boom","details":"it broke"}'
exit 1
"#,
    );
    let conf = net.write_conf(
        "10-bt.conflist",
        &net.bridge_conflist(&net.subnet(), &[json!({"type": "bt-fail"})]),
    );
    let cni = net.cni();
    let ns = net.netns("pod");
    let pod = net.pod(&ns);
    let err = cni.setup(&pod).unwrap_err().to_string();
    assert!(
        err.contains("\"bt-fail\" failed ADD")
            && err.contains("with code 7: boom: it broke")
            && err.contains(&conf.display().to_string()),
        "{err}"
    );
    // The bridge plugin had succeeded: its DEL gave the address back and removed the veth.
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    assert_eq!(net.ports(), Vec::<String>::new());
    assert!(ns.links().iter().all(|l| l["ifname"] != "eth0"));
    assert!(cni.cached_ids().is_empty() && cni.cached(&pod.id).is_none());
    assert_eq!(fs::read_dir(net.path("cache")).unwrap().count(), 0);

    // A bad config: the IPAM error comes through the plugin that delegated to it.
    net.write_conf("10-bt.conflist", &net.bridge_conflist("10.300.0.0/24", &[]));
    let err = cni.setup(&pod).unwrap_err().to_string();
    assert!(
        err.contains("\"bridge\" failed ADD") && err.contains("10.300.0.0/24"),
        "{err}"
    );
    assert!(net.allocated().is_empty());
    assert!(ns.links().iter().all(|l| l["ifname"] != "eth0"));
    assert!(cni.cached_ids().is_empty());
}

/// A plugin that records its environment and stdin per command and prints a result.
const DUMP: &str = r#"n=$(basename "$0")
d=$(dirname "$0")/../dump
env > "$d/$n.$CNI_COMMAND.env"
cat > "$d/$n.$CNI_COMMAND.stdin"
echo "$n $CNI_COMMAND" >> "$d/log"
case $n in bt-dump) ip=10.99.0.5;; *) ip=10.99.0.6;; esac
[ "$CNI_COMMAND" = ADD ] && printf '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"%s"}],"ips":[{"address":"%s/24","interface":0}]}' "$CNI_NETNS" "$ip"
exit 0
"#;

#[test]
fn plugins_get_the_spec_environment_runtime_config_and_previous_result() {
    let net = Net::new();
    fs::create_dir(net.path("dump")).unwrap();
    net.plugin("bt-dump", DUMP);
    net.plugin("bt-dump2", DUMP);
    net.write_conf(
        "10-bt.conflist",
        &json!({"cniVersion": "1.0.0", "name": "dumpnet", "plugins": [
            {"type": "bt-dump", "capabilities": {"portMappings": true, "bandwidth": true}, "foo": "bar"},
            {"type": "bt-dump2", "capabilities": {"ips": true}},
        ]}),
    );
    let cni = net.cni();
    let mut ns = net.netns("pod");
    let pm = |c, h, p: &str, ip: &str| PortMapping {
        container_port: c,
        host_port: h,
        protocol: p.into(),
        host_ip: ip.into(),
    };
    let pod = PodNetwork {
        port_mappings: vec![
            pm(80, 8080, "tcp", ""),
            pm(53, 5353, "UDP", "127.0.0.1"),
            pm(9000, 0, "tcp", ""),
        ],
        bandwidth: Some(Bandwidth {
            ingress_rate: 1_000_000,
            ingress_burst: 2_000_000,
            egress_rate: 3_000_000,
            egress_burst: 4_000_000,
        }),
        ..net.pod(&ns)
    };
    let res = cni.setup(&pod).unwrap();
    assert_eq!(res.ips, vec!["10.99.0.6".parse::<IpAddr>().unwrap()]);
    assert!(is_up(link(&ns.links(), "lo")));

    let dump = |f: &str| fs::read_to_string(net.path("dump").join(f)).unwrap();
    let env = dump("bt-dump.ADD.env");
    let cni_path = format!("{}:{PLUGINS}", net.path("bin").display());
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.id, pod.uid
    );
    for want in [
        "CNI_COMMAND=ADD".to_string(),
        format!("CNI_CONTAINERID={}", pod.id),
        format!("CNI_NETNS={}", ns.path.display()),
        "CNI_IFNAME=eth0".into(),
        format!("CNI_PATH={cni_path}"),
        format!("CNI_ARGS={args}"),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    let first: Value = serde_json::from_str(&dump("bt-dump.ADD.stdin")).unwrap();
    assert_eq!(
        first,
        json!({
            "type": "bt-dump", "capabilities": {"portMappings": true, "bandwidth": true}, "foo": "bar",
            "name": "dumpnet", "cniVersion": "1.0.0",
            "runtimeConfig": {
                "portMappings": [
                    {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                    {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
                ],
                "bandwidth": {"ingressRate": 1000000, "ingressBurst": 2000000, "egressRate": 3000000, "egressBurst": 4000000}
            }
        })
    );
    let second: Value = serde_json::from_str(&dump("bt-dump2.ADD.stdin")).unwrap();
    assert!(second.get("runtimeConfig").is_none(), "{second}");
    assert_eq!(second["prevResult"]["ips"][0]["address"], "10.99.0.5/24");

    cni.check(&pod).unwrap();
    let check: Value = serde_json::from_str(&dump("bt-dump.CHECK.stdin")).unwrap();
    assert_eq!(check["prevResult"], res.raw);

    // DEL after the namespace is gone: CNI_NETNS is empty, the cached result is prevResult.
    ns.remove();
    cni.teardown(&PodNetwork {
        id: pod.id.clone(),
        ..Default::default()
    })
    .unwrap();
    let del_env = dump("bt-dump.DEL.env");
    assert!(del_env.lines().any(|l| l == "CNI_NETNS="), "{del_env}");
    assert!(
        del_env.lines().any(|l| l == format!("CNI_ARGS={args}")),
        "{del_env}"
    );
    let del: Value = serde_json::from_str(&dump("bt-dump.DEL.stdin")).unwrap();
    assert_eq!(del["prevResult"], res.raw);
    assert_eq!(del["runtimeConfig"], first["runtimeConfig"]);
    assert_eq!(
        dump("log").lines().collect::<Vec<_>>(),
        [
            "bt-dump ADD",
            "bt-dump2 ADD",
            "bt-dump CHECK",
            "bt-dump2 CHECK",
            "bt-dump2 DEL",
            "bt-dump DEL"
        ]
    );
    assert!(cni.cached_ids().is_empty());
}

#[test]
fn hung_or_chatty_plugins_are_stopped() {
    let net = Net::new();
    net.plugin(
        "bt-hang",
        "[ \"$CNI_COMMAND\" = DEL ] && exit 0\nexec sleep 30\n",
    );
    net.plugin(
        "bt-chatty",
        "[ \"$CNI_COMMAND\" = DEL ] && exit 0\nhead -c 2000000 /dev/zero\n",
    );
    let cni = net.cni().with_timeout(Duration::from_secs(1));
    let ns = net.netns("pod");
    let pod = net.pod(&ns);

    net.write_conf(
        "10-bt.conf",
        &json!({"cniVersion": "1.0.0", "name": "n", "type": "bt-hang"}),
    );
    let err = cni.setup(&pod).unwrap_err().to_string();
    assert!(
        err.contains("\"bt-hang\" ADD") && err.contains("was killed"),
        "{err}"
    );

    net.write_conf(
        "10-bt.conf",
        &json!({"cniVersion": "1.0.0", "name": "n", "type": "bt-chatty"}),
    );
    // The default timeout: only the size limit may stop this one, however loaded the machine.
    let cni = net.cni();
    let err = cni.setup(&pod).unwrap_err().to_string();
    assert!(
        err.contains("\"bt-chatty\" ADD") && err.contains("larger than 1048576 bytes"),
        "{err}"
    );
    assert!(cni.cached_ids().is_empty());
}

#[test]
fn a_config_larger_than_a_pipe_reaches_the_plugin_whole() {
    let net = Net::new();
    net.plugin(
        "bt-big-in",
        &format!(
            "cat > {}/stdin.$CNI_COMMAND\n[ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.99.0.7/24\"}}]}}'\nexit 0\n",
            net.dir.path().display()
        ),
    );
    // 512 KiB of config: the plugin's stdin pipe (64 KiB) fills while it reads.
    let blob = "x".repeat(512 << 10);
    net.write_conf(
        "10-bt.conf",
        &json!({"cniVersion": "1.0.0", "name": "n", "type": "bt-big-in", "blob": blob}),
    );
    let cni = net.cni();
    let ns = net.netns("pod");
    let pod = net.pod(&ns);
    let res = cni.setup(&pod).unwrap();
    assert_eq!(res.ips, vec!["10.99.0.7".parse::<IpAddr>().unwrap()]);
    let got: Value = serde_json::from_slice(&fs::read(net.path("stdin.ADD")).unwrap()).unwrap();
    assert_eq!(got["blob"].as_str().map(str::len), Some(blob.len()));
    cni.teardown(&pod).unwrap();
}

#[test]
fn teardown_of_an_unknown_sandbox_is_ok_and_bad_requests_name_the_field() {
    let net = Net::new();
    net.write_conf("10-bt.conflist", &net.bridge_conflist(&net.subnet(), &[]));
    let cni = net.cni();
    cni.teardown(&PodNetwork {
        id: "never-set-up".into(),
        ..Default::default()
    })
    .unwrap();
    // What a crash in the middle of a cache write leaves is no sandbox, and is cleaned up.
    let stale = net.path("cache/.sb1.tmp-999999999-0");
    fs::write(&stale, "{").unwrap();
    assert!(cni.cached_ids().is_empty());
    assert!(!stale.exists());
    assert!(cni.cached("never-set-up").is_none());
    let err = cni.check(&PodNetwork {
        id: "never-set-up".into(),
        ..Default::default()
    });
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("no network is set up"));

    let err = cni.teardown(&PodNetwork {
        id: "../etc".into(),
        ..Default::default()
    });
    assert!(err.unwrap_err().to_string().contains(": id:"));
    let not_ns = net.path("not-a-netns");
    fs::write(&not_ns, "").unwrap();
    let err = cni
        .setup(&PodNetwork {
            id: "x1".into(),
            netns: not_ns,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("netns:"), "{err}");
    assert!(net.allocated().is_empty() && cni.cached_ids().is_empty());
}
