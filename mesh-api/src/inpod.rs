//! The in-pod hand-off protocol between weft-cni (the plugin and its node agent) and
//! weft-proxy.
//!
//! Transport: a unix `SOCK_SEQPACKET` socket (default [`DEFAULT_SOCKET`]). Every message is one
//! packet, so there is no framing; an [`Request::AddPod`] carries the pod's network-namespace
//! file descriptor as `SCM_RIGHTS` ancillary data of the same packet. Each request gets exactly
//! one [`Reply`].
//!
//! Encoding: JSON (serde). The messages are a few hundred bytes, sent once per pod lifecycle
//! event, so encoding cost is irrelevant, while JSON keeps the protocol readable with `strace`
//! and needs no generated code on either side; packets are length-bounded by the socket itself.
//! Unknown fields are ignored so either side can be upgraded first.
//!
//! Re-adoption: a long-lived client (the `weft-cni install` agent) sends an `AddPod` for every
//! pod in the plugin's state dir each time it (re)connects, then [`Request::SnapshotSent`]; the
//! proxy then drops every pod it had adopted before that connection began and that the snapshot
//! did not name. Short-lived clients (one CNI ADD or DEL) send one request and close.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where weft-proxy listens and weft-cni connects by default.
pub const DEFAULT_SOCKET: &str = "/var/run/weft/inpod.sock";
/// The largest message either side sends or accepts. A pod's identity and addresses fit in a
/// fraction of this; anything longer is not a message of this protocol.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// What the proxy needs to know about the pod, beyond its network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// The pod's UID: the key of every other message.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub service_account: String,
    /// The pod's addresses (the primary CNI's result).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Adopt this pod: open the proxy's listeners in its netns (the packet's one fd).
    AddPod { pod: PodInfo },
    /// Forget this pod: close its listeners (open connections drain).
    DelPod { uid: String },
    /// Every live pod has been sent on this connection.
    SnapshotSent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Ack,
    Error { message: String },
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        // A request is plain data (strings, addresses): serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_what_the_docs_say() {
        let add = Request::AddPod {
            pod: PodInfo {
                uid: "u1".into(),
                namespace: "ns".into(),
                name: "p".into(),
                service_account: "sa".into(),
                ips: vec!["10.0.0.2".parse().expect("ip")],
            },
        };
        assert_eq!(Request::decode(&add.encode()).expect("decode"), add);
        assert_eq!(
            Request::decode(br#"{"type":"del_pod","uid":"u1","future_field":1}"#).expect("decode"),
            Request::DelPod { uid: "u1".into() }
        );
        assert_eq!(Request::decode(br#"{"type":"snapshot_sent"}"#).expect("decode"), Request::SnapshotSent);
        assert!(Request::decode(br#"{"type":"reboot"}"#).is_err());
        assert_eq!(Reply::decode(br#"{"type":"ack"}"#).expect("decode"), Reply::Ack);
    }
}
