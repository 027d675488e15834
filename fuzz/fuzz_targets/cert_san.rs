//! Certificate SANs to what they grant: the tenant subnets a module signer may
//! govern (`urn:pronto:subnet:<cidr>`, exec-env's `describe_certificate`, which
//! verification runs on every signer and the tenant scope check then reads), the
//! roles and DNS names of a management client (`urn:pronto:role:<role>`,
//! exec-env's `CertificateRoles`) and what the router's management server
//! admits with them (pronto's `mgmt::authz`).
//!
//! The first byte picks the input's shape: a whole DER certificate; the DER
//! content of a SAN extension inside an otherwise fixed certificate; or a list
//! of SAN entries (one per line, the first byte of each picking its kind and
//! prefix) written into that certificate, which is where the oracles are:
//! a certificate with a malformed subnet SAN is refused rather than read as "no
//! restriction"; the subnets read are the canonical forms of the ones written;
//! roles, names and the grant are exactly what the entries say.
#![no_main]

use std::str::FromStr;

use exec_env::role::{CertificateRoles, MAX_CERT_NAMES, ROLE_URI_PREFIX, Role};
use exec_env::trust::{SUBNET_URI_PREFIX, describe_certificate};
use libfuzzer_sys::fuzz_target;
use router_core::VirtualSubnet;

const OPERATORS: &[&str] = &["ops.lab"];
const VIEWERS: &[&str] = &["noc.lab"];

/// DER tag-length-value (definite length, up to 64 KiB).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    match u8::try_from(n) {
        Ok(b) if b < 0x80 => out.push(b),
        Ok(b) => out.extend_from_slice(&[0x81, b]),
        Err(_) => {
            out.push(0x82);
            out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
        }
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn name(cn: &str) -> Vec<u8> {
    let atv = seq(&[&[0x06, 0x03, 0x55, 0x04, 0x03], &tlv(0x0c, cn.as_bytes())]);
    seq(&[&tlv(0x31, &atv)])
}

/// A certificate (unsigned: nothing here checks the signature) whose only
/// extension is a SAN with `general_names` as its content.
fn certificate(general_names: &[u8]) -> Vec<u8> {
    let ecdsa_sha256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let alg = seq(&[ecdsa_sha256]);
    let validity = seq(&[&tlv(0x17, b"250101000000Z"), &tlv(0x17, b"350101000000Z")]);
    let mut point = vec![0x00, 0x04];
    point.extend_from_slice(&[7; 64]);
    let spki = seq(&[
        &seq(&[
            &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        ]),
        &tlv(0x03, &point),
    ]);
    let san = seq(&[&[0x06, 0x03, 0x55, 0x1d, 0x11], &tlv(0x04, general_names)]);
    let extensions = tlv(0xa3, &seq(&[&san]));
    let tbs = seq(&[
        &[0xa0, 0x03, 0x02, 0x01, 0x02],
        &[0x02, 0x01, 0x01],
        &alg,
        &name("Fuzz CA"),
        &validity,
        &name("fuzz signer"),
        &spki,
        &extensions,
    ]);
    seq(&[&tbs, &alg, &tlv(0x03, &[0x00, 0x30, 0x00])])
}

