//! Throwaway certificates for one test control plane: a CA, the apiserver's serving cert, an
//! admin client cert (group system:masters) and the service-account signing key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};

use crate::Error;

/// The user name of the operator identity.
pub const OPERATOR_USER: &str = "wasm-operator";

/// Paths of the PEM files written by [`write`].
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// A second client identity, user `wasm-operator` in group system:masters, so tests can
    /// tell the operator's requests apart (e.g. in the audit log).
    pub operator_cert: PathBuf,
    pub operator_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    /// The CA certificate as PEM.
    pub ca_pem: String,
}

/// Generate everything into `dir`. `ips` are the serving cert's IP SANs.
pub fn write(dir: &Path, ips: &[IpAddr]) -> Result<Pki, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wasmruntime-testbed-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut names: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push("kubernetes.default.svc.cluster.local".into());
    let mut serving = CertificateParams::new(names)?;
    serving
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin
        .distinguished_name
        .push(DnType::CommonName, "testbed-admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin.signed_by(&admin_key, &ca)?;

    let mut operator = CertificateParams::new(Vec::<String>::new())?;
    operator
        .distinguished_name
        .push(DnType::CommonName, OPERATOR_USER);
    operator
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    operator.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let operator_key = KeyPair::generate()?;
    let operator_cert = operator.signed_by(&operator_key, &ca)?;

    let sa_key = KeyPair::generate()?;

    let file = |name: &str, contents: &str| -> Result<PathBuf, Error> {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    };
    Ok(Pki {
        ca_cert: file("ca.crt", &ca.pem())?,
        ca_key: file("ca.key", &ca_key_pem)?,
        serving_cert: file("apiserver.crt", &serving_cert.pem())?,
        serving_key: file("apiserver.key", &serving_key.serialize_pem())?,
        admin_cert: file("admin.crt", &admin_cert.pem())?,
        admin_key: file("admin.key", &admin_key.serialize_pem())?,
        operator_cert: file("operator.crt", &operator_cert.pem())?,
        operator_key: file("operator.key", &operator_key.serialize_pem())?,
        service_account_key: file("sa.key", &sa_key.serialize_pem())?,
        service_account_pub: file("sa.pub", &sa_key.public_key_pem())?,
        ca_pem: ca.pem(),
    })
}
