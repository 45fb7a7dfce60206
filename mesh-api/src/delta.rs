//! Versions of the config on the wire: a full state, then deltas of named resources.
//!
//! The controller computes a complete [`Config`] on every change and sends each proxy only what
//! differs from the version that proxy last acknowledged. The proxy brings its `Config` to the
//! next version with [`Config::apply_in_place`] (or builds a new one with [`Config::apply`]); an update that does not apply cleanly is refused whole, so a
//! proxy is always on exactly one version the controller sent.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::model::Config;
use crate::proto::{self, ResourceKind};

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("resource {key:?} has no kind")]
    UnspecifiedKind { key: String },
    #[error("resource {kind:?} {key:?} has a body that is not a valid {kind:?}: {source}")]
    BadBody {
        kind: ResourceKind,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("resource {kind:?} {key:?} carries key {found:?} in its body")]
    KeyMismatch { kind: ResourceKind, key: String, found: String },
    #[error("removal of {kind:?} {key:?}, which the proxy does not have")]
    UnknownRemoval { kind: ResourceKind, key: String },
    #[error("a part of a full state that is not one: version {version}, {problem}")]
    BadPart { version: u64, problem: &'static str },
    #[error("version {got} arrived in the middle of version {staging}'s full state")]
    Interleaved { staging: u64, got: u64 },
}

/// How big, at most, the parts of a chunked full state are (resources' keys and bodies; one
/// resource larger than this is a part of its own). Small enough that a proxy's receive
/// buffer and the message it decodes stay around a megabyte whatever the config's size
/// (a 10k-Service full state is about 19 MB), large enough that a part's framing is noise.
pub const FULL_STATE_PART_BYTES: usize = 1024 * 1024;

/// Every resource kind of the model, each with the key it is stored under.
macro_rules! for_each_kind {
    ($mac:ident $(, $arg:expr)*) => {{
        $mac!(services, ResourceKind::Service, |r: &crate::model::Service| r.key.to_string() $(, $arg)*);
        $mac!(workloads, ResourceKind::Workload, |r: &crate::model::Workload| r.key.to_string() $(, $arg)*);
        $mac!(backends, ResourceKind::Backend, |r: &crate::model::Backend| r.key.to_string() $(, $arg)*);
        $mac!(listeners, ResourceKind::Listener, |r: &crate::model::Listener| r.key.to_string() $(, $arg)*);
        $mac!(routes, ResourceKind::Route, |r: &crate::model::Route| r.key.to_string() $(, $arg)*);
        $mac!(certificates, ResourceKind::Certificate, |r: &crate::model::Certificate| r.key.to_string() $(, $arg)*);
    }};
}

impl Config {
    /// Inserts resources under their own keys.
    pub fn insert_service(&mut self, r: crate::model::Service) {
        self.services.insert(r.key.to_string(), r);
    }
    pub fn insert_workload(&mut self, r: crate::model::Workload) {
        self.workloads.insert(r.key.to_string(), Arc::new(r));
    }
    pub fn insert_backend(&mut self, r: crate::model::Backend) {
        self.backends.insert(r.key.to_string(), Arc::new(r));
    }
    pub fn insert_listener(&mut self, r: crate::model::Listener) {
        self.listeners.insert(r.key.to_string(), r);
    }
    pub fn insert_route(&mut self, r: crate::model::Route) {
        self.routes.insert(r.key.to_string(), r);
    }
    pub fn insert_certificate(&mut self, r: crate::model::Certificate) {
        self.certificates.insert(r.key.to_string(), r);
    }

