//! What the benches share: the processes they start (killed on drop), what they read off the
//! machine (CPU time and memory of a process from /proc, the machine's description, the load
//! average) and how they summarise repeats (medians, spreads).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

pub fn as_f64(values: &[u64]) -> Vec<f64> {
    values.iter().map(|v| *v as f64).collect()
}

/// User + system CPU seconds of a process so far (all its threads).
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_times(pid).total()
}

/// CPU seconds a process has used, split by where: its own code (user) and the kernel on its
/// behalf (system: syscalls, and the softirq work the kernel charges to it). The split tells
/// which part of a proxy's cost any change to its code could remove at all.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

impl CpuTimes {
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;

    fn sub(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes { user: self.user - earlier.user, system: self.system - earlier.system }
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;

    fn add(self, other: CpuTimes) -> CpuTimes {
        CpuTimes { user: self.user + other.user, system: self.system + other.system }
    }
}

/// A process's user and system CPU seconds so far (all its threads); zero for a process that
/// is gone (the benches check separately that their processes are still alive).
pub fn cpu_times(pid: u32) -> CpuTimes {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let (user, system) = stat_ticks(&stat).unwrap_or((0, 0));
    let hz = clock_ticks();
    CpuTimes { user: user as f64 / hz, system: system as f64 / hz }
}

/// utime and stime (clock ticks) from the text of /proc/<pid>/stat.
fn stat_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) is in parentheses and may itself hold spaces and ')': the
    // fields after it start after the *last* ')'. utime and stime are fields 14 and 15, so 12
    // and 13 after the name (state is the first).
    let (_, rest) = stat.rsplit_once(')')?;
    let mut after_name = rest.split_whitespace().skip(11);
    let user = after_name.next()?.parse().ok()?;
    let system = after_name.next()?.parse().ok()?;
    Some((user, system))
}

fn clock_ticks() -> f64 {
    // Asked once: a bench reads CPU times around every run, and a fork per read would be
    // charged to the load generator's core.
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok();
        out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
    })
}

/// `<cores> cores (<CPU model>), Linux <kernel>`.
pub fn machine(cores: usize) -> String {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.unwrap_or_default())
}

/// A child process, killed and reaped on drop.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(name: &'static str, mut command: Command, dir: &Path) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proc { name, child, log })
}

pub fn min_max(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() { (0.0, 0.0) } else { (min, max) }
}

/// A numeric field of /proc/<pid>/status (`VmRSS` in kB, `Threads`).
pub fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples a process's VmRSS every 100 ms until dropped; keeps the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: Option<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = pid.map(|pid| {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                // Bounded: a run lasts seconds; the cap is a guard, not a schedule.
                for _ in 0..6000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    peak.fetch_max(status_field(pid, "VmRSS"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        });
        RssSampler { stop, peak, thread }
    }

    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `N` free loopback ports, all different: each is held bound until all are picked (one at a
/// time, the kernel may hand the port it just freed out again, and two servers of one run
/// would then be configured on the same port).
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

pub fn uptime() -> String {
    let out = Command::new("uptime").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    out.unwrap_or_default()
}

/// How the machine's idle CPUs wait, read from sysfs and the kernel command line (a bench only
/// reads them, never changes them), and how the kernel accounts CPU time: both shape what
/// any proxy's added latency and CPU per request can be here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdleSettings {
    /// /sys/devices/system/cpu/cpuidle/current_driver (`haltpoll`, `intel_idle`, …).
    pub driver: Option<String>,
    /// /sys/devices/system/cpu/cpuidle/current_governor (or `_ro`).
    pub governor: Option<String>,
    /// /sys/module/haltpoll/parameters/guest_halt_poll_ns: how long an idle vCPU polls before
    /// it halts (and waking it then takes the host).
    pub guest_halt_poll_ns: Option<String>,
    /// The kernel command line's idle-related arguments.
    pub cmdline: Vec<String>,
    /// From /proc/config.gz: how utime/stime are measured (`tick` or `precise`), and HZ.
    pub accounting: Option<String>,
}

impl IdleSettings {
    pub fn read() -> IdleSettings {
        let read = |path: &str| {
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        };
        let config = Command::new("zcat")
            .arg("/proc/config.gz")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        IdleSettings {
            driver: read("/sys/devices/system/cpu/cpuidle/current_driver"),
            governor: read("/sys/devices/system/cpu/cpuidle/current_governor")
                .or_else(|| read("/sys/devices/system/cpu/cpuidle/current_governor_ro")),
            guest_halt_poll_ns: read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
            cmdline: idle_arguments(&read("/proc/cmdline").unwrap_or_default()),
            accounting: cpu_accounting(&config),
        }
    }

    /// An idle vCPU halts at once, with no poll window: every wake-up of an idle process on
    /// another vCPU goes through the host.
    pub fn halts_at_once(&self) -> bool {
        self.driver.as_deref() == Some("haltpoll") && self.guest_halt_poll_ns.as_deref() == Some("0")
    }

