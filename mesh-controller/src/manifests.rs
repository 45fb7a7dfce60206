//! Standalone source: Kubernetes objects read from YAML files in a folder.
//!
//! Every `*.yaml` / `*.yml` file below the folder is read, in path order, each a stream of
//! `---`-separated documents. A document that is not valid YAML, or not a valid object of its
//! kind, is an error naming the file and line; kinds the controller does not read (a Deployment
//! beside the routes, say) are skipped and counted.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::store::{Object, Store};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid { path: PathBuf, line: usize, message: String },
}

/// What a folder held.
#[derive(Debug, Default)]
pub struct Loaded {
    pub store: Store,
    pub files: usize,
    pub objects: usize,
    /// `kind` of every document that was skipped because the controller does not read it.
    pub skipped_kinds: Vec<String>,
}

/// Reads every manifest below `dir` into one store.
pub fn load_dir(dir: &Path) -> Result<Loaded, ManifestError> {
    let mut loaded = Loaded::default();
    for path in manifest_files(dir)? {
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ManifestError::Io { path: path.clone(), source })?;
        loaded.files += 1;
        load_text(&text, &path, &mut loaded)?;
    }
    Ok(loaded)
}

/// The manifest files (`*.yaml`, `*.yml`) below `dir`, in path order.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// What one manifest file holds.
#[derive(Debug, Default)]
pub struct FileObjects {
    /// In the file's order; a later document with the same kind and key wins, as in a store.
    pub objects: Vec<Object>,
    /// `kind` of every document skipped because the controller does not read it.
    pub skipped_kinds: Vec<String>,
}

/// Reads one manifest file; any document that does not parse fails the whole file.
pub fn load_file(path: &Path) -> Result<FileObjects, ManifestError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ManifestError::Io { path: path.to_path_buf(), source })?;
    let mut out = FileObjects::default();
    parse_text(&text, path, |parsed| match parsed {
        Parsed::Object(object) => out.objects.push(*object),
        Parsed::Empty => {}
        Parsed::Skipped(kind) => out.skipped_kinds.push(kind),
    })?;
    Ok(out)
}

/// Reads one YAML stream (as if it were the file `origin`) into a store.
pub fn load_str(text: &str, origin: &Path) -> Result<Loaded, ManifestError> {
    let mut loaded = Loaded::default();
    load_text(text, origin, &mut loaded)?;
    Ok(loaded)
}

fn load_text(text: &str, path: &Path, loaded: &mut Loaded) -> Result<(), ManifestError> {
    parse_text(text, path, |parsed| match parsed {
        Parsed::Object(object) => {
            loaded.store.insert(*object);
            loaded.objects += 1;
        }
        Parsed::Empty => {}
        Parsed::Skipped(kind) => loaded.skipped_kinds.push(kind),
    })
}

