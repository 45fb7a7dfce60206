//! The Kubernetes layer against a real kube-apiserver and etcd (`tests/cluster/control-plane.sh`,
//! with the Gateway API CRDs installed): watchers fill the store, the leader writes status with
//! server-side apply, other controllers' entries survive, and a restart rewrites nothing.
//!
//! The API server is named explicitly by `WEFT_TEST_KUBECONFIG` (never the ambient KUBECONFIG:
//! these tests create and delete objects). Without it they are skipped, unless
//! `WEFT_REQUIRE_APISERVER=1` (as in CI) makes that a failure.

use std::time::Duration;

use gateway_api::experimental::gatewayclasses::GatewayClass;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use mesh_controller::config_server::Publisher;
use mesh_controller::leader::{self, LeaseConfig, Outcome};
use mesh_controller::resolve::Settings;
use mesh_controller::status_writer::StatusWriter;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Every wait for the controller to act is bounded by this.
const SETTLE: Duration = Duration::from_secs(30);

async fn client() -> Option<Client> {
    let Some(path) = std::env::var_os("WEFT_TEST_KUBECONFIG") else {
        assert!(
            std::env::var("WEFT_REQUIRE_APISERVER").is_err(),
            "WEFT_REQUIRE_APISERVER is set but WEFT_TEST_KUBECONFIG is not"
        );
        eprintln!(
            "skipped: set WEFT_TEST_KUBECONFIG (tests/cluster/control-plane.sh up) to run against an API server"
        );
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig");
    Some(Client::try_from(config).expect("client"))
}

fn unique(prefix: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).expect("valid object");
    api.create(&PostParams::default(), &object).await.expect("create")
}

/// Polls until `check` passes on the route's status, or panics with the last status seen.
async fn wait_for<F: Fn(&Value) -> bool>(
    routes: &Api<HttpRoute>,
    name: &str,
    what: &str,
    check: F,
) -> HttpRoute {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let route = routes.get(name).await.expect("get route");
        let status = serde_json::to_value(&route.status).expect("status json");
        if check(&status) {
            return route;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {SETTLE:?}; status: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn parent_by<'a>(status: &'a Value, controller: &str) -> Option<&'a Value> {
    status.get("parents")?.as_array()?.iter().find(|p| p["controllerName"] == controller)
}

