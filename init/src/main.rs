//! weft-init: installs (or removes) a pod's interception rules in the current network
//! namespace. It is the init-container fallback for clusters where weft-cni cannot be
//! installed: run it as a privileged init container (NET_ADMIN) with the pod's annotations
//! passed through the environment (the downward API).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;

use clap::Parser;
use mesh_init::annotations::{EXCLUDE_INBOUND_PORTS, EXCLUDE_OUTBOUND_CIDRS, EXCLUDE_OUTBOUND_PORTS};
use mesh_init::{Exclusions, Settings};

#[derive(Parser)]
#[command(name = "weft-init", version, about = "Install Weft's interception rules in this network namespace")]
struct Args {
    /// Comma-separated ports (and ranges) whose inbound connections skip the proxy.
    #[arg(long, env = "WEFT_EXCLUDE_INBOUND_PORTS", default_value = "")]
    exclude_inbound_ports: String,
    /// Comma-separated destination ports (and ranges) that bypass the proxy outbound.
    #[arg(long, env = "WEFT_EXCLUDE_OUTBOUND_PORTS", default_value = "")]
    exclude_outbound_ports: String,
    /// Comma-separated destination CIDRs that bypass the proxy outbound.
    #[arg(long, env = "WEFT_EXCLUDE_OUTBOUND_CIDRS", default_value = "")]
    exclude_outbound_cidrs: String,
    /// Source addresses (the node's, for kubelet probes) whose inbound connections skip the proxy.
    #[arg(long, env = "WEFT_PROBE_SOURCES", value_delimiter = ',')]
    probe_source: Vec<IpAddr>,
    /// Print the nftables JSON transaction instead of applying it.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules instead.
    #[arg(long, conflicts_with = "dry_run")]
    remove: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-init: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.remove {
        mesh_init::remove()?;
        return Ok(());
    }
    let annotations: BTreeMap<String, String> = [
        (EXCLUDE_INBOUND_PORTS, args.exclude_inbound_ports),
        (EXCLUDE_OUTBOUND_PORTS, args.exclude_outbound_ports),
        (EXCLUDE_OUTBOUND_CIDRS, args.exclude_outbound_cidrs),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let settings = Settings {
        exclusions: Exclusions::from_annotations(&annotations)?,
        probe_sources: args.probe_source,
        ..Settings::default()
    };
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&settings.ruleset())?);
        return Ok(());
    }
    let applied = mesh_init::apply(&settings)?;
    if let Err(error) = applied.return_route {
        // The pod is meshed; only the app's view of its callers' addresses is lost.
        eprintln!(
            "weft-init: warning: no return route for kept source addresses ({error}): the app will see \
             inbound mesh connections coming from its own address"
        );
    }
    Ok(())
}
