//! The certificate authority over a real gRPC connection on loopback: a node proxy's CSR is
//! signed only with a good token and only for identities of pods on its node.

use mesh_api::identity::SpiffeId;
use mesh_api::model::{Config, ObjectKey, Workload};
use mesh_api::proto::SignRequest;
use mesh_api::proto::certificates_client::CertificatesClient;
use mesh_controller::ca::CertificateService;
use mesh_controller::config_server::Publisher;
use rcgen::{CertificateParams, KeyPair, SanType, string::Ia5String};
use tonic::Code;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const PROXY: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-proxy";

fn cluster() -> Config {
    let mut config = Config::default();
    config.insert_workload(Workload {
        key: ObjectKey::new("shop", "web-1"),
        ips: vec!["10.1.0.5".parse().expect("ip")],
        node: "node-a".into(),
        service_account: "web".into(),
        identity: WEB.into(),
        meshed: true,
        ready: true,
    });
    config
}

async fn start() -> (String, mesh_controller::ca::CertificateService) {
    let publisher = Publisher::new();
    publisher.publish(cluster());
    let proxy: SpiffeId = PROXY.parse().expect("id");
    let tokens = [("token-a", "node-a"), ("token-b", "node-b")];
    let service =
        CertificateService::ephemeral("cluster.local", &tokens, &proxy, publisher.clone()).expect("CA");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    // Plaintext: the CA's decisions are under test here, the port's TLS in
    // mesh-proxy/tests/controller_tls.rs.
    let security = mesh_controller::app::GrpcSecurity::insecure(Some(&service));
    tokio::spawn(mesh_controller::app::serve(
        publisher,
        Some(service.clone()),
        listener,
        security,
        std::future::pending(),
    ));
    (format!("http://{addr}"), service)
}

fn csr_for(uri: &str) -> Vec<u8> {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri).expect("ia5"))];
    params.serialize_request(&key).expect("csr").der().to_vec()
}

async fn sign(
    url: &str,
    token: Option<&str>,
    identity: &str,
    csr_der: Vec<u8>,
) -> Result<mesh_api::proto::SignResponse, tonic::Status> {
    let mut client = CertificatesClient::connect(url.to_string()).await.expect("connect");
    let mut request = tonic::Request::new(SignRequest { identity: identity.into(), csr_der, ttl_seconds: 0 });
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    client.sign(request).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn signs_for_a_pod_on_the_callers_node_and_refuses_everything_else() {
    let (url, service) = start().await;

    let signed = sign(&url, Some("token-a"), WEB, csr_for(WEB)).await.expect("signed");
    assert_eq!(signed.chain_der.len(), 1);
    assert_eq!(signed.trust_bundle_der.len(), 1);
    assert!(signed.not_after - signed.not_before >= 24 * 3600);

    let own =
        sign(&url, Some("token-b"), PROXY, csr_for(PROXY)).await.expect("a proxy gets its own identity");
    assert_eq!(own.chain_der.len(), 1);

    let cases = [
        (None, WEB, csr_for(WEB), Code::Unauthenticated, "no bearer token"),
        (Some("forged"), WEB, csr_for(WEB), Code::Unauthenticated, "not valid"),
        (Some("token-b"), WEB, csr_for(WEB), Code::PermissionDenied, "no pod with identity"),
        (
            Some("token-a"),
            "spiffe://cluster.local/ns/shop",
            csr_for(WEB),
            Code::InvalidArgument,
            "not a workload identity",
        ),
        (Some("token-a"), WEB, b"garbage".to_vec(), Code::InvalidArgument, "cannot be parsed"),
        (Some("token-a"), WEB, csr_for(PROXY), Code::InvalidArgument, "exactly one subject alternative name"),
    ];
    for (token, identity, csr, code, message) in cases {
        let status = sign(&url, token, identity, csr).await.expect_err("refused");
        assert_eq!(status.code(), code, "{token:?} {identity}: {status:?}");
        assert!(status.message().contains(message), "{token:?} {identity}: {}", status.message());
    }
    let metrics = service.metrics.render();
    assert!(metrics.contains("weft_ca_signed_total 2"), "{metrics}");
    assert!(metrics.contains("weft_ca_refused_total{reason=\"bad_token\"} 1"), "{metrics}");
    assert!(metrics.contains("weft_ca_refused_total{reason=\"not_on_node\"} 1"), "{metrics}");
    assert!(metrics.contains("weft_ca_refused_total{reason=\"bad_csr\"} 2"), "{metrics}");
}
