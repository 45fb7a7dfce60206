//! The signing half of the certificate authority: a CA key and certificate (generated, or the
//! user's own root or intermediate) that turns a workload's CSR into a short-lived SPIFFE
//! certificate. Pure: no I/O, the clock is an argument, so every refusal is unit-testable.

use std::time::Duration;

use mesh_api::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use time::OffsetDateTime;

/// Workload certificates live a day unless asked otherwise: short enough that a leaked key is
/// worth little, long enough that a controller outage of hours does not take the mesh down
/// (proxies renew at half-life, so they hold 12 h of margin).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// No proxy gets more than a week, whatever it asks for.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest lifetime granted: below this, rotation at half-life would hammer the CA.
pub const MIN_TTL: Duration = Duration::from_secs(10 * 60);
/// Certificates start this long before "now": tolerates clocks of nodes that run a little
/// behind the controller's.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// A generated root is valid ten years; it is meant to be replaced by a user-managed one
/// (cert-manager) in production, not to expire under anyone.
const GENERATED_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// PEM text of a CA as it is stored (Secret `weft-ca`, or files): the same shape cert-manager
/// gives a CA-issued certificate, so a user-supplied intermediate drops in unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct CaMaterial {
    /// `tls.crt`: the issuing certificate first, then any intermediates above it.
    pub chain_pem: String,
    /// `tls.key`: the issuing certificate's private key.
    pub key_pem: String,
    /// `ca.crt`: the roots peers trust. Empty: the last certificate of the chain.
    pub bundle_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    // Never print the CA key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial").field("chain_pem_bytes", &self.chain_pem.len()).finish_non_exhaustive()
    }
}

impl CaMaterial {
    /// A fresh self-signed root (ECDSA P-256) for `trust_domain`.
    pub fn generate(trust_domain: &str, now: OffsetDateTime) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "weft");
        name.push(DnType::CommonName, format!("weft root CA for {trust_domain}"));
        params.distinguished_name = name;
        // Path length 0: this root signs workload certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + GENERATED_ROOT_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;
        let pem = cert.pem();
        Ok(Self { chain_pem: pem.clone(), key_pem: key.serialize_pem(), bundle_pem: pem })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot generate a CA: {0}")]
    Generate(rcgen::Error),
    #[error("the CA certificate chain (tls.crt) holds no PEM certificate")]
    NoCertificate,
    #[error("the CA certificate chain (tls.crt) is not valid PEM: {0}")]
    ChainPem(rustls_pki_types::pem::Error),
    #[error("the CA trust bundle (ca.crt) is not valid PEM: {0}")]
    BundlePem(rustls_pki_types::pem::Error),
    #[error("the CA key (tls.key) is not a PEM private key rcgen can sign with: {0}")]
    Key(rcgen::Error),
    #[error("the CA certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("the CA key (tls.key) does not belong to the first certificate of tls.crt")]
    KeyMismatch,
    #[error("the first certificate of tls.crt is not a CA (basicConstraints CA:TRUE is missing)")]
    NotCa,
    #[error("the CA certificate expired at {0}")]
    Expired(OffsetDateTime),
}

/// Why a CSR was not signed. Each says what the caller must change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the CSR cannot be parsed or its signature does not verify: {0}")]
    Csr(String),
    #[error("the CSR must ask for exactly one subject alternative name, the URI {wanted}; it asks for [{}]", got.join(", "))]
    Sans { wanted: String, got: Vec<String> },
    #[error("the CSR asks to be a CA; workload certificates never are")]
    CaRequested,
    #[error("identity {identity} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain { identity: String, trust_domain: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// A signed workload certificate and what a peer needs to check it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf first, then the intermediates up to (not including) the root.
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

pub struct Authority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The issuing certificate and those above it that are not roots: sent after every leaf.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    /// No leaf outlives its issuer: a peer would refuse the chain from that moment on.
    issuer_not_after: OffsetDateTime,
}