fn condition<'a>(parent: &'a Value, type_: &str) -> Option<&'a Value> {
    parent["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// The tests that run a leading controller take turns: a leader writes the status of every
/// Gateway of Weft's classes in the cluster, and two with different settings would disagree.
static LEADERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spawn_controller(
    client: Client,
    leading: bool,
) -> (tokio::task::JoinHandle<anyhow::Result<()>>, Publisher) {
    spawn_controller_with(client, leading, Settings::default())
}

fn spawn_controller_with(
    client: Client,
    leading: bool,
    settings: Settings,
) -> (tokio::task::JoinHandle<anyhow::Result<()>>, Publisher) {
    let publisher = Publisher::new();
    let (_tx, rx) = watch::channel(leading);
    let writer = StatusWriter::new(client.clone());
    let task = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            let _keep_sender = _tx;
            mesh_controller::kube_source::run(client, settings, publisher, writer, rx).await
        }
    });
    (task, publisher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_merged_with_other_controllers_and_not_rewritten_after_restart() {
    let Some(client) = client().await else { return };
    let _turn = LEADERS.lock().await;
    let ns = unique("weft-it");
    let class = unique("weft-it");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(&namespaces, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await;
    let classes: Api<GatewayClass> = Api::all(client.clone());
    create(
        &classes,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": class}, "spec": {"controllerName": "weft.dev/gateway-controller"}}),
    )
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    create(&gateways, json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": ns},
        "spec": {"gatewayClassName": class, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}))
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    let routes: Api<HttpRoute> = Api::namespaced(client.clone(), &ns);
    create(
        &routes,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": ns},
        "spec": {"parentRefs": [{"name": "gw"}, {"name": "someone-elses"}],
                 "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    )
    .await;
    // Another implementation already reported on its own parent.
    let foreign = json!({"parentRef": {"name": "someone-elses"}, "controllerName": "example.com/other",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    routes
        .patch_status(
            "r",
            &PatchParams::apply("example-other").force(),
            &Patch::Apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "r"}, "status": {"parents": [foreign.clone()]}})),
        )
        .await
        .expect("foreign status");
    // As the API server stored it (CRD defaulting fills in the parentRef's group and kind).
    let stored = serde_json::to_value(&routes.get("r").await.expect("route").status).expect("json");
    let foreign = parent_by(&stored, "example.com/other").expect("foreign entry stored").clone();

    let (controller, publisher) = spawn_controller(client.clone(), true);
    let route = wait_for(&routes, "r", "Weft's parent status", |s| {
        parent_by(s, "weft.dev/gateway-controller")
            .and_then(|p| condition(p, "Accepted"))
            .is_some_and(|c| c["status"] == "True")
    })
    .await;
    let status = serde_json::to_value(&route.status).expect("json");
    assert_eq!(
        parent_by(&status, "example.com/other"),
        Some(&foreign),
        "another controller's entry is untouched"
    );
    let ours = parent_by(&status, "weft.dev/gateway-controller").expect("ours");
    assert_eq!(ours["parentRef"]["name"], "gw");
    assert!(condition(ours, "Accepted").and_then(|c| c["lastTransitionTime"].as_str()).is_some());
    assert_eq!(
        route
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|f| f.manager.as_deref() == Some("weft-controller"))
            .count(),
        1,
        "written by server-side apply under weft-controller"
    );
    let gw = gateways.get("gw").await.expect("gateway");
    let gw_status = serde_json::to_value(&gw.status).expect("json");
    assert_eq!(gw_status["listeners"][0]["attachedRoutes"], 1, "{gw_status:#}");
    let class_status = serde_json::to_value(&classes.get(&class).await.expect("class").status).expect("json");
    assert!(
        class_status["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Accepted" && c["status"] == "True"))
    );
    assert!(publisher.current().config.routes.contains_key(&format!("HTTPRoute/{ns}/r")), "config published");

    // Kill the controller and start a new one: nothing is rewritten, nothing duplicated.
    controller.abort();
    let before = routes.get("r").await.expect("route").metadata.resource_version;
    let (restarted, publisher) = spawn_controller(client.clone(), true);
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !publisher.current().config.routes.contains_key(&format!("HTTPRoute/{ns}/r")) {
        assert!(tokio::time::Instant::now() < deadline, "restarted controller never resolved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // room for a (wrong) write to land
    let after = routes.get("r").await.expect("route");
    assert_eq!(after.metadata.resource_version, before, "an unchanged status was rewritten after restart");
    let after_status = serde_json::to_value(&after.status).expect("json");
    assert_eq!(
        after_status["parents"].as_array().map(Vec::len),
        Some(2),
        "no duplicated entries: {after_status:#}"
    );

    // A change: the route leaves Weft's Gateway; our entry goes, theirs stays.
    routes
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"parentRefs": [{"name": "someone-elses"}]}})),
        )
        .await
        .expect("edit route");
    wait_for(&routes, "r", "removal of Weft's entry", |s| {
        parent_by(s, "weft.dev/gateway-controller").is_none() && parent_by(s, "example.com/other").is_some()
    })
    .await;

    restarted.abort();
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    let _ = classes.delete(&class, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_replica_holds_the_lease() {
    let Some(client) = client().await else { return };
    let ns = unique("weft-lease");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(&namespaces, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let config = |identity: &str| LeaseConfig {
        namespace: ns.clone(),
        name: "weft-controller".into(),
        identity: identity.into(),
        duration: Duration::from_secs(2),
    };
    assert_eq!(leader::try_acquire(&leases, &config("a")).await.expect("a"), Outcome::Leading);
    assert_eq!(leader::try_acquire(&leases, &config("a")).await.expect("a renews"), Outcome::Leading);
    assert_eq!(
        leader::try_acquire(&leases, &config("b")).await.expect("b"),
        Outcome::Following { holder: "a".into() }
    );
    // a stops renewing; once its lease has lapsed, b takes over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(leader::try_acquire(&leases, &config("b")).await.expect("b takes over"), Outcome::Leading);
    assert_eq!(
        leader::try_acquire(&leases, &config("a")).await.expect("a"),
        Outcome::Following { holder: "b".into() }
    );
    let lease = leases.get("weft-controller").await.expect("lease");
    assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(1));
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}

/// The CA's trust in a node proxy rests on TokenReview: a token bound to a proxy pod names the
/// pod's node; a token of any other ServiceAccount is refused. And the root lives in one
/// Secret that a second start (another replica) reuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_names_the_proxy_pods_node_and_the_ca_secret_is_reused() {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
    use mesh_controller::ca::authorize::{Authenticator, Refusal};

    let Some(client) = client().await else { return };
    let ns = unique("weft-ca");
    let node_name = unique("node");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(&namespaces, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await;
    let nodes: Api<Node> = Api::all(client.clone());
    create(&nodes, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name}})).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    for name in ["weft-proxy", "intruder"] {
        create(&accounts, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}))
            .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut tokens = Vec::new();
    for account in ["weft-proxy", "intruder"] {
        let pod = create(
            &pods,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{account}-pod")},
                "spec": {
                    "nodeName": node_name,
                    "serviceAccountName": account,
                    "containers": [{"name": "c", "image": "weft.invalid/none"}],
                },
            }),
        )
        .await;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let issued = accounts
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .expect("token request");
        tokens.push(issued.status.expect("token status").token);
    }

    let authenticator = std::sync::Arc::new(Authenticator::TokenReview {
        client: client.clone(),
        proxy_username: format!("system:serviceaccount:{ns}:weft-proxy"),
        trust_domain: "cluster.local".into(),
    });
    let caller = authenticator.authenticate(&tokens[0]).await.expect("the proxy's token is good");
    assert_eq!(caller.node, node_name);
    assert_eq!(caller.identity.to_string(), format!("spiffe://cluster.local/ns/{ns}/sa/weft-proxy"));
    assert!(matches!(authenticator.authenticate(&tokens[1]).await, Err(Refusal::NotTheProxy(..))));
    assert!(matches!(authenticator.authenticate("not-a-jwt").await, Err(Refusal::BadToken(_))));

    // The config stream admits the same token, for its own node only.
    let subscribers = mesh_controller::config_server::Subscribers::Authenticated(authenticator.clone());
    let admitted = subscribers.admit(Some(&tokens[0]), &node_name).await.expect("the proxy, as its node");
    assert_eq!(admitted.map(|c| c.node), Some(node_name.clone()));
    let (reason, status) = subscribers.admit(Some(&tokens[0]), "another-node").await.expect_err("other node");
    assert_eq!((reason, status.code()), ("wrong_node", tonic::Code::PermissionDenied));
    let (reason, status) = subscribers.admit(Some(&tokens[1]), &node_name).await.expect_err("not the proxy");
    assert_eq!((reason, status.code()), ("not_the_proxy", tonic::Code::PermissionDenied));
    let (reason, status) = subscribers.admit(Some("not-a-jwt"), &node_name).await.expect_err("bad token");
    assert_eq!((reason, status.code()), ("bad_token", tonic::Code::Unauthenticated));

    let first = mesh_controller::ca::storage::load_or_create_secret(client.clone(), &ns, "cluster.local")
        .await
        .expect("generated into the Secret");
    let second = mesh_controller::ca::storage::load_or_create_secret(client.clone(), &ns, "cluster.local")
        .await
        .expect("read back");
    assert_eq!(first, second, "a second replica signs with the same root");

    // The trust bundle: created, left alone when current, updated when the roots change;
    // public certificates only.
    use k8s_openapi::api::core::v1::ConfigMap;
    use mesh_controller::ca::serving::{BUNDLE_CONFIGMAP, BUNDLE_KEY, publish_bundle};
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    publish_bundle(client.clone(), &ns, &first.bundle_pem).await.expect("created");
    let created = configmaps.get(BUNDLE_CONFIGMAP).await.expect("ConfigMap");
    let data = created.data.clone().expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), vec![BUNDLE_KEY]);
    assert_eq!(data[BUNDLE_KEY], first.bundle_pem);
    assert!(!data[BUNDLE_KEY].contains("PRIVATE KEY"));
    publish_bundle(client.clone(), &ns, &first.bundle_pem).await.expect("unchanged");
    let unchanged = configmaps.get(BUNDLE_CONFIGMAP).await.expect("ConfigMap");
    assert_eq!(unchanged.metadata.resource_version, created.metadata.resource_version, "no needless write");
    let rotated = mesh_controller::ca::authority::CaMaterial::generate(
        "cluster.local",
        time::OffsetDateTime::now_utc(),
    )
    .expect("another root");
    publish_bundle(client.clone(), &ns, &rotated.bundle_pem).await.expect("updated");
    let updated = configmaps.get(BUNDLE_CONFIGMAP).await.expect("ConfigMap");
    assert_eq!(updated.data.expect("data")[BUNDLE_KEY], rotated.bundle_pem);

    nodes.delete(&node_name, &DeleteParams::default()).await.expect("delete node");
    namespaces.delete(&ns, &DeleteParams::default()).await.expect("delete namespace");
}

