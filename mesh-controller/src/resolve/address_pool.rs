//! Addresses for Gateways that ask for none, from a pool the user configures: what MetalLB or
//! Cilium's LB-IPAM do where no load-balancer provider exists (bare metal, the test cluster).
//!
//! The assignment is a pure function of the store, so every replica, and every resolve after a
//! restart, computes the same one. An address already written to a Gateway's status is kept
//! while it is in the pool and no one else holds it; that is what keeps a Gateway's address
//! when another Gateway is deleted. A Gateway without one takes the free address its name
//! hashes to, probing forward, so creation order does not matter.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use mesh_api::model::ObjectKey;

/// Only this many addresses of a larger pool (an IPv6 /64, say) are used: the assignment walks
/// the pool, and no cluster has more Gateways than this.
const MAX_POOL_ADDRESSES: usize = 1 << 16;

/// A Gateway that needs an address, with what its status recorded last time.
pub struct Wanting {
    pub key: ObjectKey,
    pub recorded: Vec<IpAddr>,
}

/// One address per Gateway in `wanting`, avoiding `taken` (addresses Gateways ask for in their
/// spec). A Gateway missing from the result found the pool full.
pub fn assign(pool: &IpNet, mut taken: BTreeSet<IpAddr>, wanting: &[Wanting]) -> BTreeMap<ObjectKey, IpAddr> {
    let hosts: Vec<IpAddr> = pool.hosts().take(MAX_POOL_ADDRESSES).collect();
    let mut assigned = BTreeMap::new();
    // First the Gateways keeping their recorded address, so that a new Gateway whose hash
    // lands on it probes past it instead of taking it.
    for w in wanting {
        if let Some(ip) = w.recorded.iter().find(|ip| pool.contains(*ip) && !taken.contains(ip)) {
            taken.insert(*ip);
            assigned.insert(w.key.clone(), *ip);
        }
    }
    if hosts.is_empty() {
        return assigned;
    }
    for w in wanting {
        if assigned.contains_key(&w.key) {
            continue;
        }
        let start = (name_hash(&w.key) % hosts.len() as u64) as usize;
        let free = (0..hosts.len()).map(|i| hosts[(start + i) % hosts.len()]).find(|ip| !taken.contains(ip));
        if let Some(ip) = free {
            taken.insert(ip);
            assigned.insert(w.key.clone(), ip);
        }
    }
    assigned
}

/// FNV-1a of `namespace/name`: stable across builds and Rust versions (std's hasher is not
/// promised to be), so replicas of different versions agree during an upgrade.
fn name_hash(key: &ObjectKey) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    key.namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(key.name.bytes())
        .fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey { namespace: "infra".into(), name: name.into() }
    }

    fn wanting(names: &[&str]) -> Vec<Wanting> {
        names.iter().map(|n| Wanting { key: key(n), recorded: Vec::new() }).collect()
    }

    fn pool(cidr: &str) -> IpNet {
        cidr.parse().expect("test CIDR")
    }

    #[test]
    fn every_gateway_gets_a_distinct_address_inside_the_pool() {
        let pool = pool("10.250.128.0/28");
        let names: Vec<String> = (0..14).map(|i| format!("gw-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let got = assign(&pool, BTreeSet::new(), &wanting(&refs));
        assert_eq!(got.len(), 14, "a /28 has 14 host addresses");
        let distinct: BTreeSet<_> = got.values().collect();
        assert_eq!(distinct.len(), 14);
        assert!(got.values().all(|ip| pool.contains(ip)));
        assert!(
            !got.values().any(|ip| ip.to_string() == "10.250.128.0" || ip.to_string() == "10.250.128.15")
        );
    }

    #[test]
    fn a_full_pool_leaves_the_rest_without_an_address() {
        let got = assign(&pool("10.250.128.0/30"), BTreeSet::new(), &wanting(&["a", "b", "c"]));
        assert_eq!(got.len(), 2, "a /30 has 2 host addresses");
    }

    #[test]
    fn addresses_taken_by_spec_are_skipped() {
        let pool = pool("10.250.128.4/31");
        let taken = BTreeSet::from(["10.250.128.4".parse().expect("ip")]);
        let got = assign(&pool, taken, &wanting(&["a"]));
        assert_eq!(got[&key("a")].to_string(), "10.250.128.5");
    }

    #[test]
    fn recorded_addresses_survive_the_deletion_of_another_gateway() {
        let pool = pool("10.250.128.0/24");
        let before = assign(&pool, BTreeSet::new(), &wanting(&["a", "b", "c"]));
        // "b" is deleted; the others come back with what their status recorded.
        let again: Vec<Wanting> =
            ["a", "c"].iter().map(|n| Wanting { key: key(n), recorded: vec![before[&key(n)]] }).collect();
        let after = assign(&pool, BTreeSet::new(), &again);
        assert_eq!(after[&key("a")], before[&key("a")]);
        assert_eq!(after[&key("c")], before[&key("c")]);
    }

    #[test]
    fn a_recorded_address_outside_the_pool_or_held_by_another_is_replaced() {
        let pool = pool("10.250.128.0/24");
        let w = vec![
            Wanting { key: key("a"), recorded: vec!["192.0.2.1".parse().expect("ip")] },
            Wanting { key: key("b"), recorded: vec!["10.250.128.9".parse().expect("ip")] },
            Wanting { key: key("c"), recorded: vec!["10.250.128.9".parse().expect("ip")] },
        ];
        let got = assign(&pool, BTreeSet::new(), &w);
        assert!(pool.contains(&got[&key("a")]));
        assert_eq!(got[&key("b")].to_string(), "10.250.128.9", "the first in key order keeps it");
        assert_ne!(got[&key("c")].to_string(), "10.250.128.9");
    }

    #[test]
    fn the_assignment_does_not_depend_on_the_order_gateways_arrive_in() {
        let pool = pool("10.250.128.0/24");
        let forward = assign(&pool, BTreeSet::new(), &wanting(&["a", "b", "c", "d"]));
        let backward = assign(&pool, BTreeSet::new(), &wanting(&["d", "c", "b", "a"]));
        // Hash collisions may resolve differently, but with 254 addresses and these names none
        // collide; what matters is each gets the address its own name picks.
        assert_eq!(forward, backward);
    }

    #[test]
    fn ipv6_pools_work() {
        let pool = pool("fd00:77::/64");
        let got = assign(&pool, BTreeSet::new(), &wanting(&["a", "b"]));
        assert_eq!(got.len(), 2);
        assert!(got.values().all(|ip| pool.contains(ip)));
    }
}
