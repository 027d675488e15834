//! Who may do what (DESIGN.md §6, "Operators are a role"). TLS has already
//! proved the client holds a certificate of the trust domain; that alone no
//! longer makes it an operator, since every router and host of the domain holds
//! one too.
//!
//! A client's grant comes from its certificate's role URI SAN
//! (`urn:pronto:role:operator|viewer`, see [`exec_env::role`]) or from this
//! router's allow-lists (`[management] operators` / `viewers`, matched against
//! the certificate's dNSName SANs), the stronger of the two. Queries and
//! `/metrics` (GET) need viewer or operator; module operations (POST, DELETE)
//! need operator. Router and host certificates, and certificates with no role,
//! get nothing unless a list names them. The grant is decided once per
//! connection, before any request body is read; refusals are 403 with a hint
//! and counted per [`Forbidden`] reason.

use exec_env::role::{CertificateRoles, Role};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Read-only: queries and `/metrics`.
    Query,
    /// Module operations: load, swap, rollback, remove.
    Modify,
}

impl Access {
    /// GET and HEAD read; every other method changes something (the API's
    /// POST and DELETE are its module operations).
    pub(super) fn of(method: &hyper::Method) -> Self {
        if method == hyper::Method::GET || method == hyper::Method::HEAD {
            Self::Query
        } else {
            Self::Modify
        }
    }
}

/// What a client may do here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Grant {
    /// Nothing.
    Nothing,
    /// Queries.
    Viewer,
    /// Queries and module operations.
    Operator,
}

/// Why a request was refused; each has its own counter
/// (`pronto_mgmt_forbidden_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Forbidden {
    /// A host's certificate, not listed here.
    HostCertificate,
    /// A router's certificate, not listed here.
    RouterCertificate,
    /// A certificate with no role, not listed here.
    NoRole,
    /// A viewer asked for a module operation.
    ViewerOnly,
    /// The certificate TLS accepted does not parse for its roles.
    UnreadableCertificate,
}

impl Forbidden {
    /// Every reason, in counter order.
    pub(super) const ALL: [Self; 5] = [
        Self::HostCertificate,
        Self::RouterCertificate,
        Self::NoRole,
        Self::ViewerOnly,
        Self::UnreadableCertificate,
    ];

    /// The `reason` label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::HostCertificate => "host_certificate",
            Self::RouterCertificate => "router_certificate",
            Self::NoRole => "no_role",
            Self::ViewerOnly => "viewer_only",
            Self::UnreadableCertificate => "unreadable_certificate",
        }
    }

    /// Index into the counters.
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// The router's allow-lists (`[management] operators`, `viewers`), lower case.
#[derive(Debug, Clone, Default)]
pub(super) struct Authorizer {
    operators: Vec<String>,
    viewers: Vec<String>,
}

/// A connected client: its certificate's facts and what they grant.
#[derive(Debug, Clone)]
pub(super) struct ManagementClient {
    /// The certificate's first dNSName SAN, for logs and hints.
    pub(super) name: String,
    /// Roles the certificate carries.
    pub(super) roles: Vec<Role>,
    /// What it may do here.
    pub(super) grant: Grant,
    /// The certificate did not parse.
    unreadable: bool,
}

impl Authorizer {
    /// From the configured lists (already lower case and checked as DNS names).
    pub(super) fn new(operators: &[String], viewers: &[String]) -> Self {
        Self {
            operators: operators.to_vec(),
            viewers: viewers.to_vec(),
        }
    }

    /// The client holding `leaf` (the certificate TLS verified; DER).
    pub(super) fn client(&self, leaf: Option<&[u8]>) -> ManagementClient {
        let parsed = leaf.map(CertificateRoles::from_der);
        let Some(Ok(cert)) = parsed else {
            return ManagementClient {
                name: "(unreadable certificate)".to_owned(),
                roles: Vec::new(),
                grant: Grant::Nothing,
                unreadable: true,
            };
        };
        let listed = |list: &[String]| {
            cert.names
                .iter()
                .any(|n| list.iter().any(|l| l.eq_ignore_ascii_case(n)))
        };
        let from_cert = if cert.has(Role::Operator) {
            Grant::Operator
        } else if cert.has(Role::Viewer) {
            Grant::Viewer
        } else {
            Grant::Nothing
        };
        let from_list = if listed(&self.operators) {
            Grant::Operator
        } else if listed(&self.viewers) {
            Grant::Viewer
        } else {
            Grant::Nothing
        };
        ManagementClient {
            name: cert
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| "(no DNS name)".to_owned()),
            roles: cert.roles,
            grant: from_cert.max(from_list),
            unreadable: false,
        }
    }
}

