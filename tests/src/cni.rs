//! The node's pod network: a Linux bridge with no uplink, the CNI config containerd reads
//! (bridge + host-local + portmap; containerd adds loopback itself), firewall rules that keep
//! pod traffic on the bridge, and the iptables cleanup that `down` runs.
//!
//! Addresses: the bridge is the node (198.18.0.1, the kubelet's node IP and the apiserver's
//! address), pods get 198.18.0.0/16 from host-local, Services 198.19.0.0/16. The service
//! range is routed onto the bridge too, so a ClusterIP without endpoints dies on the bridge
//! instead of taking the default route out of the machine. Forwarding between the bridge and
//! any other interface is dropped.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::Error;

/// The bridge pods attach to.
pub const BRIDGE: &str = "wasmrt0";
/// The node's address on the bridge (pods' gateway).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The CNI network name.
pub const NETWORK: &str = "wasmruntime";
/// Our filter chain, jumped to first from FORWARD.
pub const FORWARD_CHAIN: &str = "WASMRT-FORWARD";
/// Chain name prefixes our cluster creates (kube-proxy and kubelet: `KUBE-`, CNI portmap:
/// `CNI-`, ours: `WASMRT-`).
pub const CHAIN_PREFIXES: [&str; 3] = ["KUBE-", "CNI-", "WASMRT-"];
/// Tables searched for those chains.
const TABLES: [&str; 4] = ["filter", "nat", "mangle", "raw"];
/// iptables front ends: IPv4 and IPv6 (kube-proxy programs both when the host has IPv6).
pub const IPTABLES: [&str; 2] = ["iptables", "ip6tables"];

/// The CNI conflist: bridge (gateway, hairpin, no masquerade) with host-local addresses from
/// `pod_cidr`, then portmap for hostPorts.
pub fn conflist(pod_cidr: &str, ipam_dir: &Path) -> String {
    let json = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr, "gateway": NODE_IP.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir.display().to_string(),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    serde_json::to_string_pretty(&json).expect("static JSON")
}

fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::io(Path::new(program), e))?;
    if !out.status.success() {
        return Err(Error::io(
            Path::new(program),
            std::io::Error::other(format!(
                "`{program} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the bridge exists.
pub fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// Creates the bridge with the node address, routes the service range onto it and installs
/// the forwarding rules. The CNI bridge plugin finds the bridge and its address in place.
pub fn setup(service_cidr: &str) -> Result<(), Error> {
    if !bridge_exists() {
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    }
    // No IPv6 on our bridge: nothing of the cluster uses it.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6"),
        "1",
    );
    let addr = format!("{NODE_IP}/16");
    let shown = run("ip", &["-4", "addr", "show", "dev", BRIDGE])?;
    if !shown.contains(&format!("inet {addr}")) {
        run("ip", &["addr", "add", &addr, "dev", BRIDGE])?;
    }
    run("ip", &["link", "set", BRIDGE, "up"])?;
    run(
        "ip",
        &[
            "route",
            "replace",
            service_cidr,
            "dev",
            BRIDGE,
            "src",
            &NODE_IP.to_string(),
        ],
    )?;
    let w = ["-w", "5"];
    let ipt = |args: &[&str]| run("iptables", &[&w[..], args].concat());
    if ipt(&["-t", "filter", "-S", FORWARD_CHAIN]).is_err() {
        ipt(&["-t", "filter", "-N", FORWARD_CHAIN])?;
    }
    ipt(&["-t", "filter", "-F", FORWARD_CHAIN])?;
    ipt(&[
        "-t",
        "filter",
        "-A",
        FORWARD_CHAIN,
        "-i",
        BRIDGE,
        "!",
        "-o",
        BRIDGE,
        "-m",
        "comment",
        "--comment",
        "wasmruntime: pods never leave the bridge",
        "-j",
        "DROP",
    ])?;
    ipt(&[
        "-t",
        "filter",
        "-A",
        FORWARD_CHAIN,
        "!",
        "-i",
        BRIDGE,
        "-o",
        BRIDGE,
        "-m",
        "comment",
        "--comment",
        "wasmruntime: nothing outside reaches the pods",
        "-j",
        "DROP",
    ])?;
    if ipt(&["-t", "filter", "-C", "FORWARD", "-j", FORWARD_CHAIN]).is_err() {
        ipt(&["-t", "filter", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN])?;
    }
    Ok(())
}

/// Deletes the bridge (its address and routes go with it).
pub fn delete_bridge() -> Result<(), Error> {
    if bridge_exists() {
        run("ip", &["link", "del", BRIDGE])?;
    }
    Ok(())
}

/// Chains of each `<front end>/<table>` whose names have one of [`CHAIN_PREFIXES`].
pub fn our_chains() -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for front in IPTABLES {
        for table in TABLES {
            let Ok(text) = run(front, &["-w", "5", "-t", table, "-S"]) else {
                continue;
            };
            for line in text.lines() {
                if let Some(chain) = line.strip_prefix("-N ")
                    && CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
                {
                    found.push((front.to_string(), table.to_string(), chain.to_string()));
                }
            }
        }
    }
    found
}

/// The (front end, table) pairs that exist (`iptables-save` headers). With the nftables
/// back end a table appears on first use and stays, empty, after its chains are gone.
pub fn tables() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for front in IPTABLES {
        let save = format!("{front}-save");
        if let Ok(text) = run(&save, &[]) {
            for line in text.lines() {
                if let Some(t) = line.strip_prefix('*') {
                    found.push((front.to_string(), t.trim().to_string()));
                }
            }
        }
    }
    found
}

/// Deletes tables that hold nothing but empty built-in chains, through `nft` (the
/// nftables back end's tables cannot be deleted with iptables). Returns those it could not
/// delete because `nft` is missing.
pub fn delete_empty_tables(tables: &[(String, String)]) -> Vec<String> {
    let mut left = Vec::new();
    for (front, table) in tables {
        let Ok(text) = run(front, &["-w", "5", "-t", table, "-S"]) else {
            continue;
        };
        if !text.lines().all(|l| l.starts_with("-P ")) {
            continue;
        }
        let family = if front == "ip6tables" { "ip6" } else { "ip" };
        if run("nft", &["delete", "table", family, table]).is_err() {
            left.push(format!("{family} {table}"));
        }
    }
    left
}

/// Splits one `iptables -S` line into arguments (double quotes group, `\"` escapes).
pub fn split_rule(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut have = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    have = true;
                }
            }
            '"' => {
                in_quotes = !in_quotes;
                have = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if have {
                    args.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                cur.push(c);
                have = true;
            }
        }
    }
    if have {
        args.push(cur);
    }
    args
}

