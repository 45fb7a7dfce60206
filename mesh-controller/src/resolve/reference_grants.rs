//! ReferenceGrant: whether an object in one namespace may refer to an object in another.

use crate::store::Store;

/// The referring side of a cross-namespace reference.
#[derive(Clone, Copy, Debug)]
pub struct From<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// The referred-to side.
#[derive(Clone, Copy, Debug)]
pub struct To<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Same-namespace references need no grant; others need a ReferenceGrant in the target's
/// namespace whose `from` names the referrer's group, kind and namespace and whose `to` names
/// the target's group and kind (and its name, when the grant gives one).
pub fn permits(store: &Store, from: From<'_>, to: To<'_>) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    store.reference_grants.iter().filter(|(key, _)| key.namespace == to.namespace).any(|(_, grant)| {
        let from_ok = grant
            .spec
            .from
            .iter()
            .any(|f| f.group == from.group && f.kind == from.kind && f.namespace == from.namespace);
        let to_ok = grant.spec.to.iter().any(|t| {
            t.group == to.group && t.kind == to.kind && t.name.as_deref().is_none_or(|n| n == to.name)
        });
        from_ok && to_ok
    })
}
