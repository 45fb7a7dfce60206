//! Who may have which certificate.
//!
//! A node proxy proves who it is with its own ServiceAccount token; it may then have a
//! certificate for its own identity, and for the identity of any pod that the controller's
//! view of the cluster places on *its* node. A compromised node can so impersonate only the
//! workloads already running there — the blast radius ztunnel and Linkerd accept too.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use mesh_api::identity::SpiffeId;
use mesh_api::model::Config;

/// A node proxy whose token checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub node: String,
    /// The proxy's own identity (its ServiceAccount).
    pub identity: SpiffeId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("no bearer token in the `authorization` metadata")]
    NoToken,
    #[error("the token is not valid: {0}")]
    BadToken(String),
    #[error("the token belongs to {0}, not to the node proxy's ServiceAccount {1}")]
    NotTheProxy(String, String),
    #[error(
        "the token of {0} carries no node name; mount a projected ServiceAccount token \
         (Kubernetes 1.30+ adds the node to it)"
    )]
    NoNode(String),
    #[error("cannot check the token with the API server: {0}")]
    Unavailable(String),
    #[error("no pod with identity {identity} runs on node {node}")]
    NotOnNode { identity: String, node: String },
    #[error("the token is node {caller}'s; it cannot subscribe as node {asked}")]
    WrongNode { caller: String, asked: String },
}

/// Turns a bearer token into a [`Caller`].
pub enum Authenticator {
    /// Standalone mode: tokens given on the command line or in a file, each naming its node.
    Static(HashMap<String, Caller>),
    /// In a cluster: the API server's TokenReview, then the token must be the proxy
    /// ServiceAccount's and carry the node of the pod it was issued to.
    TokenReview {
        client: kube::Client,
        /// `system:serviceaccount:<namespace>:<name>` of the node proxies.
        proxy_username: String,
        trust_domain: String,
    },
}

/// Extra key the API server adds to bound tokens of pods (KEP-4193).
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// When a JWT bearer token stops being valid: its `exp` claim. The claims are read without
/// checking the signature, so this is only for a token the apiserver has just accepted (a
/// TokenReview said yes); it answers `None` for anything that is not a three-part JWT with a
/// numeric `exp` (static node tokens, legacy never-expiring Secret tokens).
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    // RFC 7515 forbids padding in JWS; some encoders add it anyway.
    let claims = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

impl Authenticator {
    pub async fn authenticate(&self, token: &str) -> Result<Caller, Refusal> {
        match self {
            Authenticator::Static(tokens) => tokens
                .get(token)
                .cloned()
                .ok_or_else(|| Refusal::BadToken("unknown static node token".into())),
            Authenticator::TokenReview { client, proxy_username, trust_domain } => {
                let review = TokenReview {
                    spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None },
                    ..Default::default()
                };
                let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
                let reviewed = api
                    .create(&kube::api::PostParams::default(), &review)
                    .await
                    .map_err(|e| Refusal::Unavailable(e.to_string()))?;
                let status = reviewed.status.unwrap_or_default();
                if status.authenticated != Some(true) {
                    return Err(Refusal::BadToken(
                        status.error.unwrap_or_else(|| "not authenticated".into()),
                    ));
                }
                let user = status.user.unwrap_or_default();
                let username = user.username.unwrap_or_default();
                if &username != proxy_username {
                    return Err(Refusal::NotTheProxy(username, proxy_username.clone()));
                }
                let node = user
                    .extra
                    .as_ref()
                    .and_then(|extra| extra.get(NODE_NAME_EXTRA))
                    .and_then(|values| values.first())
                    .cloned()
                    .ok_or_else(|| Refusal::NoNode(username.clone()))?;
                let identity = identity_of_username(&username, trust_domain)
                    .ok_or_else(|| Refusal::BadToken(format!("{username} is not a ServiceAccount")))?;
                Ok(Caller { node, identity })
            }
        }
    }
}

/// `system:serviceaccount:<ns>:<name>` → `spiffe://<td>/ns/<ns>/sa/<name>`.
pub fn identity_of_username(username: &str, trust_domain: &str) -> Option<SpiffeId> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    SpiffeId::new(trust_domain, namespace, name).ok()
}

/// May `caller` have a certificate for `wanted`, given the cluster as `config` sees it?
pub fn authorize(caller: &Caller, wanted: &SpiffeId, config: &Config) -> Result<(), Refusal> {
    if &caller.identity == wanted {
        return Ok(());
    }
    let wanted_text = wanted.to_string();
    let on_node = config.workloads.values().any(|w| w.node == caller.node && w.identity == wanted_text);
    if on_node {
        Ok(())
    } else {
        Err(Refusal::NotOnNode { identity: wanted_text, node: caller.node.clone() })
    }
}

