//! The in-pod counters, rendered as Prometheus text beside the proxy's own metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct InpodMetrics {
    pub pods_adopted: AtomicU64,
    pub adopt_failures: AtomicU64,
    pub pods_removed: AtomicU64,
    pub malformed_messages: AtomicU64,
    pub outbound_connections: AtomicU64,
    pub inbound_connections: AtomicU64,
    pub hbone_connections: AtomicU64,
    /// Connections whose original destination could not be read (dropped).
    pub original_dst_failures: AtomicU64,
    /// Deliveries to a pod from the client's address ([`super::PodSocketFactory::connect_as`]).
    pub source_kept: AtomicU64,
    /// Deliveries that should have kept the client's address but came from the pod's own.
    pub source_fallbacks: AtomicU64,
}

impl InpodMetrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, pods: usize) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE weft_inpod_pods gauge\nweft_inpod_pods {pods}");
        for (name, value) in [
            ("weft_inpod_pods_adopted_total", get(&self.pods_adopted)),
            ("weft_inpod_adopt_failures_total", get(&self.adopt_failures)),
            ("weft_inpod_pods_removed_total", get(&self.pods_removed)),
            ("weft_inpod_malformed_messages_total", get(&self.malformed_messages)),
            ("weft_inpod_original_dst_failures_total", get(&self.original_dst_failures)),
            ("weft_inpod_source_address_kept_total", get(&self.source_kept)),
            ("weft_inpod_source_address_fallbacks_total", get(&self.source_fallbacks)),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {value}");
        }
        let _ = writeln!(out, "# TYPE weft_inpod_connections_total counter");
        for (direction, value) in [
            ("outbound", get(&self.outbound_connections)),
            ("inbound", get(&self.inbound_connections)),
            ("hbone", get(&self.hbone_connections)),
        ] {
            let _ = writeln!(out, "weft_inpod_connections_total{{direction=\"{direction}\"}} {value}");
        }
        out
    }
}