impl ManagementClient {
    /// Whether this client may make a request needing `access`.
    pub(super) fn allows(&self, access: Access) -> Result<(), Forbidden> {
        let needed = match access {
            Access::Query => Grant::Viewer,
            Access::Modify => Grant::Operator,
        };
        if self.grant >= needed {
            return Ok(());
        }
        Err(if self.unreadable {
            Forbidden::UnreadableCertificate
        } else if self.grant == Grant::Viewer {
            Forbidden::ViewerOnly
        } else if self.roles.contains(&Role::Host) {
            Forbidden::HostCertificate
        } else if self.roles.contains(&Role::Router) {
            Forbidden::RouterCertificate
        } else {
            Forbidden::NoRole
        })
    }

    /// The roles, for logs: `host`, `operator,viewer`, `none`.
    pub(super) fn roles_text(&self) -> String {
        if self.roles.is_empty() {
            return "none".to_owned();
        }
        let v: Vec<&str> = self.roles.iter().map(|r| r.as_str()).collect();
        v.join(",")
    }
}

/// The 403 answer: what was needed, what the certificate is, how to get the
/// role.
pub(super) fn refusal(client: &ManagementClient, access: Access, why: Forbidden) -> qre::Response {
    let (what, needed, list) = match access {
        Access::Query => ("queries need", "the viewer or operator role", "viewers"),
        Access::Modify => ("module operations need", "the operator role", "operators"),
    };
    let role_flag = match access {
        Access::Query => "viewer",
        Access::Modify => "operator",
    };
    let name = &client.name;
    let is = match why {
        Forbidden::HostCertificate => {
            format!("{name:?} holds a host certificate, and hosts are not operators")
        }
        Forbidden::RouterCertificate => {
            format!("{name:?} holds a router certificate, and routers are not operators")
        }
        Forbidden::NoRole => format!("the certificate of {name:?} carries no role"),
        Forbidden::ViewerOnly => format!("{name:?} is a viewer"),
        Forbidden::UnreadableCertificate => {
            "the client certificate could not be read for its role".to_owned()
        }
    };
    qre::Response::error(
        403,
        "forbidden",
        format!("{what} {needed}; {is}"),
        format!(
            "use a certificate issued with `pronto ca issue-peer --dir <CA dir> --name <you> \
             --role {role_flag}`, or add {name:?} to this router's `[management] {list}`"
        ),
    )
}