    /// One line for a report's header.
    pub fn line(&self) -> String {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        let mut line = format!(
            "cpuidle driver `{}`, governor `{}`",
            or_unknown(&self.driver),
            or_unknown(&self.governor)
        );
        if let Some(ns) = &self.guest_halt_poll_ns {
            line.push_str(&format!(", guest_halt_poll_ns `{ns}`"));
        }
        if !self.cmdline.is_empty() {
            line.push_str(&format!(" (kernel command line: `{}`)", self.cmdline.join(" ")));
        }
        if let Some(accounting) = &self.accounting {
            line.push_str(&format!("; CPU time accounting: {accounting}"));
        }
        line
    }

    /// The header paragraph of a report with floor rows: the idle settings, and what the
    /// floors measure (`floors`: their description, with its verb, e.g. "The floor rows measure").
    pub fn paragraph(&self, floors: &str) -> String {
        let wake = if self.halts_at_once() {
            "Idle vCPUs halt at once here (no poll window), so a request that finds a proxy idle on\n\
             another vCPU pays for waking it through the host: at 1k req/s nearly every request does, at\n\
             max load few do. "
        } else {
            ""
        };
        let split = if self.accounting.as_deref().is_some_and(|a| a.starts_with("tick")) {
            "\n\nThe user/kernel split of CPU time comes from /proc/<pid>/stat, where this kernel divides a\n\
             process's exact run time by where its timer-tick samples landed (and reports it in 10 ms\n\
             units): on a busy core (ingress max tables) the split is sound; at 1k req/s a proxy runs in\n\
             bursts of tens of µs, mostly between ticks, so there it is a rough estimate (the sum stays\n\
             exact)."
        } else {
            ""
        };
        format!(
            "CPU idle settings (read from sysfs, never changed): {}.\n\n{wake}{floors} the part of the added\n\
             latency and CPU that any user-space proxy pays on this machine, whatever its code does; what a\n\
             proxy adds above its floor is what its own work costs.{split}\n",
            self.line()
        )
    }
}

/// The idle-related arguments of a kernel command line.
fn idle_arguments(cmdline: &str) -> Vec<String> {
    const PREFIXES: [&str; 6] =
        ["haltpoll.", "cpuidle_haltpoll.", "cpuidle.", "idle=", "intel_idle.", "processor.max_cstate"];
    cmdline
        .split_whitespace()
        .take_while(|arg| *arg != "--")
        .filter(|arg| PREFIXES.iter().any(|p| arg.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// How the kernel measures utime/stime, from its config: `tick (HZ 250)` when it samples
/// them at the timer tick, `precise` when it accounts every user/kernel transition.
fn cpu_accounting(config: &str) -> Option<String> {
    let set = |option: &str| config.lines().any(|l| l.trim() == format!("{option}=y"));
    let hz = config.lines().find_map(|l| l.strip_prefix("CONFIG_HZ=")).map(str::trim);
    let hz = hz.map(|hz| format!(" (HZ {hz})")).unwrap_or_default();
    if set("CONFIG_VIRT_CPU_ACCOUNTING_GEN") || set("CONFIG_VIRT_CPU_ACCOUNTING_NATIVE") {
        Some("precise".into())
    } else if set("CONFIG_TICK_CPU_ACCOUNTING") {
        Some(format!("tick{hz}"))
    } else {
        None
    }
}

/// Finds a number right after `marker` in `text`.
pub fn number_after(text: &str, marker: &str) -> Option<f64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let token: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    token.parse().ok()
}

pub fn which(tool: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| p.is_file()))
        .with_context(|| format!("{tool} is not on PATH"))
}

/// First line a tool prints about its version (on stdout or stderr).
pub fn version(program: &str, arg: &str) -> String {
    let out = Command::new(program).arg(arg).output();
    out.map(|o| {
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        text.lines().next().unwrap_or("").trim().to_string()
    })
    .unwrap_or_default()
}

pub fn spread(values: &[f64], decimals: usize) -> String {
    let (min, max) = min_max(values);
    format!("{:.*} [{:.*}–{:.*}]", decimals, median(values), decimals, min, decimals, max)
}

pub fn first_load(uptime: &str) -> f64 {
    number_after(uptime, "load average:").unwrap_or(0.0)
}

/// The workspace root (the folder above xtask).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// When, at which commit and on what machine a run happened, for its report.
pub struct RunInfo {
    /// `2026-11-24 12:00 UTC`.
    pub date: String,
    /// The short commit of the workspace.
    pub commit: String,
    /// See [`machine`].
    pub machine: String,
}

