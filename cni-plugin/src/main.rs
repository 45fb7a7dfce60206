//! weft-cni: run by the container runtime as a CNI plugin (CNI_COMMAND set), or by the
//! DaemonSet as `weft-cni install` / `weft-cni uninstall`.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cni_plugin::install::{self, InstallOptions};
use cni_plugin::netconf::{CniError, Env, code};

#[derive(Parser)]
#[command(name = "weft-cni", version, about = "Weft's chained CNI plugin and its node agent")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Dirs {
    /// The host's CNI binary dir.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The host's CNI network config dir.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The proxy's in-pod socket (written into the plugin config; the repair loop uses it).
    #[arg(long, env = "WEFT_INPOD_SOCKET", default_value = mesh_api::inpod::DEFAULT_SOCKET)]
    proxy_socket: PathBuf,
    /// Where the plugin records live meshed pods.
    #[arg(long, env = "WEFT_CNI_STATE_DIR", default_value = cni_plugin::state::DEFAULT_DIR)]
    state_dir: PathBuf,
    /// A kubeconfig for the plugin's lookups (written into the plugin config).
    #[arg(long, env = "WEFT_CNI_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name. When set, `install` also enrols pods that were already running when
    /// their namespace was labelled for the mesh (and un-enrols them when it no longer is).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The kubeconfig of that enrolment agent (a path in the installer's own filesystem);
    /// default: in-cluster config.
    #[arg(long, env = "WEFT_CNI_AGENT_KUBECONFIG")]
    agent_kubeconfig: Option<PathBuf>,
    /// The host's procfs (the agent finds pods' netns through their processes).
    #[arg(long, env = "WEFT_CNI_PROC_DIR", default_value = "/proc")]
    proc_dir: PathBuf,
    /// Where the container runtime pins pods' netns.
    #[arg(long, env = "WEFT_CNI_NETNS_DIR", default_value = "/var/run/netns")]
    netns_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Install into the host's CNI config, keep it there, re-hand pods to a restarted proxy;
    /// uninstall on SIGTERM.
    Install(Dirs),
    /// Remove from the host's CNI config and bin dir.
    Uninstall(Dirs),
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return cni();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours only on a terminal: `kubectl logs` would show the escape codes as text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    let (dirs, install) = match args.command {
        Command::Install(dirs) => (dirs, true),
        Command::Uninstall(dirs) => (dirs, false),
    };
    let options = InstallOptions {
        cni_bin_dir: dirs.cni_bin_dir,
        cni_conf_dir: dirs.cni_conf_dir,
        proxy_socket: dirs.proxy_socket,
        state_dir: dirs.state_dir,
        kubeconfig: dirs.kubeconfig,
        binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
        enrol: dirs.node_name.filter(|n| !n.is_empty()).map(|node_name| install::EnrolOptions {
            node_name,
            kubeconfig: dirs.agent_kubeconfig,
            finder: cni_plugin::netns_finder::NetnsFinder {
                proc_dir: dirs.proc_dir,
                pinned_dirs: vec![dirs.netns_dir],
            },
        }),
    };
    let result = if install {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(install::run(options)))
    } else {
        install::uninstall(&options)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-cni: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The plugin: result or error JSON on stdout, logs to stderr (the runtime keeps both).
fn cni() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_CNI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let env = Env::from_vars(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    let result = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => cni_plugin::plugin::run(&env, &stdin),
        Err(e) => Err(CniError::new(code::DECODING, "cannot read the network configuration", e)),
    };
    let mut out = std::io::stdout().lock();
    match result {
        Ok(output) => {
            if let Some(output) = output {
                let _ = writeln!(out, "{output}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = writeln!(out, "{}", serde_json::to_string(&error).unwrap_or_default());
            ExitCode::FAILURE
        }
    }
}
