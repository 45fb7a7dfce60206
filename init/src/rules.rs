//! [`Settings`] → the nftables JSON transaction that installs a pod's interception rules.
//!
//! Two NAT chains in table `inet weft` (both address families in one table), and two raw
//! chains for the proxy's deliveries that keep the client's address:
//!
//! ```text
//! notrack_prerouting (hook prerouting, prio raw)
//!   meta mark 0x5747            notrack        a kept-source delivery arriving on loopback
//! notrack_output     (hook output, prio raw)
//!   meta mark 0x5747            notrack        the same delivery leaving the proxy, and the
//!                                              app's side of it (its socket inherits the mark)
//! output      (hook output, prio dstnat)       the pod's own connections
//!   meta mark 0x5746            return         the proxy's sockets, opened in the pod's netns
//!   oifname "lo"                return         the pod talking to itself
//!   meta l4proto != tcp         return         UDP (DNS included) is never intercepted
//!   tcp flags & (fin|syn|rst|ack) != syn  return   not a connection's opening SYN (below)
//!   tcp dport 53                return         DNS over TCP is left alone too
//!   tcp dport {excluded}        return         weft.dev/exclude-outbound-ports
//!   ip/ip6 daddr {excluded}     return         weft.dev/exclude-outbound-cidrs
//!   redirect to :15001                         everything else → the proxy's outbound listener
//! prerouting  (hook prerouting, prio dstnat)   connections to the pod
//!   iifname "lo"                return         the proxy delivering to the app on loopback
//!   meta l4proto != tcp         return
//!   tcp flags & (fin|syn|rst|ack) != syn  return
//!   tcp dport {15008, proxy ports} return      HBONE from other proxies is taken as it is
//!   tcp dport {excluded}        return         weft.dev/exclude-inbound-ports
//!   ip/ip6 saddr {probe sources} return        kubelet probes from the node
//!   redirect to :15006                         everything else → the proxy's inbound listener
//! ```
//!
//! NAT chains see only the first packet of a connection; conntrack carries the decision for the
//! rest, and keeps the original destination the proxy reads back with `SO_ORIGINAL_DST`.
//!
//! Kept source addresses ([`crate::route`] has the routing half): the proxy delivers an inbound
//! connection to the app from the client's address (an `IP_TRANSPARENT` socket bound to it, mark
//! 0x5747), so the app sees who called. Those deliveries are never tracked: their tuple
//! (client:port → pod:port) is also what a real connection from that client to that port looks
//! like before its redirect, so in conntrack one would be taken for the other — a client whose
//! new connection happened to pick the port of a live delivery would have its SYN matched to the
//! delivery's entry and never reach the proxy, and a delivery picking the port of a live client
//! connection would be redirected back to the proxy. Untracked, the two never meet, and the
//! return path needs no conntrack: it follows the mark, which the app's socket inherits
//! (`net.ipv4.tcp_fwmark_accept`).
//!
//! Only a bare SYN is redirected. A pod that is enrolled while it runs (cni-plugin's agent)
//! has open connections, and its netns had no conntrack until these rules arrived: the next
//! packet of such a connection is the first conntrack sees of it, so it passes the NAT chains as
//! "new" — redirecting that mid-stream packet to the proxy would reset the connection. Anything
//! but an opening SYN gets no translation, so connections opened before the rules stay direct
//! until they close (in a pod meshed at ADD there are none, and every connection starts with a
//! SYN).
//!
//! Kubelet probes: the kubelet connects from the node's own address (on a bridge CNI, the
//! bridge's address, which is the pod's gateway). Probes from those addresses skip the proxy and
//! reach the application directly, so a probe checks the application, never the proxy, and mTLS
//! policy never rejects the node. ztunnel instead SNATs probes to a link-local address in the
//! host; skipping by source needs nothing outside the pod's netns, at the cost of trusting the
//! node's address, which only the node (or a pod spoofing it, which the primary CNI prevents)
//! can use.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::annotations::{Cidr, Exclusions, PortRange};