/// Removes every chain in `remove` (front end, table, chain): first the rules elsewhere that
/// jump to them, then their contents, then the chains. Returns what it could not do.
pub fn remove_chains(remove: &[(String, String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for front in IPTABLES {
        for table in TABLES {
            let ours: Vec<&str> = remove
                .iter()
                .filter(|(f, t, _)| f == front && t == table)
                .map(|(_, _, c)| c.as_str())
                .collect();
            if ours.is_empty() {
                continue;
            }
            let Ok(text) = run(front, &["-w", "5", "-t", table, "-S"]) else {
                continue;
            };
            for line in text.lines() {
                let args = split_rule(line);
                if args.first().map(String::as_str) != Some("-A") || args.len() < 2 {
                    continue;
                }
                if ours.contains(&args[1].as_str()) {
                    continue;
                }
                let jumps_to_ours = args
                    .windows(2)
                    .any(|w| (w[0] == "-j" || w[0] == "-g") && ours.contains(&w[1].as_str()));
                if jumps_to_ours {
                    let mut del: Vec<&str> = vec!["-w", "5", "-t", table, "-D"];
                    del.extend(args[1..].iter().map(String::as_str));
                    if let Err(e) = run(front, &del) {
                        problems.push(e.to_string());
                    }
                }
            }
            for chain in &ours {
                let _ = run(front, &["-w", "5", "-t", table, "-F", chain]);
            }
            for chain in &ours {
                if let Err(e) = run(front, &["-w", "5", "-t", table, "-X", chain]) {
                    problems.push(e.to_string());
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_split_like_a_shell_would() {
        assert_eq!(
            split_rule(
                r#"-A KUBE-SERVICES -d 198.19.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -j KUBE-SVC-NPX"#
            ),
            [
                "-A",
                "KUBE-SERVICES",
                "-d",
                "198.19.0.1/32",
                "-p",
                "tcp",
                "-m",
                "comment",
                "--comment",
                "default/kubernetes:https cluster IP",
                "-j",
                "KUBE-SVC-NPX"
            ]
        );
        assert_eq!(split_rule(r#"-A X --comment "a \"b\"""#)[3], r#"a "b""#);
    }

    #[test]
    fn the_conflist_names_our_bridge_and_range() {
        let text = conflist("198.18.0.0/16", Path::new("/x/ipam"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["plugins"][0]["bridge"], BRIDGE);
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "198.18.0.0/16"
        );
    }
}