/// What the server decides about a request before reading its body, from the
/// same pieces it uses: may the client holding `leaf` (DER, the certificate TLS
/// verified) use `method` on a router whose allow-lists are `operators` and
/// `viewers`? `Err` is the 403 it answers. For the fuzz targets
/// ([`crate::fuzz::management_admission`]).
pub(crate) fn admission(
    operators: &[String],
    viewers: &[String],
    leaf: Option<&[u8]>,
    method: &hyper::Method,
) -> Result<(), qre::Response> {
    let client = Authorizer::new(operators, viewers).client(leaf);
    let access = Access::of(method);
    client
        .allows(access)
        .map_err(|why| refusal(&client, access, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use exec_env::ca::{CertificateAuthority, KeyAlgorithm, Validity};

    fn ca() -> (CertificateAuthority, Validity) {
        let v = Validity::days_from(std::time::SystemTime::now(), 1).unwrap();
        (
            CertificateAuthority::generate("Authz CA", v, KeyAlgorithm::EcdsaP256).unwrap(),
            v,
        )
    }

    fn client(
        a: &Authorizer,
        ca: &CertificateAuthority,
        v: Validity,
        name: &str,
        role: Option<Role>,
    ) -> ManagementClient {
        let c = ca.issue_peer_as(name, role, v).unwrap();
        a.client(Some(&c.cert_der))
    }

    #[test]
    fn roles_from_certificates_decide_queries_and_module_operations() {
        let (ca, v) = ca();
        let a = Authorizer::default();
        let op = client(&a, &ca, v, "ops.lab", Some(Role::Operator));
        assert_eq!(op.allows(Access::Query), Ok(()));
        assert_eq!(op.allows(Access::Modify), Ok(()));
        let viewer = client(&a, &ca, v, "noc.lab", Some(Role::Viewer));
        assert_eq!(viewer.allows(Access::Query), Ok(()));
        assert_eq!(viewer.allows(Access::Modify), Err(Forbidden::ViewerOnly));
        let host = client(&a, &ca, v, "h1.lab", Some(Role::Host));
        assert_eq!(host.allows(Access::Query), Err(Forbidden::HostCertificate));
        assert_eq!(host.allows(Access::Modify), Err(Forbidden::HostCertificate));
        let router = client(&a, &ca, v, "site-a.lab", Some(Role::Router));
        assert_eq!(
            router.allows(Access::Modify),
            Err(Forbidden::RouterCertificate)
        );
        let plain = client(&a, &ca, v, "old.lab", None);
        assert_eq!(plain.allows(Access::Query), Err(Forbidden::NoRole));
        assert_eq!(plain.roles_text(), "none");
        assert_eq!(host.roles_text(), "host");
    }

    #[test]
    fn allow_lists_grant_by_certificate_name_and_the_stronger_grant_wins() {
        let (ca, v) = ca();
        let a = Authorizer::new(&["site-a.lab".to_owned()], &["h1.lab".to_owned()]);
        let router = client(&a, &ca, v, "site-a.lab", Some(Role::Router));
        assert_eq!(router.allows(Access::Modify), Ok(()), "listed as operator");
        let host = client(&a, &ca, v, "H1.lab", Some(Role::Host));
        assert_eq!(
            host.allows(Access::Query),
            Ok(()),
            "listed as viewer, any case"
        );
        assert_eq!(host.allows(Access::Modify), Err(Forbidden::ViewerOnly));
        let op = client(&a, &ca, v, "h1.lab", Some(Role::Operator));
        assert_eq!(
            op.allows(Access::Modify),
            Ok(()),
            "a list never lowers a grant"
        );
        let other = client(&a, &ca, v, "h2.lab", Some(Role::Host));
        assert_eq!(other.allows(Access::Query), Err(Forbidden::HostCertificate));
    }

    #[test]
    fn unreadable_or_absent_certificates_get_nothing() {
        let a = Authorizer::new(&["ops.lab".to_owned()], &[]);
        for c in [a.client(None), a.client(Some(b"junk"))] {
            assert_eq!(
                c.allows(Access::Query),
                Err(Forbidden::UnreadableCertificate)
            );
        }
    }

    #[test]
    fn methods_map_to_access_and_refusals_name_the_role_and_the_way_to_get_it() {
        assert_eq!(Access::of(&hyper::Method::GET), Access::Query);
        assert_eq!(Access::of(&hyper::Method::HEAD), Access::Query);
        assert_eq!(Access::of(&hyper::Method::POST), Access::Modify);
        assert_eq!(Access::of(&hyper::Method::DELETE), Access::Modify);
        let (ca, v) = ca();
        let host = client(&Authorizer::default(), &ca, v, "h1.lab", Some(Role::Host));
        let r = refusal(&host, Access::Modify, Forbidden::HostCertificate);
        assert_eq!(r.status, 403);
        let body = String::from_utf8(r.body).unwrap();
        assert!(body.contains("the operator role"), "{body}");
        assert!(body.contains("host certificate"), "{body}");
        assert!(body.contains("--role operator"), "{body}");
        assert!(body.contains("[management] operators"), "{body}");
        let labels: Vec<&str> = Forbidden::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(labels.len(), 5);
        for (i, f) in Forbidden::ALL.iter().enumerate() {
            assert_eq!(f.index(), i, "ALL is in index order");
        }
    }
}