    /// Number of resources of all kinds.
    pub fn len(&self) -> usize {
        self.services.len()
            + self.workloads.len()
            + self.backends.len()
            + self.listeners.len()
            + self.routes.len()
            + self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One resource as it goes on the wire, if the config holds it.
    pub fn resource(&self, kind: ResourceKind, key: &str) -> Option<proto::Resource> {
        match kind {
            ResourceKind::Service => self.services.get(key).map(|r| resource(kind, key, r)),
            ResourceKind::Workload => self.workloads.get(key).map(|r| resource(kind, key, r)),
            ResourceKind::Backend => self.backends.get(key).map(|r| resource(kind, key, r)),
            ResourceKind::Listener => self.listeners.get(key).map(|r| resource(kind, key, r)),
            ResourceKind::Route => self.routes.get(key).map(|r| resource(kind, key, r)),
            ResourceKind::Certificate => self.certificates.get(key).map(|r| resource(kind, key, r)),
            ResourceKind::Unspecified => None,
        }
    }

    /// The whole config as one update.
    pub fn to_full_update(&self, version: u64) -> proto::ConfigUpdate {
        let mut upserts = Vec::with_capacity(self.len());
        macro_rules! all {
            ($field:ident, $kind:expr, $key:expr) => {
                for (key, r) in &self.$field {
                    upserts.push(resource($kind, key, r));
                }
            };
        }
        for_each_kind!(all);
        proto::ConfigUpdate { version, full_state: true, upserts, removals: Vec::new(), more: false }
    }

    /// The whole config as a sequence of updates of about `part_bytes` each (at least one;
    /// every one but the last has `more` set), for a proxy that takes a chunked full state.
    pub fn to_full_parts(&self, version: u64, part_bytes: usize) -> Vec<proto::ConfigUpdate> {
        let mut parts = Vec::new();
        let mut upserts = Vec::new();
        let mut size = 0;
        macro_rules! all {
            ($field:ident, $kind:expr, $key:expr) => {
                for (key, r) in &self.$field {
                    let resource = resource($kind, key, r);
                    let bytes = resource.body.len() + key.len();
                    if size + bytes > part_bytes && !upserts.is_empty() {
                        parts.push(proto::ConfigUpdate {
                            version,
                            full_state: true,
                            upserts: std::mem::take(&mut upserts),
                            removals: Vec::new(),
                            more: true,
                        });
                        size = 0;
                    }
                    size += bytes;
                    upserts.push(resource);
                }
            };
        }
        for_each_kind!(all);
        parts.push(proto::ConfigUpdate {
            version,
            full_state: true,
            upserts,
            removals: Vec::new(),
            more: false,
        });
        parts
    }

    /// What turns `self` into `next`.
    pub fn diff(&self, next: &Config, version: u64) -> proto::ConfigUpdate {
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        macro_rules! diff {
            ($field:ident, $kind:expr, $key:expr) => {
                diff_map(&self.$field, &next.$field, $kind, &mut upserts, &mut removals);
            };
        }
        for_each_kind!(diff);
        proto::ConfigUpdate { version, full_state: false, upserts, removals, more: false }
    }

    /// The config that `update` describes, given that `self` is the previous version.
    /// Either the whole update applies or none of it does.
    pub fn apply(&self, update: &proto::ConfigUpdate) -> Result<Config, DeltaError> {
        // A full state replaces everything: no need to copy what it throws away.
        let mut next = if update.full_state { Config::default() } else { self.clone() };
        next.apply_in_place(update)?;
        Ok(next)
    }
}

/// One decoded upsert, checked and ready to go in.
enum Decoded {
    Service(crate::model::Service),
    Workload(crate::model::Workload),
    Backend(crate::model::Backend),
    Listener(crate::model::Listener),
    Route(crate::model::Route),
    Certificate(crate::model::Certificate),
}

impl Config {
    /// [`Config::apply`] in place: `self` becomes the version `update` describes, at the cost of
    /// the update's size (nothing else is copied). Everything is decoded and checked before
    /// anything changes, so on an error `self` is untouched. Returns the resources that
    /// changed (upserted or removed), by kind and key.
    pub fn apply_in_place(
        &mut self,
        update: &proto::ConfigUpdate,
    ) -> Result<Vec<(ResourceKind, String)>, DeltaError> {
        if update.more {
            // Applied alone, a part would drop everything the other parts carry.
            return Err(DeltaError::BadPart {
                version: update.version,
                problem: "one part of several: gather the parts with FullStateParts",
            });
        }
        let decoded = update.upserts.iter().map(decode_upsert).collect::<Result<Vec<_>, _>>()?;
        if !update.full_state {
            for removal in &update.removals {
                let kind = removal.kind();
                let key = &removal.key;
                let present = match kind {
                    ResourceKind::Unspecified => {
                        return Err(DeltaError::UnspecifiedKind { key: key.clone() });
                    }
                    ResourceKind::Service => self.services.contains_key(key),
                    ResourceKind::Workload => self.workloads.contains_key(key),
                    ResourceKind::Backend => self.backends.contains_key(key),
                    ResourceKind::Listener => self.listeners.contains_key(key),
                    ResourceKind::Route => self.routes.contains_key(key),
                    ResourceKind::Certificate => self.certificates.contains_key(key),
                };
                if !present {
                    return Err(DeltaError::UnknownRemoval { kind, key: key.clone() });
                }
            }
        } else if let Some(removal) = update.removals.first() {
            // A full state removes nothing; `apply` finds the same removal unknown.
            return Err(DeltaError::UnknownRemoval { kind: removal.kind(), key: removal.key.clone() });
        }
        let mut changed = Vec::with_capacity(decoded.len() + update.removals.len());
        if update.full_state {
            *self = Config::default();
        }
        for removal in &update.removals {
            let key = &removal.key;
            match removal.kind() {
                ResourceKind::Service => drop(self.services.remove(key)),
                ResourceKind::Workload => drop(self.workloads.remove(key)),
                ResourceKind::Backend => drop(self.backends.remove(key)),
                ResourceKind::Listener => drop(self.listeners.remove(key)),
                ResourceKind::Route => drop(self.routes.remove(key)),
                ResourceKind::Certificate => drop(self.certificates.remove(key)),
                ResourceKind::Unspecified => {}
            }
            changed.push((removal.kind(), key.clone()));
        }
        for (key, value) in decoded {
            let kind = self.insert_decoded(key.clone(), value);
            changed.push((kind, key));
        }
        Ok(changed)
    }
}

impl Config {
    fn insert_decoded(&mut self, key: String, value: Decoded) -> ResourceKind {
        match value {
            Decoded::Service(v) => {
                self.services.insert(key, v);
                ResourceKind::Service
            }
            Decoded::Workload(v) => {
                self.workloads.insert(key, Arc::new(v));
                ResourceKind::Workload
            }
            Decoded::Backend(v) => {
                self.backends.insert(key, Arc::new(v));
                ResourceKind::Backend
            }
            Decoded::Listener(v) => {
                self.listeners.insert(key, v);
                ResourceKind::Listener
            }
            Decoded::Route(v) => {
                self.routes.insert(key, v);
                ResourceKind::Route
            }
            Decoded::Certificate(v) => {
                self.certificates.insert(key, v);
                ResourceKind::Certificate
            }
        }
    }
}

/// One upsert decoded and checked against its key.
fn decode_upsert(upsert: &proto::Resource) -> Result<(String, Decoded), DeltaError> {
    let id = upsert.id.clone().unwrap_or_default();
    let kind = id.kind();
    macro_rules! decode_kind {
        ($field:ident, $k:expr, $key:expr) => {
            if kind == $k {
                let value = decode(kind, &id.key, &upsert.body)?;
                let found = ($key)(&value);
                if found != id.key {
                    return Err(DeltaError::KeyMismatch { kind, key: id.key, found });
                }
                return Ok((id.key, Decoded::from(value)));
            }
        };
    }
    for_each_kind!(decode_kind);
    Err(DeltaError::UnspecifiedKind { key: id.key })
}

/// A full state that arrives in parts ([`proto::ConfigUpdate::more`]), decoded part by part so
/// that only one part's message is held at a time, and handed over whole after the last part.
/// A bad part spoils its whole version: the parts already taken are dropped and the rest of
/// that version's parts are passed over, so the proxy stays on its last good config.
#[derive(Debug, Default)]
pub struct FullStateParts {
    /// The version being gathered, and what its parts held so far.
    staging: Option<(u64, Config)>,
    /// A version refused part-way: its remaining parts are passed over.
    skipping: Option<u64>,
}

/// What one update means once [`FullStateParts`] has seen it.
#[derive(Debug)]
pub enum Part {
    /// Not part of a chunked full state (a delta, or a full state in one message): apply it
    /// as it is.
    Whole,
    /// A part taken (or passed over, after its version was refused); nothing to apply or
    /// answer yet.
    Pending,
    /// The last part: the whole state of `version`, to install and answer.
    Complete { version: u64, config: Config },
}

impl FullStateParts {
    /// Takes one update from the stream. An error refuses the update's version whole (answer
    /// it with a NACK); the parts gathered for it are dropped.
    pub fn take(&mut self, update: &proto::ConfigUpdate) -> Result<Part, DeltaError> {
        if let Some(skipped) = self.skipping {
            if update.version == skipped && update.full_state {
                if !update.more {
                    self.skipping = None;
                }
                return Ok(Part::Pending);
            }
            self.skipping = None;
        }
        let result = self.gather(update);
        if result.is_err() {
            self.staging = None;
            // The rest of a refused full state is passed over, not taken as a fresh start.
            if update.full_state && update.more {
                self.skipping = Some(update.version);
            }
        }
        result
    }

