//! tcpdump on one interface of one namespace, and questions about what it saw.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::WAIT;
use crate::netns::Netns;

pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    /// Starts capturing TCP on `iface` of `netns` into `file`; returns once tcpdump is armed.
    pub fn start(netns: &Netns, iface: &str, file: PathBuf) -> Capture {
        // --immediate-mode: packets reach the file as they come, not when the kernel's buffer
        // block fills (or a second passes), so nothing is lost when the capture is stopped
        // right after the traffic. -Z root: write where the caller's private tempdir is.
        let mut child = netns
            .command("tcpdump")
            .args(["-Z", "root", "--immediate-mode", "-i", iface, "-U", "-s", "0", "-w"])
            .arg(&file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // tcpdump says "listening on …" once the capture is armed.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(WAIT).expect("tcpdump started capturing");
        Capture { child, file }
    }

    /// Stops the capture and returns the raw pcap bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        std::fs::read(&self.file).expect("pcap")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Whether `needle` appears anywhere in the captured bytes (headers and payloads alike).
pub fn contains(pcap: &[u8], needle: &str) -> bool {
    pcap.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Packets in `pcap` that match a tcpdump filter.
pub fn count_packets(pcap: &Path, filter: &str) -> usize {
    let out = Command::new("tcpdump").args(["-nn", "-r"]).arg(pcap).arg(filter).output().expect("tcpdump -r");
    String::from_utf8_lossy(&out.stdout).lines().count()
}
