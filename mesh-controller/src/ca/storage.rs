//! Where the CA's key and certificate live between restarts: a Secret `weft-ca` in the
//! controller's namespace in a cluster, a folder in standalone mode. Both are read if present
//! (the user's own root or intermediate is honoured as is) and otherwise generated once and
//! written, so every replica and every restart signs with the same key.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use time::OffsetDateTime;

use super::authority::CaMaterial;

/// The Secret's name in the controller's namespace.
pub const SECRET_NAME: &str = "weft-ca";
const CHAIN: &str = "tls.crt";
const KEY: &str = "tls.key";
const BUNDLE: &str = "ca.crt";

/// Reads `dir/{tls.crt,tls.key,ca.crt}`; `None` when the folder holds no CA (neither
/// `tls.crt` nor `tls.key`), an error when it holds half of one.
pub fn read_dir(dir: &Path) -> anyhow::Result<Option<CaMaterial>> {
    if !dir.join(CHAIN).exists() && !dir.join(KEY).exists() {
        return Ok(None);
    }
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    let bundle = if dir.join(BUNDLE).exists() { read(BUNDLE)? } else { String::new() };
    Ok(Some(CaMaterial { chain_pem: read(CHAIN)?, key_pem: read(KEY)?, bundle_pem: bundle }))
}

/// Reads `dir/{tls.crt,tls.key,ca.crt}`, or generates a root there (key mode 0600).
pub fn load_or_create_dir(dir: &Path, trust_domain: &str) -> anyhow::Result<CaMaterial> {
    let chain = dir.join(CHAIN);
    if let Some(material) = read_dir(dir)? {
        tracing::info!(dir = %dir.display(), "using the CA found on disk");
        return Ok(material);
    }
    let material = CaMaterial::generate(trust_domain, OffsetDateTime::now_utc())?;
    create_private_dir(dir)?;
    write_private(&dir.join(KEY), &material.key_pem)?;
    std::fs::write(&chain, &material.chain_pem)
        .with_context(|| format!("cannot write {}", chain.display()))?;
    std::fs::write(dir.join(BUNDLE), &material.bundle_pem)
        .with_context(|| format!("cannot write {}", dir.join(BUNDLE).display()))?;
    tracing::info!(dir = %dir.display(), %trust_domain, "generated a new root CA");
    Ok(material)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads Secret `weft-ca`, or generates a root and creates it. Two replicas starting at once
/// both try to create; the loser reads the winner's, so there is only ever one root.
pub async fn load_or_create_secret(
    client: kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> anyhow::Result<CaMaterial> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client, namespace);
    if let Some(secret) = api.get_opt(SECRET_NAME).await.context("cannot read Secret weft-ca")? {
        tracing::info!(%namespace, "using the CA in Secret {SECRET_NAME}");
        return from_secret(&secret);
    }
    let material = CaMaterial::generate(trust_domain, OffsetDateTime::now_utc())?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), "weft-controller".into())])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (CHAIN.into(), ByteString(material.chain_pem.clone().into_bytes())),
            (KEY.into(), ByteString(material.key_pem.clone().into_bytes())),
            (BUNDLE.into(), ByteString(material.bundle_pem.clone().into_bytes())),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(%namespace, %trust_domain, "generated a new root CA into Secret {SECRET_NAME}");
            Ok(material)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret =
                api.get(SECRET_NAME).await.context("cannot read Secret weft-ca after losing the race")?;
            from_secret(&secret)
        }
        Err(e) => Err(e).context("cannot create Secret weft-ca"),
    }
}

pub(crate) fn from_secret(secret: &Secret) -> anyhow::Result<CaMaterial> {
    let data = secret.data.as_ref().context("Secret weft-ca has no data")?;
    let text = |key: &str, required: bool| -> anyhow::Result<String> {
        match data.get(key) {
            Some(bytes) => String::from_utf8(bytes.0.clone())
                .with_context(|| format!("Secret weft-ca: {key} is not UTF-8")),
            None if required => anyhow::bail!("Secret weft-ca has no {key}"),
            None => Ok(String::new()),
        }
    };
    Ok(CaMaterial {
        chain_pem: text(CHAIN, true)?,
        key_pem: text(KEY, true)?,
        bundle_pem: text(BUNDLE, false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_ca_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let first = load_or_create_dir(&ca_dir, "cluster.local").expect("generate");
        let second = load_or_create_dir(&ca_dir, "cluster.local").expect("reuse");
        assert_eq!(first, second);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(ca_dir.join(KEY)).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key must be private");
    }

    #[test]
    fn a_half_written_folder_is_an_error_not_a_new_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CHAIN), "x").expect("write");
        let error = load_or_create_dir(dir.path(), "cluster.local").expect_err("tls.key is missing");
        assert!(format!("{error:#}").contains("tls.key"), "{error:#}");
    }
}
