//! The pod annotations that take ports and destinations out of interception.
//!
//! Values are comma-separated lists; blanks around entries are ignored. Ports are single ports
//! (`8080`) or inclusive ranges (`9000-9100`); CIDRs are IPv4 or IPv6 prefixes (`10.0.0.0/8`), a
//! bare address meaning a host prefix. An invalid entry is an error naming the annotation and the
//! entry: a pod whose annotation we cannot honour must not be meshed with a guess.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Inbound ports that go straight to the application, not through the proxy.
pub const EXCLUDE_INBOUND_PORTS: &str = "weft.dev/exclude-inbound-ports";
/// Outbound destination ports that bypass the proxy.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "weft.dev/exclude-outbound-ports";
/// Outbound destination CIDRs that bypass the proxy.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "weft.dev/exclude-outbound-cidrs";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("annotation {annotation}: {entry:?} is not {expected}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub entry: String,
    pub expected: &'static str,
}

/// An inclusive port range; a single port is `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange { first: port, last: port }
    }
}

impl FromStr for PortRange {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        // Port 0 is never a destination a connection can have, so it is refused rather than
        // silently matching nothing.
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or(());
        match s.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (port(a)?, port(b)?);
                if first > last {
                    return Err(());
                }
                Ok(PortRange { first, last })
            }
            None => port(s).map(PortRange::single),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// An address prefix. The address is kept as written with its host bits cleared, which is what
/// nft itself requires of a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Cidr {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => {
                (a.trim().parse::<IpAddr>().map_err(|_| ())?, Some(l.trim().parse::<u8>().map_err(|_| ())?))
            }
            None => (s.trim().parse::<IpAddr>().map_err(|_| ())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(());
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What a pod's annotations take out of interception.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    pub inbound_ports: Vec<PortRange>,
    pub outbound_ports: Vec<PortRange>,
    pub outbound_cidrs: Vec<Cidr>,
}

impl Exclusions {
    /// Reads the three annotations from a pod's annotation map; other keys are ignored.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, AnnotationError> {
        let get = |key: &str| annotations.get(key).map(String::as_str).unwrap_or("");
        Ok(Exclusions {
            inbound_ports: parse_list(
                EXCLUDE_INBOUND_PORTS,
                get(EXCLUDE_INBOUND_PORTS),
                "a port or port range",
            )?,
            outbound_ports: parse_list(
                EXCLUDE_OUTBOUND_PORTS,
                get(EXCLUDE_OUTBOUND_PORTS),
                "a port or port range",
            )?,
            outbound_cidrs: parse_list(
                EXCLUDE_OUTBOUND_CIDRS,
                get(EXCLUDE_OUTBOUND_CIDRS),
                "an IP address or CIDR",
            )?,
        })
    }
}

/// Parses one comma-separated annotation value; the result is sorted and deduplicated so the
/// generated rules do not depend on how the user ordered the list.
pub fn parse_list<T: FromStr + Ord>(
    annotation: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<Vec<T>, AnnotationError> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.parse::<T>().map_err(|_| AnnotationError {
            annotation,
            entry: entry.to_string(),
            expected,
        })?;
        out.push(parsed);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_ports_ranges_and_cidrs() {
        let e = Exclusions::from_annotations(&annotations(&[
            (EXCLUDE_INBOUND_PORTS, " 8080, 9000-9100 ,8080"),
            (EXCLUDE_OUTBOUND_PORTS, "5432"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.1.2.3/8, fd00::1/16, 192.168.1.1"),
            ("unrelated", "x"),
        ]))
        .expect("valid annotations");
        assert_eq!(e.inbound_ports, vec![PortRange::single(8080), PortRange { first: 9000, last: 9100 }]);
        assert_eq!(e.outbound_ports, vec![PortRange::single(5432)]);
        let cidrs: Vec<String> = e.outbound_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "192.168.1.1/32", "fd00::/16"]);
    }

    #[test]
    fn empty_or_missing_annotations_exclude_nothing() {
        let e =
            Exclusions::from_annotations(&annotations(&[(EXCLUDE_OUTBOUND_PORTS, " , ")])).expect("valid");
        assert_eq!(e, Exclusions::default());
    }

    #[test]
    fn errors_name_the_annotation_and_the_entry() {
        for (key, value, bad) in [
            (EXCLUDE_INBOUND_PORTS, "80,http", "http"),
            (EXCLUDE_INBOUND_PORTS, "0", "0"),
            (EXCLUDE_OUTBOUND_PORTS, "70000", "70000"),
            (EXCLUDE_OUTBOUND_PORTS, "90-80", "90-80"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/33", "10.0.0.0/33"),
            (EXCLUDE_OUTBOUND_CIDRS, "fd00::/129", "fd00::/129"),
            (EXCLUDE_OUTBOUND_CIDRS, "example.com", "example.com"),
        ] {
            let err = Exclusions::from_annotations(&annotations(&[(key, value)])).expect_err(value);
            assert_eq!(err.annotation, key);
            assert_eq!(err.entry, bad);
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