/// The one table the rules live in.
pub const TABLE: &str = "weft";
const FAMILY: &str = "inet";
const OUTPUT: &str = "output";
const PREROUTING: &str = "prerouting";
const NOTRACK_PREROUTING: &str = "notrack_prerouting";
const NOTRACK_OUTPUT: &str = "notrack_output";
/// `dstnat` priority: where NAT chains that rewrite destinations conventionally sit.
const DSTNAT_PRIORITY: i32 = -100;
/// `raw` priority: before conntrack (-200) looks at the packet, so `notrack` takes effect.
const RAW_PRIORITY: i32 = -300;
/// DNS, which the rules never intercept (a node-local DNS proxy is a separate concern).
const DNS_PORT: u16 = 53;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The proxy's outbound listener (in the pod's netns, on loopback).
    pub outbound_port: u16,
    /// The proxy's inbound plaintext listener.
    pub inbound_plaintext_port: u16,
    /// HBONE (mTLS from other proxies), reached without redirection.
    pub inbound_hbone_port: u16,
    /// Every port the proxy itself listens on in the pod (never redirected inbound).
    pub proxy_ports: Vec<u16>,
    /// The mark on the proxy's own sockets.
    pub mark: u32,
    /// The mark on the proxy's deliveries that keep the client's address, and on the app's side
    /// of them ([`crate::route`]).
    pub transparent_mark: u32,
    pub exclusions: Exclusions,
    /// Source addresses whose inbound connections skip the proxy: the node's (kubelet probes).
    pub probe_sources: Vec<IpAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            outbound_port: 15001,
            inbound_plaintext_port: 15006,
            inbound_hbone_port: 15008,
            proxy_ports: vec![15001, 15006, 15008, 15021],
            mark: mesh_api::PROXY_FWMARK,
            transparent_mark: mesh_api::TRANSPARENT_FWMARK,
            exclusions: Exclusions::default(),
            probe_sources: Vec::new(),
        }
    }
}

fn table() -> Value {
    json!({"table": {"family": FAMILY, "name": TABLE}})
}

/// Creates the table if missing, then deletes it: a delete that cannot fail, so the same
/// transaction works on a fresh netns and on one that already has the rules.
fn reset() -> [Value; 2] {
    [json!({"add": table()}), json!({"delete": table()})]
}

/// The transaction that removes the rules (a no-op on a netns without them).
pub fn removal() -> Value {
    json!({"nftables": reset()})
}

fn chain(name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"add": {"chain": {
        "family": FAMILY, "table": TABLE, "name": name,
        "type": kind, "hook": hook, "prio": prio, "policy": "accept",
    }}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}}})
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn tcp_dport() -> Value {
    json!({"payload": {"protocol": "tcp", "field": "dport"}})
}

fn ret() -> Value {
    json!({"return": null})
}

/// One port, or an anonymous set of ports and ranges.
fn port_set(ports: &[PortRange]) -> Value {
    let item =
        |p: &PortRange| if p.first == p.last { json!(p.first) } else { json!({"range": [p.first, p.last]}) };
    match ports {
        [one] => item(one),
        many => json!({"set": many.iter().map(item).collect::<Vec<_>>()}),
    }
}

/// `ip saddr {…} return` and `ip6 saddr {…} return` (one rule per family present).
fn address_rules(chain_name: &str, field: &str, cidrs: &[Cidr], out: &mut Vec<Value>) {
    for (protocol, v4) in [("ip", true), ("ip6", false)] {
        let items: Vec<Value> = cidrs
            .iter()
            .filter(|c| c.addr.is_ipv4() == v4)
            .map(|c| {
                let host = if v4 { 32 } else { 128 };
                if c.len == host {
                    json!(c.addr.to_string())
                } else {
                    json!({"prefix": {"addr": c.addr.to_string(), "len": c.len}})
                }
            })
            .collect();
        let right = match items.len() {
            0 => continue,
            1 => items.into_iter().next().unwrap_or_default(),
            _ => json!({"set": items}),
        };
        let left = json!({"payload": {"protocol": protocol, "field": field}});
        out.push(rule(chain_name, vec![matches("==", left, right), ret()]));
    }
}