    fn gather(&mut self, update: &proto::ConfigUpdate) -> Result<Part, DeltaError> {
        let version = update.version;
        match &self.staging {
            None if !update.more => return Ok(Part::Whole),
            Some((staging, _)) if *staging != version => {
                return Err(DeltaError::Interleaved { staging: *staging, got: version });
            }
            _ => {}
        }
        if !update.full_state {
            return Err(DeltaError::BadPart { version, problem: "a delta cannot come in parts" });
        }
        if !update.removals.is_empty() {
            return Err(DeltaError::BadPart { version, problem: "a full state removes nothing" });
        }
        let decoded = update.upserts.iter().map(decode_upsert).collect::<Result<Vec<_>, _>>()?;
        let (_, config) = self.staging.get_or_insert_with(|| (version, Config::default()));
        for (key, value) in decoded {
            config.insert_decoded(key, value);
        }
        if update.more {
            return Ok(Part::Pending);
        }
        let (version, config) = self.staging.take().unwrap_or_default();
        Ok(Part::Complete { version, config })
    }

    /// Whether a chunked full state is being gathered.
    pub fn is_gathering(&self) -> bool {
        self.staging.is_some()
    }
}

macro_rules! decoded_from {
    ($($variant:ident),*) => {
        $(impl From<crate::model::$variant> for Decoded {
            fn from(value: crate::model::$variant) -> Self {
                Decoded::$variant(value)
            }
        })*
    };
}
decoded_from!(Service, Workload, Backend, Listener, Route, Certificate);

/// A config value as it goes on the wire: its JSON. A shared (`Arc`) value is sent as the value
/// it shares; the proxy's copy is shared again when decoded.
trait WireBody {
    fn wire_body(&self) -> Vec<u8>;
}

macro_rules! wire_body {
    ($($value:ty => $plain:ty),* $(,)?) => {$(
        impl WireBody for $value {
            fn wire_body(&self) -> Vec<u8> {
                // Serializing plain data (strings, numbers, maps with string keys) cannot fail.
                serde_json::to_vec::<$plain>(self).unwrap_or_default()
            }
        }
    )*};
}

wire_body! {
    crate::model::Service => crate::model::Service,
    Arc<crate::model::Workload> => crate::model::Workload,
    Arc<crate::model::Backend> => crate::model::Backend,
    crate::model::Listener => crate::model::Listener,
    crate::model::Route => crate::model::Route,
    crate::model::Certificate => crate::model::Certificate,
}

fn resource<T: WireBody>(kind: ResourceKind, key: &str, value: &T) -> proto::Resource {
    let body = value.wire_body();
    proto::Resource { id: Some(proto::ResourceId { kind: kind as i32, key: key.to_string() }), body }
}

fn decode<T: DeserializeOwned>(kind: ResourceKind, key: &str, body: &[u8]) -> Result<T, DeltaError> {
    serde_json::from_slice(body).map_err(|source| DeltaError::BadBody { kind, key: key.to_string(), source })
}

fn diff_map<T: WireBody + PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    kind: ResourceKind,
    upserts: &mut Vec<proto::Resource>,
    removals: &mut Vec<proto::ResourceId>,
) {
    for (key, value) in new {
        if old.get(key) != Some(value) {
            upserts.push(resource(kind, key, value));
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            removals.push(proto::ResourceId { kind: kind as i32, key: key.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn service(ns: &str, name: &str, port: u16) -> Service {
        Service {
            key: ObjectKey::new(ns, name),
            hostname: format!("{name}.{ns}.svc.cluster.local"),
            vips: vec!["10.96.0.10".parse().expect("ip")],
            ports: vec![ServicePort {
                name: Some("http".into()),
                port,
                transport: Transport::Tcp,
                app_protocol: AppProtocol::Http1,
            }],
        }
    }

    #[test]
    fn diff_then_apply_reaches_the_next_config() {
        let mut a = Config::default();
        a.insert_service(service("default", "one", 80));
        a.insert_service(service("default", "two", 80));
        let mut b = Config::default();
        b.insert_service(service("default", "one", 8080));
        b.insert_service(service("default", "three", 80));

        let delta = a.diff(&b, 2);
        assert!(!delta.full_state);
        assert_eq!(delta.upserts.len(), 2, "one changed, one added");
        assert_eq!(delta.removals.len(), 1, "one removed");
        assert_eq!(a.apply(&delta).expect("applies"), b);
    }

    #[test]
    fn full_update_replaces_everything() {
        let mut a = Config::default();
        a.insert_service(service("default", "stale", 80));
        let mut b = Config::default();
        b.insert_service(service("default", "fresh", 80));
        assert_eq!(a.apply(&b.to_full_update(7)).expect("applies"), b);
    }

    #[test]
    fn an_unchanged_config_gives_an_empty_delta() {
        let mut a = Config::default();
        a.insert_service(service("default", "one", 80));
        let delta = a.diff(&a.clone(), 3);
        assert!(delta.upserts.is_empty() && delta.removals.is_empty());
    }

    #[test]
    fn apply_in_place_reaches_what_apply_does_and_refuses_whole() {
        let mut a = Config::default();
        a.insert_service(service("default", "one", 80));
        a.insert_service(service("default", "two", 80));
        let mut b = Config::default();
        b.insert_service(service("default", "one", 8080));
        b.insert_service(service("default", "three", 80));
        let delta = a.diff(&b, 2);
        let mut held = a.clone();
        let mut changed = held.apply_in_place(&delta).expect("applies");
        changed.sort();
        assert_eq!(held, b);
        assert_eq!(held, a.apply(&delta).expect("applies"));
        let keys: Vec<&str> = changed.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(keys, ["default/one", "default/three", "default/two"]);

        // A bad body after a good one: nothing changes.
        let mut broken = b.diff(&a, 3);
        broken.upserts.push(proto::Resource {
            id: Some(proto::ResourceId { kind: ResourceKind::Service as i32, key: "default/x".into() }),
            body: b"{not json".to_vec(),
        });
        assert!(matches!(held.apply_in_place(&broken), Err(DeltaError::BadBody { .. })));
        assert_eq!(held, b, "untouched");
        let removal = proto::ConfigUpdate {
            version: 4,
            full_state: false,
            upserts: b.diff(&a, 4).upserts,
            removals: vec![proto::ResourceId { kind: ResourceKind::Route as i32, key: "nope".into() }],
            more: false,
        };
        assert!(matches!(held.apply_in_place(&removal), Err(DeltaError::UnknownRemoval { .. })));
        assert_eq!(held, b, "untouched");
        held.apply_in_place(&a.to_full_update(5)).expect("full state");
        assert_eq!(held, a);
    }

    #[test]
    fn a_broken_update_is_refused_whole() {
        let a = Config::default();
        let mut update = Config::default().diff(&Config::default(), 1);
        update.upserts.push(proto::Resource {
            id: Some(proto::ResourceId { kind: ResourceKind::Service as i32, key: "default/x".into() }),
            body: b"{not json".to_vec(),
        });
        let err = a.apply(&update).expect_err("garbage body");
        assert!(matches!(err, DeltaError::BadBody { .. }), "{err}");

        let mut b = Config::default();
        b.insert_service(service("default", "real", 80));
        let mut lying = b.to_full_update(2);
        lying.upserts[0].id =
            Some(proto::ResourceId { kind: ResourceKind::Service as i32, key: "default/other".into() });
        assert!(matches!(a.apply(&lying), Err(DeltaError::KeyMismatch { .. })));

        let removal = proto::ConfigUpdate {
            version: 3,
            full_state: false,
            upserts: vec![],
            removals: vec![proto::ResourceId { kind: ResourceKind::Route as i32, key: "nope".into() }],
            more: false,
        };
        assert!(matches!(a.apply(&removal), Err(DeltaError::UnknownRemoval { .. })));
    }

    fn many(n: usize) -> Config {
        let mut config = Config::default();
        for i in 0..n {
            config.insert_service(service("default", &format!("svc-{i:03}"), 80));
        }
        config
    }

    #[test]
    fn a_full_state_in_parts_is_the_config_once_the_last_part_is_in() {
        let config = many(50);
        let one_service = config.to_full_update(1).upserts[0].body.len();
        // About five Services a part.
        let parts = config.to_full_parts(9, one_service * 5);
        assert!(parts.len() >= 8, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.full_state && p.version == 9 && p.removals.is_empty()));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.more) && !parts[parts.len() - 1].more);
        assert_eq!(parts.iter().map(|p| p.upserts.len()).sum::<usize>(), 50);

        let mut gathering = FullStateParts::default();
        for part in &parts[..parts.len() - 1] {
            assert!(matches!(gathering.take(part), Ok(Part::Pending)));
            assert!(gathering.is_gathering());
        }
        match gathering.take(&parts[parts.len() - 1]) {
            Ok(Part::Complete { version, config: whole }) => {
                assert_eq!(version, 9);
                assert_eq!(whole, config);
            }
            other => panic!("expected the whole state, got {other:?}"),
        }
        assert!(!gathering.is_gathering());
        // A small config is one part, and one part is an ordinary full state.
        let single = many(2).to_full_parts(10, FULL_STATE_PART_BYTES);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0], many(2).to_full_update(10));
        assert!(matches!(gathering.take(&single[0]), Ok(Part::Whole)));
        let empty = Config::default().to_full_parts(11, FULL_STATE_PART_BYTES);
        assert_eq!((empty.len(), empty[0].more, empty[0].upserts.len()), (1, false, 0));
        // A part alone is never applied as if it were the whole state.
        assert!(matches!(Config::default().apply(&parts[0]), Err(DeltaError::BadPart { .. })));
    }

    #[test]
    fn a_bad_part_spoils_its_whole_version_and_the_next_version_starts_clean() {
        let config = many(30);
        let one_service = config.to_full_update(1).upserts[0].body.len();
        let mut parts = config.to_full_parts(4, one_service * 5);
        assert!(parts.len() >= 5);
        parts[2].upserts[0].body = b"{not json".to_vec();

        let mut gathering = FullStateParts::default();
        let mut answers = Vec::new();
        for part in &parts {
            match gathering.take(part) {
                Ok(Part::Pending) => {}
                Ok(other) => panic!("nothing of version 4 is whole: {other:?}"),
                Err(error) => answers.push(error),
            }
        }
        assert_eq!(answers.len(), 1, "refused once: {answers:?}");
        assert!(matches!(answers[0], DeltaError::BadBody { .. }));
        assert!(!gathering.is_gathering(), "nothing of version 4 is kept");

        // The next version, in parts, is gathered from scratch.
        let next = many(12);
        let next_parts = next.to_full_parts(5, one_service * 5);
        let mut whole = None;
        for part in &next_parts {
            if let Part::Complete { version, config } = gathering.take(part).expect("good parts") {
                whole = Some((version, config));
            }
        }
        assert_eq!(whole, Some((5, next)));

        // A part of another version, or a delta, in the middle of a full state: refused.
        let mut gathering = FullStateParts::default();
        let six = config.to_full_parts(6, one_service * 5);
        assert!(matches!(gathering.take(&six[0]), Ok(Part::Pending)));
        let seven = config.to_full_parts(7, one_service * 5);
        assert!(matches!(gathering.take(&seven[0]), Err(DeltaError::Interleaved { staging: 6, got: 7 })));
        assert!(!gathering.is_gathering());
        assert!(matches!(gathering.take(&six[0]), Ok(Part::Pending)));
        let delta = many(1).diff(&many(2), 6);
        assert!(matches!(gathering.take(&delta), Err(DeltaError::BadPart { .. })));
        let mut in_parts_delta = delta.clone();
        in_parts_delta.more = true;
        assert!(matches!(FullStateParts::default().take(&in_parts_delta), Err(DeltaError::BadPart { .. })));
    }
}