/// One SAN entry as the structured input writes it.
enum Entry<'a> {
    Subnet(&'a [u8]),
    Role(&'a [u8]),
    Dns(&'a [u8]),
    Uri(&'a [u8]),
}

impl Entry<'_> {
    fn der(&self) -> Vec<u8> {
        match self {
            Self::Subnet(t) => tlv(0x86, &[SUBNET_URI_PREFIX.as_bytes(), t].concat()),
            Self::Role(t) => tlv(0x86, &[ROLE_URI_PREFIX.as_bytes(), t].concat()),
            Self::Dns(t) => tlv(0x82, t),
            Self::Uri(t) => tlv(0x86, t),
        }
    }
}

/// Whatever parses as a subnet prints back to itself.
fn subnet_round_trip(text: &str) {
    if let Ok(s) = VirtualSubnet::from_str(text) {
        assert_eq!(s.to_string().parse::<VirtualSubnet>(), Ok(s), "{text:?}");
        assert!(s.contains(s.addr()));
    }
}

fn admission(der: &[u8], method: &http::Method) -> bool {
    let ops: Vec<String> = OPERATORS.iter().map(|s| (*s).to_owned()).collect();
    let viewers: Vec<String> = VIEWERS.iter().map(|s| (*s).to_owned()).collect();
    pronto::fuzz::management_admission(&ops, &viewers, Some(der), method).is_ok()
}

/// Every reading of one certificate; nothing may panic.
fn read_all(der: &[u8]) {
    if let Ok(info) = describe_certificate(der) {
        for s in &info.subnets {
            let parsed: VirtualSubnet = s.parse().expect("a subnet read from a SAN re-parses");
            assert_eq!(&parsed.to_string(), s, "subnets are read in canonical form");
        }
    }
    if let Ok(r) = CertificateRoles::from_der(der) {
        assert!(r.roles.len() <= MAX_CERT_NAMES && r.unknown.len() <= MAX_CERT_NAMES);
        assert!(r.names.len() <= MAX_CERT_NAMES);
        let get = admission(der, &http::Method::GET);
        let post = admission(der, &http::Method::POST);
        assert!(get || !post, "a client may modify but not read");
    } else {
        assert!(
            !admission(der, &http::Method::GET),
            "an unreadable certificate was admitted"
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(data) {
        subnet_round_trip(text);
    }
    match mode % 3 {
        0 => read_all(data),
        1 => read_all(&certificate(data)),
        _ => structured(data),
    }
});

fn structured(data: &[u8]) {
    let entries: Vec<Entry<'_>> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let (&kind, text) = line.split_first()?;
            Some(match kind % 4 {
                0 => Entry::Subnet(text),
                1 => Entry::Role(text),
                2 => Entry::Dns(text),
                _ => Entry::Uri(text),
            })
        })
        .collect();
    let names: Vec<u8> = entries.iter().flat_map(|e| e.der()).collect();
    if names.len() > 60_000 {
        return;
    }
    let der = certificate(&tlv(0x30, &names));
    read_all(&der);

    let info = describe_certificate(&der);
    let roles = CertificateRoles::from_der(&der);
    // Both read the same SAN extension: it parses for both or for neither.
    let Ok(roles) = roles else {
        assert!(
            info.is_err(),
            "SANs unreadable for roles but read for subnets"
        );
        return;
    };

    // Subnets: each URI with the subnet prefix, in order, canonical; one that
    // does not parse (or one too many) refuses the whole certificate.
    let mut subnets = Vec::new();
    let mut refused = false;
    for e in &entries {
        let uri = match e {
            Entry::Subnet(t) => [SUBNET_URI_PREFIX.as_bytes(), t].concat(),
            Entry::Uri(t) => t.to_vec(),
            _ => continue,
        };
        let Some(cidr) = uri.strip_prefix(SUBNET_URI_PREFIX.as_bytes()) else {
            continue;
        };
        match std::str::from_utf8(cidr)
            .ok()
            .and_then(|c| c.parse::<VirtualSubnet>().ok())
        {
            Some(s) if subnets.len() < exec_env::format::MAX_MANIFEST_SUBNETS => {
                subnets.push(s.to_string());
            }
            _ => {
                refused = true;
                break;
            }
        }
    }
    match info {
        Ok(info) => {
            assert!(
                !refused,
                "a malformed or excess subnet SAN was accepted: {:?}",
                info.subnets
            );
            assert_eq!(info.subnets, subnets);
        }
        Err(e) => assert!(
            refused,
            "a certificate of well-formed subnet SANs was refused: {e}"
        ),
    }

    // Roles and names: the first MAX_CERT_NAMES of each, roles sorted and unique.
    let mut want_roles = Vec::new();
    let mut want_names = Vec::new();
    for e in &entries {
        match e {
            Entry::Role(t) | Entry::Uri(t) => {
                let uri = match e {
                    Entry::Role(_) => [ROLE_URI_PREFIX.as_bytes(), t].concat(),
                    _ => t.to_vec(),
                };
                if let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX.as_bytes())
                    && let Some(r) = std::str::from_utf8(role).ok().and_then(Role::from_name)
                    && want_roles.len() < MAX_CERT_NAMES
                {
                    want_roles.push(r);
                }
            }
            // A name that is not UTF-8 does not parse as one (x509-parser keeps
            // its bytes) and is skipped.
            Entry::Dns(t) if want_names.len() < MAX_CERT_NAMES => {
                if let Ok(n) = std::str::from_utf8(t) {
                    want_names.push(n.to_owned());
                }
            }
            _ => {}
        }
    }
    want_roles.sort_unstable();
    want_roles.dedup();
    assert_eq!(roles.roles, want_roles);
    assert_eq!(roles.names, want_names);

    // The grant: the stronger of the roles and the allow-lists.
    let listed = |list: &[&str]| {
        roles
            .names
            .iter()
            .any(|n| list.iter().any(|l| l.eq_ignore_ascii_case(n)))
    };
    let operator = roles.has(Role::Operator) || listed(OPERATORS);
    let viewer = operator || roles.has(Role::Viewer) || listed(VIEWERS);
    assert_eq!(admission(&der, &http::Method::POST), operator);
    assert_eq!(admission(&der, &http::Method::GET), viewer);
    assert_eq!(admission(&der, &http::Method::HEAD), viewer);
    assert_eq!(admission(&der, &http::Method::DELETE), operator);
}
