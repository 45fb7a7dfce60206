use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_api::identity::SpiffeId;
use mesh_controller::app;
use mesh_controller::resolve::exposure::{ServiceSettings, parse_selector};

/// weft-controller: resolves the Gateway API into config for the node proxies and writes status.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Read objects from the YAML files in this folder (standalone mode) instead of a cluster.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// Resolve once, print every computed status as YAML to stdout and a config summary to
    /// stderr, and exit.
    #[arg(long, requires = "manifests")]
    once: bool,
    /// Where the config stream (gRPC) listens for node proxies.
    #[arg(long, default_value = "127.0.0.1:15010")]
    config_addr: SocketAddr,
    /// Where `/ready`, `/metrics` and `/config_dump` are served.
    #[arg(long, default_value = "127.0.0.1:15014")]
    admin_addr: SocketAddr,
    /// SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Namespace of the leader-election Lease (the controller's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system")]
    namespace: String,
    /// This replica's name in leader election.
    #[arg(long, env = "POD_NAME", default_value = "weft-controller")]
    identity: String,
    /// Standalone certificate authority: a folder holding the CA (`tls.crt`, `tls.key`,
    /// `ca.crt`; a root is generated there when it is empty). Needs --node-tokens.
    #[arg(long, value_name = "DIR", requires_all = ["manifests", "node_tokens"])]
    ca_dir: Option<PathBuf>,
    /// Standalone: a file of `<node> <token>` lines, the tokens node proxies sign in with.
    #[arg(long, value_name = "FILE", requires = "ca_dir")]
    node_tokens: Option<PathBuf>,
    /// The node proxies' ServiceAccount, in --namespace: only its tokens get certificates.
    #[arg(long, default_value = "weft-proxy")]
    proxy_service_account: String,
    /// Give each Gateway that names no `spec.addresses` an address of its own from this CIDR
    /// (where no load-balancer provider exists; the node proxies serve it). Without it, such
    /// Gateways are served on 127.0.0.1.
    #[arg(long, value_name = "CIDR")]
    gateway_address_pool: Option<ipnet::IpNet>,
    /// Expose each Gateway with a Service of its own (type LoadBalancer unless its parameters
    /// say otherwise; see the README), writing its addresses to the Gateway's status. The
    /// labels (`key=value,...`) of the node proxy Pods in --namespace: NodePort Gateways are
    /// served on their nodes' addresses. Without it, no Services are created. Cluster mode
    /// only.
    #[arg(long, value_name = "LABELS", conflicts_with = "manifests")]
    gateway_service_selector: Option<String>,
    /// DNS suffix of Service hostnames.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Extra DNS names or IP addresses of the gRPC port's serving certificate (repeat, or
    /// comma-separate). It always holds weft-controller.<namespace>.svc[.<cluster-domain>] in a
    /// cluster; localhost, 127.0.0.1, ::1 and the --config-addr IP standalone.
    #[arg(long = "serving-name", value_name = "NAME", value_delimiter = ',')]
    serving_names: Vec<String>,
    /// INSECURE, local tests only: serve the config stream and CA without TLS; without a CA
    /// (--ca-dir), any client may then subscribe as any node and read Gateway private keys.
    #[arg(long)]
    insecure_plaintext: bool,
}

fn main() -> ExitCode {
    app::init_logging();
    let args = Args::parse();
    let gateway_services = match args.gateway_service_selector.as_deref().map(parse_selector).transpose() {
        Ok(selector) => selector.map(|proxy_selector| ServiceSettings {
            proxy_namespace: args.namespace.clone(),
            proxy_selector,
        }),
        Err(e) => {
            eprintln!("weft-controller: error: --gateway-service-selector: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = mesh_controller::resolve::Settings {
        trust_domain: args.trust_domain,
        cluster_domain: args.cluster_domain,
        gateway_address_pool: args.gateway_address_pool,
        gateway_services,
        ..Default::default()
    };
    let proxy_identity =
        match SpiffeId::new(&settings.trust_domain, &args.namespace, &args.proxy_service_account) {
            Ok(id) => id,
            Err(e) => {
                eprintln!(
                    "weft-controller: error: --trust-domain, --namespace or --proxy-service-account: {e}"
                );
                return ExitCode::from(2);
            }
        };
    let standalone_ca = match (args.ca_dir, args.node_tokens) {
        (Some(dir), Some(node_tokens)) => Some(app::StandaloneCa { dir, node_tokens, proxy_identity }),
        _ => None,
    };
    let security =
        app::PortSecurity { serving_names: args.serving_names, insecure_plaintext: args.insecure_plaintext };
    let result = match (&args.manifests, args.once) {
        (Some(dir), true) => app::once(dir, &settings),
        (Some(dir), false) => app::serve_manifests(
            dir.clone(),
            settings,
            args.config_addr,
            args.admin_addr,
            standalone_ca,
            security,
        ),
        (None, _) => {
            let cluster_domain = settings.cluster_domain.clone();
            app::serve_cluster(
                settings,
                app::ClusterSettings {
                    namespace: args.namespace,
                    identity: args.identity,
                    proxy_service_account: args.proxy_service_account,
                    cluster_domain,
                },
                args.config_addr,
                args.admin_addr,
                security,
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-controller: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
