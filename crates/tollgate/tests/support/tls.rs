//! Certificates made by the test itself: a throw-away CA and a server
//! certificate for 127.0.0.1 / localhost that it signed.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// PEM files in one directory, removed when dropped.
pub struct TestCerts {
    dir: PathBuf,
    /// The CA certificate (what clients trust).
    pub ca: PathBuf,
    /// The server certificate (signed by the CA).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// A CA the server's certificate is *not* signed by.
    pub other_ca: PathBuf,
}

impl TestCerts {
    /// Generates the CA, the server certificate and an unrelated CA.
    pub fn generate() -> TestCerts {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-certs-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let ca = new_ca("tollgate test CA");
        let other = new_ca("some other CA");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test redis");
        let key = KeyPair::generate().expect("generate a key");
        let cert = params
            .signed_by(&key, &ca)
            .expect("sign the server certificate");
        let write = |name: &str, pem: String| -> PathBuf {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write a PEM file");
            p
        };
        TestCerts {
            ca: write("ca.crt", ca.pem()),
            other_ca: write("other-ca.crt", other.pem()),
            cert: write("redis.crt", cert.pem()),
            key: write("redis.key", key.serialize_pem()),
            dir,
        }
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("generate a CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign the CA")
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