impl Authority {
    pub fn new(trust_domain: &str, material: &CaMaterial, now: OffsetDateTime) -> Result<Self, CaError> {
        let chain = CertificateDer::pem_slice_iter(material.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(CaError::ChainPem)?;
        let issuing = chain.first().ok_or(CaError::NoCertificate)?.clone();
        let mut roots = CertificateDer::pem_slice_iter(material.bundle_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(CaError::BundlePem)?;
        if roots.is_empty() {
            roots.extend(chain.last().cloned());
        }
        let intermediates = chain.iter().filter(|c| !roots.contains(c)).cloned().collect();

        let (_, parsed) =
            x509_parser::parse_x509_certificate(&issuing).map_err(|e| CaError::Certificate(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(CaError::NotCa);
        }
        let issuer_not_after = parsed.validity().not_after.to_datetime();
        if issuer_not_after <= now {
            return Err(CaError::Expired(issuer_not_after));
        }
        let key = KeyPair::from_pem(&material.key_pem).map_err(CaError::Key)?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let issuer =
            Issuer::from_ca_cert_der(&issuing, key).map_err(|e| CaError::Certificate(e.to_string()))?;
        Ok(Self { trust_domain: trust_domain.to_string(), issuer, intermediates, roots, issuer_not_after })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Signs `csr_der` for `identity`, valid for `ttl` (the default when `None`, clamped to
    /// [`MIN_TTL`]..=[`MAX_TTL`] and to the issuer's own expiry). The certificate carries the
    /// CSR's public key and nothing else from it: subject, extensions and lifetime are ours.
    pub fn sign(
        &self,
        csr_der: &[u8],
        identity: &SpiffeId,
        ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<Issued, SignError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(SignError::ForeignTrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let csr = CertificateSigningRequestParams::from_der(&csr_der.into())
            .map_err(|e| SignError::Csr(e.to_string()))?;
        let wanted = identity.to_string();
        let asked: Vec<String> = csr.params.subject_alt_names.iter().map(describe_san).collect();
        if !matches!(csr.params.subject_alt_names.as_slice(), [SanType::URI(uri)] if uri.as_str() == wanted) {
            return Err(SignError::Sans { wanted, got: asked });
        }
        if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(SignError::CaRequested);
        }

        let ttl = ttl.unwrap_or(DEFAULT_TTL).clamp(MIN_TTL, MAX_TTL);
        let not_before = now - BACKDATE;
        let not_after = (now + ttl).min(self.issuer_not_after);
        let mut params = CertificateParams::default();
        // SPIFFE X.509-SVIDs put the identity in the URI SAN only; the subject stays empty.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = csr.params.subject_alt_names.clone();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        // Both: the same certificate opens tunnels (client) and accepts them (server).
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let leaf = CertificateSigningRequestParams { params, public_key: csr.public_key }
            .signed_by(&self.issuer)
            .map_err(|e| SignError::Sign(e.to_string()))?;

        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(Issued { chain, roots: self.roots.clone(), not_before, not_after })
    }
}

/// The controller's own TLS serving certificate, with the key it was issued for.
pub struct ServingIssued {
    /// The leaf first, then the intermediates up to (not including) the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER of the leaf's key (generated here; it never leaves the controller).
    pub key_pkcs8: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Authority {
    /// Issues the controller's own serving certificate for `names` (DNS names or IP
    /// addresses), valid for `ttl` (capped by the issuer's expiry), server usage only. The key
    /// is generated here, as a proxy would for its CSR.
    pub fn issue_serving(
        &self,
        names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<ServingIssued, SignError> {
        let mut sans = Vec::with_capacity(names.len());
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|e: rcgen::Error| SignError::Sign(format!("server name {name:?}: {e}")))?,
                ),
            };
            sans.push(san);
        }
        if sans.is_empty() {
            return Err(SignError::Sign("a serving certificate needs at least one name".into()));
        }
        let key = KeyPair::generate().map_err(|e| SignError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "weft");
        name.push(DnType::CommonName, "weft-controller");
        params.distinguished_name = name;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_before = now - BACKDATE;
        let not_after = (now + ttl).min(self.issuer_not_after);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let leaf = params.signed_by(&key, &self.issuer).map_err(|e| SignError::Sign(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(ServingIssued { chain, key_pkcs8: key.serialize_der(), not_before, not_after })
    }

    /// The roots as PEM: the trust bundle clients of the controller verify it with (public).
    pub fn roots_pem(&self) -> String {
        self.roots
            .iter()
            .map(|der| {
                let body = base64_lines(der);
                format!("-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n")
            })
            .collect()
    }
}

/// Standard base64 in 64-column lines, each ending in a newline (PEM's body).
fn base64_lines(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len() * 4 / 3 + 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    let mut out = String::with_capacity(text.len() + text.len() / 64 + 1);
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out
}

fn describe_san(san: &SanType) -> String {
    match san {
        SanType::URI(uri) => format!("URI:{}", uri.as_str()),
        SanType::DnsName(name) => format!("DNS:{}", name.as_str()),
        SanType::IpAddress(ip) => format!("IP:{ip}"),
        SanType::Rfc822Name(mail) => format!("email:{}", mail.as_str()),
        other => format!("{other:?}"),
    }
}

/// 16 random bytes with the top bit clear: RFC 5280 wants serials positive and at most 20
/// octets, and unpredictable serials are what CA/B guidance asks of every CA.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use rcgen::string::Ia5String;
    use rustls_pki_types::UnixTime;
    use x509_parser::extensions::GeneralName;

    use super::*;

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time")
    }

    fn authority() -> Authority {
        let material = CaMaterial::generate("cluster.local", now()).expect("generate");
        Authority::new("cluster.local", &material, now()).expect("authority")
    }

    fn csr(sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).expect("csr").der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(Ia5String::try_from(s).expect("ia5"))
    }

    fn web() -> SpiffeId {
        WEB.parse().expect("id")
    }

    /// The leaf's URI SANs, read back with an independent parser.
    fn uris(leaf: &CertificateDer<'_>) -> Vec<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).expect("parse leaf");
        let san = cert.subject_alternative_name().expect("san ext").expect("has san");
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(u) => u.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Verifies the chain with webpki, as a peer's rustls would, for both usages.
    fn verify(issued: &Issued, at: OffsetDateTime) -> Result<(), webpki::Error> {
        let anchors: Vec<_> = issued
            .roots
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
            .collect::<Result<_, _>>()?;
        let leaf = webpki::EndEntityCert::try_from(&issued.chain[0])?;
        let time = UnixTime::since_unix_epoch(Duration::from_secs(at.unix_timestamp() as u64));
        for usage in [webpki::KeyUsage::client_auth(), webpki::KeyUsage::server_auth()] {
            leaf.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &issued.chain[1..],
                time,
                usage,
                None,
                None,
            )?;
        }
        Ok(())
    }

    #[test]
    fn signs_a_workload_certificate_with_one_spiffe_uri() {
        let issued = authority().sign(&csr(vec![uri(WEB)]), &web(), None, now()).expect("signed");
        assert_eq!(uris(&issued.chain[0]), vec![WEB.to_string()]);
        assert_eq!(issued.chain.len(), 1, "a root signs directly: no intermediates");
        assert_eq!(issued.not_after - issued.not_before, DEFAULT_TTL + BACKDATE);
        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).expect("parse");
        assert!(!leaf.is_ca());
        verify(&issued, now()).expect("a peer accepts the chain");
        assert!(
            verify(&issued, now() + DEFAULT_TTL + Duration::from_secs(1)).is_err(),
            "expired leaves fail"
        );
    }

    #[test]
    fn lifetimes_are_clamped() {
        let ca = authority();
        let short =
            ca.sign(&csr(vec![uri(WEB)]), &web(), Some(Duration::from_secs(1)), now()).expect("signed");
        assert_eq!(short.not_after, now() + MIN_TTL);
        let long = ca.sign(&csr(vec![uri(WEB)]), &web(), Some(MAX_TTL * 10), now()).expect("signed");
        assert_eq!(long.not_after, now() + MAX_TTL);
    }

    #[test]
    fn refuses_two_sans() {
        let refused = authority()
            .sign(&csr(vec![uri(WEB), uri("spiffe://cluster.local/ns/shop/sa/admin")]), &web(), None, now())
            .expect_err("two SANs");
        assert!(matches!(refused, SignError::Sans { ref got, .. } if got.len() == 2), "{refused}");
    }

    #[test]
    fn refuses_a_csr_for_another_identity_or_a_dns_name() {
        let ca = authority();
        let other = ca.sign(&csr(vec![uri("spiffe://cluster.local/ns/shop/sa/admin")]), &web(), None, now());
        assert!(matches!(other, Err(SignError::Sans { .. })));
        let dns = SanType::DnsName(Ia5String::try_from("web.shop.svc").expect("ia5"));
        assert!(matches!(ca.sign(&csr(vec![dns]), &web(), None, now()), Err(SignError::Sans { .. })));
        assert!(matches!(ca.sign(&csr(vec![]), &web(), None, now()), Err(SignError::Sans { .. })));
    }

    #[test]
    fn refuses_a_foreign_trust_domain() {
        let foreign: SpiffeId = "spiffe://evil.example/ns/shop/sa/web".parse().expect("id");
        let refused = authority().sign(&csr(vec![uri(&foreign.to_string())]), &foreign, None, now());
        assert!(matches!(refused, Err(SignError::ForeignTrustDomain { .. })));
    }

    #[test]
    fn refuses_malformed_and_tampered_csrs() {
        let ca = authority();
        assert!(matches!(ca.sign(b"not a csr", &web(), None, now()), Err(SignError::Csr(_))));
        let mut tampered = csr(vec![uri(WEB)]);
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        assert!(matches!(ca.sign(&tampered, &web(), None, now()), Err(SignError::Csr(_))));
    }

    #[test]
    fn refuses_a_csr_asking_to_be_a_ca() {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri(WEB)];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = params.serialize_request(&key).expect("csr").der().to_vec();
        assert_eq!(authority().sign(&der, &web(), None, now()).err(), Some(SignError::CaRequested));
    }