impl RunInfo {
    pub fn now() -> RunInfo {
        let output = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .current_dir(workspace_root())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        // The machine's cores, not this process's: `bench ingress` pins itself to one.
        let cores = std::fs::read_to_string("/proc/cpuinfo")
            .map(|text| text.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(0);
        RunInfo {
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: output("git", &["rev-parse", "--short", "HEAD"]),
            machine: machine(cores),
        }
    }
}

/// Percentile `p` (0–100) of unsorted samples, nearest rank.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `GET path` on a fresh HTTP/1.1 connection to `addr`: the whole answer, head and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// "met" or a bold "not met", for the targets' lines of a report.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of /proc/<pid>/stat whose command name holds spaces and ')' (a process may name
    /// itself anything): utime 1234 and stime 5678 are still fields 14 and 15.
    #[test]
    fn stat_ticks_reads_utime_and_stime_after_the_last_parenthesis() {
        let stat = "4242 (weft) proxy (x) 9) S 1 4242 4242 0 -1 4194560 1500 0 3 0 1234 5678 0 0 20 0 3 0 \
                    1000 12345678 2000 18446744073709551615 1 1 0 0 0 0 0 4096 17663 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(stat_ticks(stat), Some((1234, 5678)));
        let plain = "1 (init) S 0 1 1 0 -1 4194560 100 0 0 0 7 9 0 0 20 0 1 0 5 100 10";
        assert_eq!(stat_ticks(plain), Some((7, 9)));
    }

    /// A truncated or empty stat (the process is gone) reads as nothing, not as zeroes from the
    /// wrong fields.
    #[test]
    fn stat_ticks_of_a_truncated_line_is_none() {
        assert_eq!(stat_ticks(""), None);
        assert_eq!(stat_ticks("4242 (weft-proxy) S 1 4242 4242 0 -1 4194560 1500 0 3 0 1234"), None);
        assert_eq!(stat_ticks("4242 (weft-proxy) S 1 4242 4242 0 -1 4194560 1500 0 3 0 x 5678"), None);
    }

    /// This process's own times: both non-negative, and their sum is what cpu_seconds says.
    #[test]
    fn cpu_times_of_this_process_split_its_cpu_seconds() {
        let mut spin = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        let times = cpu_times(std::process::id());
        assert!(times.user >= 0.0 && times.system >= 0.0, "{times:?}");
        assert!(times.total() > 0.0, "{times:?}");
        let total = cpu_seconds(std::process::id());
        assert!(total >= times.total(), "{total} < {times:?}");
    }

    /// This VM's settings: haltpoll with no poll window halts at once; the line names them and
    /// the command line's idle arguments, not the rest of it.
    #[test]
    fn idle_settings_line_and_halts_at_once() {
        let cmdline = "console=ttyS0 quiet cpuidle_haltpoll.force=1 haltpoll.guest_halt_poll_ns=0 sched_vcpu_pack=15 \
                       rdinit=/init -- --addr 0.0.0.0:2024 idle=poll";
        let settings = IdleSettings {
            driver: Some("haltpoll".into()),
            governor: Some("haltpoll".into()),
            guest_halt_poll_ns: Some("0".into()),
            cmdline: idle_arguments(cmdline),
            accounting: cpu_accounting(
                "# CONFIG_VIRT_CPU_ACCOUNTING_GEN is not set\nCONFIG_TICK_CPU_ACCOUNTING=y\nCONFIG_HZ=250\n",
            ),
        };
        assert!(settings.halts_at_once());
        assert_eq!(
            settings.line(),
            "cpuidle driver `haltpoll`, governor `haltpoll`, guest_halt_poll_ns `0` (kernel command line: \
             `cpuidle_haltpoll.force=1 haltpoll.guest_halt_poll_ns=0`); CPU time accounting: tick (HZ 250)"
        );
        let paragraph = settings.paragraph("The floor rows measure");
        assert!(paragraph.contains("halt at once") && paragraph.contains("rough estimate"), "{paragraph}");

        let polling = IdleSettings { guest_halt_poll_ns: Some("200000".into()), ..settings.clone() };
        assert!(!polling.halts_at_once());
        assert!(!polling.paragraph("The floor rows measure").contains("halt at once"));
        let bare = IdleSettings::default();
        assert!(!bare.halts_at_once());
        assert_eq!(bare.line(), "cpuidle driver `unknown`, governor `unknown`");
    }

    #[test]
    fn free_ports_are_all_different() {
        let ports = free_ports::<32>().expect("ports");
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| *p != 0), "{ports:?}");
    }

    #[test]
    fn cpu_accounting_from_the_kernel_config() {
        assert_eq!(
            cpu_accounting("CONFIG_VIRT_CPU_ACCOUNTING_GEN=y\nCONFIG_HZ=1000\n").as_deref(),
            Some("precise")
        );
        assert_eq!(cpu_accounting("CONFIG_TICK_CPU_ACCOUNTING=y\n").as_deref(), Some("tick"));
        assert_eq!(cpu_accounting(""), None);
    }
}