/// An edited Secret weft-ca replaces the signing CA of a running controller; an edit that
/// cannot sign is refused and the previous CA keeps signing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_ca_secret_replaces_the_signing_ca_without_a_restart() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use mesh_controller::ca::authority::{Authority, CaMaterial};
    use mesh_controller::ca::reload::{Reloader, SigningAuthority, follow_secret};
    use mesh_controller::ca::storage::{SECRET_NAME, load_or_create_secret};

    let Some(client) = client().await else { return };
    let ns = unique("weft-ca-reload");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(&namespaces, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await;
    let now = time::OffsetDateTime::now_utc();
    let first = load_or_create_secret(client.clone(), &ns, "cluster.local").await.expect("generated");
    let signing = SigningAuthority::new(Authority::new("cluster.local", &first, now).expect("authority"));
    let metrics = std::sync::Arc::new(mesh_controller::ca::CaMetrics::default());
    let follower = tokio::spawn(follow_secret(
        client.clone(),
        ns.clone(),
        Reloader::new(signing.clone(), first.clone(), metrics.clone()),
    ));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let put = |material: CaMaterial| {
        let secrets = secrets.clone();
        async move {
            let mut secret = secrets.get(SECRET_NAME).await.expect("Secret");
            secret.data = Some(
                [
                    ("tls.crt", material.chain_pem),
                    ("tls.key", material.key_pem),
                    ("ca.crt", material.bundle_pem),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
            );
            secrets.replace(SECRET_NAME, &PostParams::default(), &secret).await.expect("replace Secret");
        }
    };

    // Rotation step 1: the new root beside the old in ca.crt.
    let next = CaMaterial::generate("cluster.local", now).expect("next root");
    let both = CaMaterial { bundle_pem: format!("{}{}", first.bundle_pem, next.bundle_pem), ..first.clone() };
    put(both).await;
    eventually("both roots trusted", || async {
        let roots = signing.current().roots().len();
        if roots == 2 { Ok(()) } else { Err(format!("{roots} roots")) }
    })
    .await;

    // A broken edit (another root's key): refused, counted, both roots still trusted.
    put(CaMaterial { key_pem: next.key_pem.clone(), ..first.clone() }).await;
    eventually("the refusal counted", || async {
        let rendered = metrics.render();
        if rendered.contains("weft_ca_reloads_total{result=\"refused\"} 1") { Ok(()) } else { Err(rendered) }
    })
    .await;
    assert_eq!(signing.current().roots().len(), 2, "the previous CA keeps signing");

    // Step 2: the new root signs.
    let signs_with_next =
        CaMaterial { bundle_pem: format!("{}{}", first.bundle_pem, next.bundle_pem), ..next.clone() };
    put(signs_with_next).await;
    let before = signing.current().roots_pem();
    eventually("the new key signs", || async {
        let rendered = metrics.render();
        if rendered.contains("weft_ca_reloads_total{result=\"replaced\"} 2") { Ok(()) } else { Err(rendered) }
    })
    .await;
    assert_eq!(signing.current().roots_pem(), before, "the same two roots");

    follower.abort();
    namespaces.delete(&ns, &DeleteParams::default()).await.expect("delete namespace");
}

/// Kinds served only at an older version than the group's preferred one (TCPRoute and UDPRoute
/// are v1alpha2 while the group prefers v1) are watched too, not taken as missing.
#[tokio::test]
async fn every_served_gateway_api_kind_is_watched_whatever_its_version() {
    let Some(client) = client().await else { return };
    let (tx, _rx) = tokio::sync::mpsc::channel(1024);
    let watched = mesh_controller::kube_source::start_watches(&client, tx).await;
    use mesh_controller::store::Kind;
    for kind in
        [Kind::Gateway, Kind::HttpRoute, Kind::GrpcRoute, Kind::TlsRoute, Kind::TcpRoute, Kind::UdpRoute]
    {
        assert!(watched.contains(&kind), "{kind:?} is not watched: {watched:?}");
    }
}

/// Polls `check` until it yields a value, or panics with what it last said.
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what} did not happen within {SETTLE:?}: {last}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn gateway_condition(gw: &Value, type_: &str) -> (String, String) {
    let c = gw["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == type_));
    c.map(|c| {
        (c["status"].as_str().unwrap_or("").to_string(), c["reason"].as_str().unwrap_or("").to_string())
    })
    .unwrap_or_default()
}

fn service_ports(service: &Value) -> Vec<(i64, i64, String)> {
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["port"].as_i64().unwrap_or(0),
                p["targetPort"].as_i64().unwrap_or(0),
                p["protocol"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gateway_gets_a_service_with_its_ports_its_type_and_a_pool_address() {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use mesh_controller::resolve::exposure::ServiceSettings;

    let Some(client) = client().await else { return };
    let _turn = LEADERS.lock().await;
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let ns = unique("weft-svc");
    let proxies_ns = unique("weft-proxies");
    let class = unique("weft-svc");
    let other_class = unique("weft-svc-b");
    let proxy_label = unique("weft-node");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [&ns, &proxies_ns] {
        create(&namespaces, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
            .await;
    }
    let classes: Api<GatewayClass> = Api::all(client.clone());
    for name in [&class, &other_class] {
        create(
            &classes,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": name}, "spec": {"controllerName": "weft.dev/gateway-controller"}}),
        )
        .await;
    }
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    let gw = create(
        &gateways,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": ns},
        "spec": {"gatewayClassName": class, "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
    )
    .await;
    let uid = gw.metadata.uid.clone().expect("uid");

    let pool: ipnet::IpNet = "10.250.200.0/24".parse().expect("pool");
    let settings = Settings {
        gateway_address_pool: Some(pool),
        gateway_services: Some(ServiceSettings {
            proxy_namespace: proxies_ns.clone(),
            proxy_selector: [("app.kubernetes.io/name".to_string(), proxy_label.clone())].into(),
        }),
        ..Settings::default()
    };
    let (controller, _publisher) = spawn_controller_with(client.clone(), true, settings);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let service_name = format!("edge-{class}");
    let get_json = |api: Api<Service>, name: String| async move {
        match api.get_opt(&name).await {
            Ok(Some(s)) => Ok(serde_json::to_value(&s).expect("json")),
            Ok(None) => Err(format!("no Service {name}")),
            Err(e) => Err(e.to_string()),
        }
    };

    // The Service: LoadBalancer, one port per listener port, owned by the Gateway, addressed
    // from the pool by Weft (status written), and the same address on the Gateway.
    let service = eventually("the Gateway's Service with a pool address", || {
        let (services, name) = (services.clone(), service_name.clone());
        async move {
            let s = get_json(services, name).await?;
            if s["status"]["loadBalancer"]["ingress"][0]["ip"].is_string() {
                Ok(s)
            } else {
                Err(format!("no load-balancer address yet: {s:#}"))
            }
        }
    })
    .await;
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["loadBalancerClass"], "weft.dev/address-pool");
    assert_eq!(service["spec"]["allocateLoadBalancerNodePorts"], false);
    assert_eq!(service["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"], "edge");
    let owner = &service["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str(), owner["uid"].as_str()),
        (Some("Gateway"), Some("edge"), Some(uid.as_str()))
    );
    assert_eq!(service_ports(&service), vec![(53, 53, "UDP".into()), (80, 80, "TCP".into())]);
    let ingress = &service["status"]["loadBalancer"]["ingress"][0];
    assert_eq!(ingress["ipMode"], "Proxy");
    let address = ingress["ip"].as_str().expect("ip").to_string();
    assert!(pool.contains(&address.parse::<std::net::IpAddr>().expect("an IP")), "{address}");
    let gateway_address = eventually("the pool address on the Gateway", || {
        let gateways = gateways.clone();
        async move {
            let gw =
                serde_json::to_value(gateways.get("edge").await.map_err(|e| e.to_string())?).expect("json");
            match gw["status"]["addresses"][0]["value"].as_str() {
                Some(a) => Ok(a.to_string()),
                None => Err(format!("{:#}", gw["status"])),
            }
        }
    })
    .await;
    assert_eq!(gateway_address, address, "the Service's load-balancer address is the Gateway's");
    let slice = eventually("the Service's EndpointSlice", || {
        let (slices, name) = (slices.clone(), format!("{service_name}-ipv4"));
        async move { slices.get_opt(&name).await.map_err(|e| e.to_string())?.ok_or(format!("no {name}")) }
    })
    .await;
    assert_eq!(
        slice.endpoints[0].addresses,
        vec![address.clone()],
        "the ClusterIP leads to the pool address"
    );

    // Listeners change: the ports follow.
    gateways
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"listeners": [
                {"name": "http", "port": 8080, "protocol": "HTTP"},
                {"name": "tls", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}]}})),
        )
        .await
        .expect("edit listeners");
    eventually("the Service's ports following the listeners", || {
        let (services, name) = (services.clone(), service_name.clone());
        async move {
            let s = get_json(services, name).await?;
            let ports = service_ports(&s);
            if ports == vec![(8080, 8080, "TCP".to_string()), (8443, 8443, "TCP".to_string())] {
                Ok(())
            } else {
                Err(format!("ports {ports:?}"))
            }
        }
    })
    .await;

    // A node proxy runs (its status written by hand: there is no kubelet here), and the
    // Gateway's own parameters ask for NodePort: the Service becomes NodePort and the
    // Gateway's address the proxy's node's.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &proxies_ns);
    create(
        &pods,
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "proxy-a", "namespace": proxies_ns, "labels": {"app.kubernetes.io/name": proxy_label}},
        "spec": {"containers": [{"name": "proxy", "image": "weft.local/weft-proxy:dev"}]}}),
    )
    .await;
    pods.patch_status(
        "proxy-a",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Running", "hostIP": "192.0.2.10", "hostIPs": [{"ip": "192.0.2.10"}],
            "conditions": [{"type": "Ready", "status": "True"}]}}),
        ),
    )
    .await
    .expect("proxy status");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for (name, service_type) in [("node-port", "NodePort"), ("bad", "Ingress")] {
        create(
            &config_maps,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": {"service.type": service_type}}),
        )
        .await;
    }
    let set_parameters = |name: &'static str| {
        let gateways = gateways.clone();
        async move {
            gateways
                .patch(
                    "edge",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"infrastructure": {"parametersRef": {"group": "", "kind": "ConfigMap", "name": name}}}})),
                )
                .await
                .expect("set parametersRef");
        }
    };
    set_parameters("node-port").await;
    let service = eventually("a NodePort Service", || {
        let (services, name) = (services.clone(), service_name.clone());
        async move {
            let s = get_json(services, name).await?;
            if s["spec"]["type"] == "NodePort" { Ok(s) } else { Err(format!("type {}", s["spec"]["type"])) }
        }
    })
    .await;
    assert!(service["spec"]["loadBalancerClass"].is_null(), "{:#}", service["spec"]);
    assert!(service["spec"]["ports"][0]["nodePort"].is_i64(), "node ports allocated: {:#}", service["spec"]);
    eventually("the proxy's node address on the Gateway", || {
        let gateways = gateways.clone();
        async move {
            let gw =
                serde_json::to_value(gateways.get("edge").await.map_err(|e| e.to_string())?).expect("json");
            if gw["status"]["addresses"] == json!([{"type": "IPAddress", "value": "192.0.2.10"}]) {
                Ok(())
            } else {
                Err(format!("{:#}", gw["status"]))
            }
        }
    })
    .await;
    let slice = slices.get(&format!("{service_name}-ipv4")).await.expect("EndpointSlice");
    assert_eq!(slice.endpoints[0].addresses, vec!["192.0.2.10".to_string()]);

    // Invalid parameters: the Gateway is not accepted, and its Service goes.
    set_parameters("bad").await;
    eventually("Accepted=False InvalidParameters and no Service", || {
        let (gateways, services, name) = (gateways.clone(), services.clone(), service_name.clone());
        async move {
            let gw =
                serde_json::to_value(gateways.get("edge").await.map_err(|e| e.to_string())?).expect("json");
            let accepted = gateway_condition(&gw, "Accepted");
            let service = services.get_opt(&name).await.map_err(|e| e.to_string())?;
            if accepted == ("False".into(), "InvalidParameters".into()) && service.is_none() {
                Ok(())
            } else {
                Err(format!("Accepted {accepted:?}, Service present: {}", service.is_some()))
            }
        }
    })
    .await;

    // Valid again, then the Gateway changes class: the old class's Service goes, the new one's
    // comes.
    set_parameters("node-port").await;
    eventually("the Service back", || {
        let (services, name) = (services.clone(), service_name.clone());
        async move { get_json(services, name).await.map(drop) }
    })
    .await;
    gateways
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gatewayClassName": other_class}})),
        )
        .await
        .expect("change class");
    let new_name = format!("edge-{other_class}");
    eventually("the Service renamed with the class", || {
        let (services, old, new) = (services.clone(), service_name.clone(), new_name.clone());
        async move {
            let old_there = services.get_opt(&old).await.map_err(|e| e.to_string())?.is_some();
            let new_there = services.get_opt(&new).await.map_err(|e| e.to_string())?.is_some();
            if !old_there && new_there { Ok(()) } else { Err(format!("old {old_there}, new {new_there}")) }
        }
    })
    .await;
    assert!(
        slices.get_opt(&format!("{service_name}-ipv4")).await.expect("get").is_none(),
        "the old Service's EndpointSlice went with it"
    );

    // A class whose parametersRef names a missing ConfigMap is not accepted.
    let bad_class = unique("weft-svc-bad");
    create(
        &classes,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": bad_class},
        "spec": {"controllerName": "weft.dev/gateway-controller",
                 "parametersRef": {"group": "", "kind": "ConfigMap", "namespace": ns, "name": "missing"}}}),
    )
    .await;
    eventually("the class Accepted=False InvalidParameters", || {
        let (classes, name) = (classes.clone(), bad_class.clone());
        async move {
            let c = serde_json::to_value(classes.get(&name).await.map_err(|e| e.to_string())?).expect("json");
            let accepted = gateway_condition(&c, "Accepted");
            if accepted == ("False".into(), "InvalidParameters".into()) {
                Ok(())
            } else {
                Err(format!("{accepted:?}"))
            }
        }
    })
    .await;

    // The Gateway is deleted: its Service goes (the garbage collector follows the owner
    // reference; the controller deletes what no Gateway wants, whichever comes first).
    gateways.delete("edge", &DeleteParams::default()).await.expect("delete Gateway");
    eventually("the Service gone with its Gateway", || {
        let (services, name) = (services.clone(), new_name.clone());
        async move {
            match services.get_opt(&name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".into()),
            }
        }
    })
    .await;

    controller.abort();
    for name in [&ns, &proxies_ns] {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
    for name in [&class, &other_class, &bad_class] {
        let _ = classes.delete(name, &DeleteParams::default()).await;
    }
}