fn parse_text(text: &str, path: &Path, mut each: impl FnMut(Parsed)) -> Result<(), ManifestError> {
    for (line, doc) in documents(text) {
        match parse_document(doc) {
            Ok(parsed) => each(parsed),
            Err(DocumentError { line: offset, message }) => {
                return Err(ManifestError::Invalid {
                    path: path.to_path_buf(),
                    line: line + offset.saturating_sub(1),
                    message,
                });
            }
        }
    }
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| ManifestError::Io { path: dir.to_path_buf(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| ManifestError::Io { path: dir.to_path_buf(), source })?;
        let path = entry.path();
        let file_type =
            entry.file_type().map_err(|source| ManifestError::Io { path: path.clone(), source })?;
        if file_type.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits a YAML stream at `---` lines, giving each document with the 1-based line it starts on.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed.starts_with("---#") {
            docs.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

enum Parsed {
    Object(Box<Object>),
    Empty,
    Skipped(String),
}

struct DocumentError {
    /// Line within the document, 1-based.
    line: usize,
    message: String,
}

impl DocumentError {
    fn from_yaml(error: serde_yaml::Error) -> Self {
        let line = error.location().map_or(1, |l| l.line());
        DocumentError { line, message: error.to_string() }
    }
}

#[derive(serde::Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

fn parse_document(doc: &str) -> Result<Parsed, DocumentError> {
    let value: serde_yaml::Value = serde_yaml::from_str(doc).map_err(DocumentError::from_yaml)?;
    if value.is_null() {
        return Ok(Parsed::Empty);
    }
    let meta: TypeMeta = serde_yaml::from_value(value)
        .map_err(|e| DocumentError { line: 1, message: format!("not a Kubernetes object: {e}") })?;
    let (Some(api_version), Some(kind)) = (meta.api_version, meta.kind) else {
        return Err(DocumentError {
            line: 1,
            message: "a Kubernetes object needs apiVersion and kind".into(),
        });
    };
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let object = match (group, kind.as_str()) {
        ("gateway.networking.k8s.io", "GatewayClass") => Object::GatewayClass(typed(doc)?),
        ("gateway.networking.k8s.io", "Gateway") => Object::Gateway(namespaced(typed(doc)?)),
        ("gateway.networking.k8s.io", "HTTPRoute") => Object::HttpRoute(namespaced(typed(doc)?)),
        ("gateway.networking.k8s.io", "GRPCRoute") => Object::GrpcRoute(namespaced(typed(doc)?)),
        ("gateway.networking.k8s.io", "TLSRoute") => Object::TlsRoute(namespaced(typed(doc)?)),
        ("gateway.networking.k8s.io", "TCPRoute") => Object::TcpRoute(namespaced(typed(doc)?)),
        ("gateway.networking.k8s.io", "UDPRoute") => Object::UdpRoute(namespaced(typed(doc)?)),
        ("gateway.networking.k8s.io", "ReferenceGrant") => Object::ReferenceGrant(namespaced(typed(doc)?)),
        ("", "Service") => Object::Service(namespaced(typed(doc)?)),
        ("discovery.k8s.io", "EndpointSlice") => Object::EndpointSlice(namespaced(typed(doc)?)),
        ("", "Pod") => Object::Pod(namespaced(typed(doc)?)),
        ("", "Namespace") => Object::Namespace(typed(doc)?),
        ("", "Secret") => Object::Secret(namespaced(typed(doc)?)),
        ("", "ConfigMap") => Object::ConfigMap(namespaced(typed(doc)?)),
        _ => return Ok(Parsed::Skipped(kind)),
    };
    Ok(Parsed::Object(Box::new(object)))
}

/// Parses from the text (not from a `Value`) so that type errors carry a line.
fn typed<K: DeserializeOwned>(doc: &str) -> Result<K, DocumentError> {
    serde_yaml::from_str(doc).map_err(DocumentError::from_yaml)
}

/// As `kubectl apply` does, an object without a namespace lands in `default`.
fn namespaced<K: kube::Resource>(mut object: K) -> K {
    let meta = object.meta_mut();
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_string());
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write fixture");
    }

    #[test]
    fn reads_every_document_of_every_yaml_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "a.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n---\n# only a comment\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec: {}\n",
        );
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        write(
            &dir.path().join("sub"),
            "b.yml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n",
        );
        write(dir.path(), "notes.txt", "not: [yaml");
        let loaded = load_dir(dir.path()).expect("loads");
        assert_eq!(loaded.files, 2);
        assert_eq!(loaded.objects, 2);
        assert_eq!(loaded.skipped_kinds, vec!["Deployment".to_string()]);
        let route = loaded.store.http_routes.keys().next().expect("one route");
        assert_eq!(route.namespace, "default", "no namespace means default");
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "broken.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ok\n---\napiVersion: v1\nkind: Service\n\
             metadata:\n  name: [unclosed\n",
        );
        let err = load_dir(dir.path()).expect_err("broken yaml");
        let text = err.to_string();
        assert!(text.contains("broken.yaml:"), "{text}");
        let ManifestError::Invalid { line, .. } = err else { panic!("wrong error: {text}") };
        assert!((9..=10).contains(&line), "error at the unclosed bracket (line 9), got {line}: {text}");
    }

    #[test]
    fn a_type_error_names_the_line_of_the_bad_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "gw.yaml",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  \
             gatewayClassName: weft\n  listeners:\n  - name: http\n    port: not-a-number\n    protocol: HTTP\n",
        );
        let err = load_dir(dir.path()).expect_err("bad port");
        let ManifestError::Invalid { line, message, .. } = &err else { panic!("wrong error: {err}") };
        assert_eq!(*line, 9, "{message}");
    }

    #[test]
    fn a_document_without_kind_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "x.yaml", "metadata:\n  name: x\n");
        let err = load_dir(dir.path()).expect_err("no kind");
        assert!(err.to_string().contains("apiVersion and kind"), "{err}");
    }
}