impl Settings {
    /// The transaction that (re)installs the rules: delete and create the table atomically, so
    /// applying twice leaves exactly one rule set and there is never a moment without rules.
    pub fn ruleset(&self) -> Value {
        let mut cmds: Vec<Value> = reset().into();
        cmds.push(json!({"add": table()}));
        cmds.push(chain(NOTRACK_PREROUTING, "filter", "prerouting", RAW_PRIORITY));
        cmds.push(chain(NOTRACK_OUTPUT, "filter", "output", RAW_PRIORITY));
        cmds.push(chain(OUTPUT, "nat", "output", DSTNAT_PRIORITY));
        cmds.push(chain(PREROUTING, "nat", "prerouting", DSTNAT_PRIORITY));

        let not_tcp = || matches("!=", meta("l4proto"), json!("tcp"));
        // `tcp flags & (fin | syn | rst | ack) != syn`: not a connection's first packet.
        let not_opening = || {
            matches(
                "!=",
                json!({"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["fin", "syn", "rst", "ack"]]}),
                json!("syn"),
            )
        };
        let x = &self.exclusions;

        // Kept-source deliveries: untracked both ways (see the module docs).
        for chain_name in [NOTRACK_PREROUTING, NOTRACK_OUTPUT] {
            let transparent = matches("==", meta("mark"), json!(self.transparent_mark));
            cmds.push(rule(chain_name, vec![transparent, json!({"notrack": null})]));
        }

        // Outbound.
        cmds.push(rule(OUTPUT, vec![matches("==", meta("mark"), json!(self.mark)), ret()]));
        cmds.push(rule(OUTPUT, vec![matches("==", meta("oifname"), json!("lo")), ret()]));
        cmds.push(rule(OUTPUT, vec![not_tcp(), ret()]));
        cmds.push(rule(OUTPUT, vec![not_opening(), ret()]));
        let mut outbound_ports = vec![PortRange::single(DNS_PORT)];
        outbound_ports.extend(x.outbound_ports.iter().copied());
        outbound_ports.sort();
        outbound_ports.dedup();
        cmds.push(rule(OUTPUT, vec![matches("==", tcp_dport(), port_set(&outbound_ports)), ret()]));
        address_rules(OUTPUT, "daddr", &x.outbound_cidrs, &mut cmds);
        cmds.push(rule(
            OUTPUT,
            vec![
                matches("==", meta("l4proto"), json!("tcp")),
                json!({"redirect": {"port": self.outbound_port}}),
            ],
        ));

        // Inbound.
        cmds.push(rule(PREROUTING, vec![matches("==", meta("iifname"), json!("lo")), ret()]));
        cmds.push(rule(PREROUTING, vec![not_tcp(), ret()]));
        cmds.push(rule(PREROUTING, vec![not_opening(), ret()]));
        let mut own: Vec<PortRange> = self.proxy_ports.iter().map(|p| PortRange::single(*p)).collect();
        own.push(PortRange::single(self.inbound_hbone_port));
        own.sort();
        own.dedup();
        cmds.push(rule(PREROUTING, vec![matches("==", tcp_dport(), port_set(&own)), ret()]));
        if !x.inbound_ports.is_empty() {
            cmds.push(rule(PREROUTING, vec![matches("==", tcp_dport(), port_set(&x.inbound_ports)), ret()]));
        }
        let probes: Vec<Cidr> = self
            .probe_sources
            .iter()
            .map(|a| Cidr { addr: *a, len: if a.is_ipv4() { 32 } else { 128 } })
            .collect();
        address_rules(PREROUTING, "saddr", &probes, &mut cmds);
        cmds.push(rule(
            PREROUTING,
            vec![
                matches("==", meta("l4proto"), json!("tcp")),
                json!({"redirect": {"port": self.inbound_plaintext_port}}),
            ],
        ));

        json!({"nftables": cmds})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::parse_list;

    /// Compares with `tests/golden/<name>.json`; `WEFT_BLESS=1` rewrites the file.
    fn golden(name: &str, value: &Value) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(format!("{name}.json"));
        let got = serde_json::to_string_pretty(value).expect("json") + "\n";
        if std::env::var_os("WEFT_BLESS").is_some() {
            std::fs::write(&path, &got).expect("write golden");
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (WEFT_BLESS=1 writes it)", path.display()));
        assert_eq!(got, want, "{name}: generated rules differ from {}", path.display());
    }

    #[test]
    fn golden_default_rules() {
        golden("default", &Settings::default().ruleset());
    }

    #[test]
    fn golden_rules_with_exclusions_and_probes() {
        let settings = Settings {
            exclusions: Exclusions {
                inbound_ports: parse_list("in", "8080,9000-9100", "").expect("ports"),
                outbound_ports: parse_list("out", "5432", "").expect("ports"),
                outbound_cidrs: parse_list("cidrs", "10.96.0.0/12,169.254.169.254,fd00::/8", "")
                    .expect("cidrs"),
            },
            probe_sources: vec!["10.244.0.1".parse().expect("ip"), "fd00:10:244::1".parse().expect("ip")],
            ..Settings::default()
        };
        golden("exclusions", &settings.ruleset());
    }

    #[test]
    fn removal_is_add_then_delete_of_the_table_only() {
        assert_eq!(
            removal(),
            json!({"nftables": [
                {"add": {"table": {"family": "inet", "name": "weft"}}},
                {"delete": {"table": {"family": "inet", "name": "weft"}}},
            ]})
        );
    }
}