/// May `caller` follow the config stream as `node`? Only as its own node: the config holds
/// Gateway private keys and every pod's placement, so a proxy gets it under its own name only.
pub fn authorize_subscriber(caller: &Caller, node: &str) -> Result<(), Refusal> {
    if caller.node == node {
        Ok(())
    } else {
        Err(Refusal::WrongNode { caller: caller.node.clone(), asked: node.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::model::{ObjectKey, Workload};

    use super::*;

    fn jwt(claims: &serde_json::Value) -> String {
        let part = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2lnbmF0dXJl", part(&serde_json::json!({"alg": "RS256"})), part(claims))
    }

    #[test]
    fn a_jwts_expiry_is_its_exp_claim() {
        let token = jwt(
            &serde_json::json!({"sub": "system:serviceaccount:weft-system:weft-node", "exp": 1_900_000_000u64}),
        );
        assert_eq!(token_expiry(&token), Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)));
        // Padding, which JWS forbids but some encoders add, is tolerated.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1].push_str("==");
        assert!(token_expiry(&parts.join(".")).is_some());
    }

    #[test]
    fn tokens_without_a_readable_exp_have_no_expiry() {
        for token in [
            "static-node-token".to_string(),
            jwt(&serde_json::json!({"sub": "legacy"})),
            jwt(&serde_json::json!({"exp": "tomorrow"})),
            jwt(&serde_json::json!({"exp": -5})),
            "a.b.c.d".to_string(),
            "header.!!!not-base64!!!.sig".to_string(),
            format!("x.{}.y", URL_SAFE_NO_PAD.encode("not json")),
        ] {
            assert_eq!(token_expiry(&token), None, "{token}");
        }
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().expect("test identity")
    }

    fn cluster() -> Config {
        let mut config = Config::default();
        for (name, node, sa) in [("web-1", "node-a", "web"), ("db-1", "node-b", "db")] {
            config.insert_workload(Workload {
                key: ObjectKey::new("shop", name),
                ips: vec![],
                node: node.into(),
                service_account: sa.into(),
                identity: format!("spiffe://cluster.local/ns/shop/sa/{sa}"),
                meshed: true,
                ready: true,
            });
        }
        config
    }

    fn proxy_on(node: &str) -> Caller {
        Caller { node: node.into(), identity: id("spiffe://cluster.local/ns/weft-system/sa/weft-proxy") }
    }

    #[test]
    fn a_proxy_gets_the_identities_of_pods_on_its_node() {
        let config = cluster();
        assert_eq!(
            authorize(&proxy_on("node-a"), &id("spiffe://cluster.local/ns/shop/sa/web"), &config),
            Ok(())
        );
        assert_eq!(
            authorize(&proxy_on("node-b"), &id("spiffe://cluster.local/ns/shop/sa/db"), &config),
            Ok(())
        );
    }

    #[test]
    fn a_proxy_gets_its_own_identity() {
        let caller = proxy_on("node-c");
        assert_eq!(authorize(&caller, &caller.identity.clone(), &Config::default()), Ok(()));
    }

    #[test]
    fn a_proxy_never_gets_a_pod_of_another_node() {
        let refused = authorize(&proxy_on("node-a"), &id("spiffe://cluster.local/ns/shop/sa/db"), &cluster());
        assert_eq!(
            refused,
            Err(Refusal::NotOnNode {
                identity: "spiffe://cluster.local/ns/shop/sa/db".into(),
                node: "node-a".into()
            })
        );
    }

    #[test]
    fn same_namespace_other_service_account_is_refused() {
        let refused =
            authorize(&proxy_on("node-a"), &id("spiffe://cluster.local/ns/shop/sa/admin"), &cluster());
        assert!(matches!(refused, Err(Refusal::NotOnNode { .. })));
    }

    #[tokio::test]
    async fn static_tokens_name_their_node() {
        let auth = Authenticator::Static(HashMap::from([("secret-a".to_string(), proxy_on("node-a"))]));
        assert_eq!(auth.authenticate("secret-a").await, Ok(proxy_on("node-a")));
        assert!(matches!(auth.authenticate("secret-b").await, Err(Refusal::BadToken(_))));
    }

    #[test]
    fn a_proxy_subscribes_as_its_own_node_only() {
        assert_eq!(authorize_subscriber(&proxy_on("node-a"), "node-a"), Ok(()));
        assert_eq!(
            authorize_subscriber(&proxy_on("node-a"), "node-b"),
            Err(Refusal::WrongNode { caller: "node-a".into(), asked: "node-b".into() })
        );
        assert!(authorize_subscriber(&proxy_on("node-a"), "").is_err());
    }

    #[test]
    fn service_account_usernames_become_identities() {
        assert_eq!(
            identity_of_username("system:serviceaccount:weft-system:weft-proxy", "cluster.local"),
            Some(id("spiffe://cluster.local/ns/weft-system/sa/weft-proxy"))
        );
        assert_eq!(identity_of_username("system:node:node-a", "cluster.local"), None);
        assert_eq!(identity_of_username("system:serviceaccount:only-namespace", "cluster.local"), None);
    }
}