    #[test]
    fn a_user_supplied_intermediate_signs_and_is_sent_along() {
        let root = CaMaterial::generate("cluster.local", now()).expect("root");
        let root_key = KeyPair::from_pem(&root.key_pem).expect("root key");
        let root_der = CertificateDer::from_pem_slice(root.chain_pem.as_bytes()).expect("root der");
        let root_issuer = Issuer::from_ca_cert_der(&root_der, root_key).expect("issuer");

        let intermediate_key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "cert-manager intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.not_before = now() - BACKDATE;
        params.not_after = now() + Duration::from_secs(30 * 24 * 3600);
        let intermediate = params.signed_by(&intermediate_key, &root_issuer).expect("intermediate");

        let material = CaMaterial {
            chain_pem: format!("{}{}", intermediate.pem(), root.chain_pem),
            key_pem: intermediate_key.serialize_pem(),
            bundle_pem: root.chain_pem.clone(),
        };
        let ca = Authority::new("cluster.local", &material, now()).expect("authority");
        let issued = ca.sign(&csr(vec![uri(WEB)]), &web(), Some(MAX_TTL * 52), now()).expect("signed");
        assert_eq!(issued.chain.len(), 2, "leaf + intermediate, root left out");
        assert_eq!(issued.chain[1], *intermediate.der());
        assert_eq!(issued.roots, vec![root_der]);
        assert!(issued.not_after <= now() + Duration::from_secs(30 * 24 * 3600), "capped by the issuer");
        verify(&issued, now()).expect("chain to the user's root");
    }

