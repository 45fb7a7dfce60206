//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
//!
//! The one URI SAN of every workload certificate. Both sides parse it with this type, so a
//! certificate the CA would not issue is one the proxy would not accept either.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A parsed, valid SPIFFE ID of a Kubernetes ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    Scheme(String),
    #[error(
        "{0:?} is not a workload identity: expected spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>"
    )]
    Shape(String),
    #[error("{id:?}: {part} {value:?} is not a valid {what}")]
    Part { id: String, part: &'static str, value: String, what: &'static str },
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        id.validate()?;
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    fn validate(&self) -> Result<(), SpiffeIdError> {
        let part = |part: &'static str, value: &str, what: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(SpiffeIdError::Part { id: self.to_string(), part, value: value.to_string(), what })
            }
        };
        // The SPIFFE spec allows lower-case letters, digits, '.', '-' and '_' in a trust domain.
        part(
            "trust domain",
            &self.trust_domain,
            "SPIFFE trust domain",
            !self.trust_domain.is_empty()
                && self.trust_domain.len() <= 255
                && self
                    .trust_domain
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)),
        )?;
        part("namespace", &self.namespace, "DNS-1123 label", is_dns_label(&self.namespace))?;
        part(
            "service account",
            &self.service_account,
            "DNS-1123 subdomain",
            is_dns_subdomain(&self.service_account),
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| SpiffeIdError::Scheme(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [trust_domain, "ns", namespace, "sa", service_account] => {
                Self::new(*trust_domain, *namespace, *service_account)
            }
            _ => Err(SpiffeIdError::Shape(s.to_string())),
        }
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.to_string()
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/checkout".parse().expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "checkout");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/checkout");
    }

    #[test]
    fn refuses_what_is_not_a_workload_identity() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/namespace/a/sa/b",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} was accepted");
        }
    }
}
