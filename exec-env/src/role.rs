//! Roles carried by certificates of the trust domain (DESIGN.md §6: "Operators
//! are a role").
//!
//! A peer certificate names what its holder is with a URI SAN
//! `urn:pronto:role:<role>` ([`ROLE_URI_PREFIX`]), written by
//! `pronto ca issue-peer --role ...` ([`crate::ca::CertificateAuthority::issue_peer_as`]).
//!
//! Why a URI SAN rather than an extended key usage OID: it is the convention the
//! trust domain already uses for what a certificate may do
//! (`urn:pronto:subnet:<cidr>` on signers), it needs no private enterprise OID,
//! it is readable in `openssl x509 -text` and in logs as is, and it leaves the
//! EKU extension to what TLS checks (serverAuth/clientAuth), so no TLS stack
//! refuses the certificate for an EKU it does not know.
//!
//! [`CertificateRoles::from_der`] reads the roles and the dNSName SANs (the
//! names a router's `[management] operators` / `viewers` allow-lists match) of a
//! certificate that TLS already verified; deciding what they allow is the
//! management API's business.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Prefix of the URI SAN that carries a role.
pub const ROLE_URI_PREFIX: &str = "urn:pronto:role:";

/// Most role URIs and DNS names read from one certificate (more are ignored).
pub const MAX_CERT_NAMES: usize = 16;

/// What the holder of a certificate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// A person or tool that changes routers: module load, swap, rollback,
    /// remove, and every query.
    Operator,
    /// A person or tool that only reads: queries and `/metrics`.
    Viewer,
    /// A router (signalling peer); no management rights.
    Router,
    /// A host agent (signalling peer); no management rights.
    Host,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Self; 4] = [Self::Operator, Self::Viewer, Self::Router, Self::Host];

    /// Its name: `operator`, `viewer`, `router`, `host`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Viewer => "viewer",
            Self::Router => "router",
            Self::Host => "host",
        }
    }

    /// Its URI SAN, `urn:pronto:role:<name>`.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    /// The role named `name` (as [`Role::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate does not parse as X.509.
#[derive(Debug, thiserror::Error)]
#[error("certificate does not parse: {reason}")]
#[non_exhaustive]
pub struct RoleError {
    /// What x509-parser found.
    pub reason: String,
}

/// The roles and DNS names of one certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateRoles {
    /// Roles from `urn:pronto:role:` URI SANs, sorted, without duplicates.
    pub roles: Vec<Role>,
    /// `urn:pronto:role:` URIs naming no known role (kept for the log).
    pub unknown: Vec<String>,
    /// dNSName SANs.
    pub names: Vec<String>,
}

impl CertificateRoles {
    /// Read them from a DER certificate. Unknown role names are kept apart
    /// (they grant nothing); at most [`MAX_CERT_NAMES`] of each are read.
    pub fn from_der(der: &[u8]) -> Result<Self, RoleError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| RoleError {
            reason: e.to_string(),
        })?;
        let sans = cert.subject_alternative_name().map_err(|e| RoleError {
            reason: e.to_string(),
        })?;
        let mut out = Self::default();
        let Some(sans) = sans else {
            return Ok(out);
        };
        for name in &sans.value.general_names {
            match name {
                GeneralName::URI(uri) => {
                    let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX) else {
                        continue;
                    };
                    match Role::from_name(role) {
                        Some(r) if out.roles.len() < MAX_CERT_NAMES => out.roles.push(r),
                        Some(_) => {}
                        None if out.unknown.len() < MAX_CERT_NAMES => {
                            out.unknown.push(uri.chars().take(80).collect());
                        }
                        None => {}
                    }
                }
                GeneralName::DNSName(dns) if out.names.len() < MAX_CERT_NAMES => {
                    out.names.push((*dns).to_owned());
                }
                _ => {}
            }
        }
        out.roles.sort_unstable();
        out.roles.dedup();
        Ok(out)
    }

    /// Whether the certificate carries `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip_and_unknown_names_are_none() {
        for r in Role::ALL {
            assert_eq!(Role::from_name(r.as_str()), Some(r));
            assert_eq!(r.uri(), format!("urn:pronto:role:{r}"));
        }
        assert_eq!(Role::from_name("admin"), None);
        assert_eq!(Role::from_name("Operator"), None, "names are exact");
    }

    #[test]
    fn issued_peer_certificates_carry_their_role_and_name() -> Result<(), Box<dyn std::error::Error>>
    {
        use crate::ca::{CertificateAuthority, KeyAlgorithm, Validity};
        let now = std::time::SystemTime::now();
        let v = Validity::days_from(now, 1)?;
        let ca = CertificateAuthority::generate("Role CA", v, KeyAlgorithm::EcdsaP256)?;
        for role in Role::ALL {
            let c = ca.issue_peer_as("ops.example", Some(role), v)?;
            let r = CertificateRoles::from_der(&c.cert_der)?;
            assert_eq!(r.roles, vec![role]);
            assert!(r.has(role));
            assert_eq!(r.names, vec!["ops.example".to_owned()]);
            assert!(r.unknown.is_empty());
        }
        let plain = CertificateRoles::from_der(&ca.issue_peer("site-a.example", v)?.cert_der)?;
        assert!(
            plain.roles.is_empty(),
            "a peer certificate without --role has none"
        );
        assert_eq!(plain.names, vec!["site-a.example".to_owned()]);
        // A signer's subnet URI is not a role.
        let signer = ca.issue_signer(&crate::ca::SignerRequest {
            tenant_subnets: vec!["10.9.0.0/16".into()],
            ..crate::ca::SignerRequest::new("tenant", v)
        })?;
        assert!(
            CertificateRoles::from_der(&signer.cert_der)?
                .roles
                .is_empty()
        );
        Ok(())
    }

    #[test]
    fn garbage_is_an_error_not_a_role() {
        assert!(CertificateRoles::from_der(b"not a certificate").is_err());
    }
}