    #[test]
    fn issues_a_serving_certificate_for_dns_names_and_ips() {
        let ca = authority();
        let names = vec!["weft-controller.weft-system.svc".to_string(), "127.0.0.1".to_string()];
        let issued = ca.issue_serving(&names, Duration::from_secs(24 * 3600), now()).expect("issued");
        let anchors: Vec<_> = ca
            .roots()
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).expect("anchor").to_owned())
            .collect();
        let leaf = webpki::EndEntityCert::try_from(&issued.chain[0]).expect("leaf");
        let time = UnixTime::since_unix_epoch(Duration::from_secs(now().unix_timestamp() as u64));
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &issued.chain[1..],
            time,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .expect("a client accepts the chain");
        for name in ["weft-controller.weft-system.svc", "127.0.0.1"] {
            let name = rustls_pki_types::ServerName::try_from(name).expect("name");
            leaf.verify_is_valid_for_subject_name(&name).expect("valid for its names");
        }
        let other = rustls_pki_types::ServerName::try_from("evil.example").expect("name");
        assert!(leaf.verify_is_valid_for_subject_name(&other).is_err());
        assert!(ca.issue_serving(&[], Duration::from_secs(60), now()).is_err());
        // The published bundle is the root, as PEM.
        let bundle = CertificateDer::pem_slice_iter(ca.roots_pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        assert_eq!(bundle, ca.roots().to_vec());
    }

    #[test]
    fn refuses_bad_ca_material() {
        let good = CaMaterial::generate("cluster.local", now()).expect("root");
        let other = CaMaterial::generate("cluster.local", now()).expect("root");
        let mismatched = CaMaterial { key_pem: other.key_pem.clone(), ..good.clone() };
        assert!(matches!(Authority::new("cluster.local", &mismatched, now()), Err(CaError::KeyMismatch)));
        let empty = CaMaterial { chain_pem: String::new(), ..good.clone() };
        assert!(matches!(Authority::new("cluster.local", &empty, now()), Err(CaError::NoCertificate)));
        let later = now() + GENERATED_ROOT_VALIDITY + Duration::from_secs(3600);
        assert!(matches!(Authority::new("cluster.local", &good, later), Err(CaError::Expired(_))));

        // A leaf is not a CA.
        let leaf_key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri(WEB)];
        let leaf = params.self_signed(&leaf_key).expect("leaf");
        let as_ca = CaMaterial {
            chain_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            bundle_pem: good.chain_pem.clone(),
        };
        assert!(matches!(Authority::new("cluster.local", &as_ca, now()), Err(CaError::NotCa)));
    }
}
