//! The few sysctls the shells need, written under `/proc/sys` of the calling
//! thread's network namespace (net sysctls are per namespace).

use super::SyscallError;
use std::io;
use std::path::PathBuf;

/// Longest key accepted (keys come from code and interface names, never input).
const MAX_KEY: usize = 128;

fn path(key: &str) -> Result<PathBuf, SyscallError> {
    if key.is_empty() || key.len() > MAX_KEY || key.contains("..") || key.starts_with('/') {
        return Err(SyscallError::new(
            "sysctl",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad sysctl key {key:?}"),
            ),
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

/// Write `value` to sysctl `key` (dotted or slashed, e.g. `net.ipv4.ip_forward`).
pub fn write(key: &str, value: &str) -> Result<(), SyscallError> {
    std::fs::write(path(key)?, value).map_err(|e| SyscallError::new("write(/proc/sys)", e))
}

/// Read sysctl `key`, trimmed.
pub fn read(key: &str) -> Result<String, SyscallError> {
    std::fs::read_to_string(path(key)?)
        .map(|s| s.trim().to_owned())
        .map_err(|e| SyscallError::new("read(/proc/sys)", e))
}

/// Turn on IPv4 (and IPv6 if `v6`) forwarding: the router's kernel must forward
/// client packets into the TUN.
pub fn enable_forwarding(v6: bool) -> Result<(), SyscallError> {
    write("net/ipv4/ip_forward", "1")?;
    if v6 {
        write("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Set reverse-path filtering of interface `iface` (0 off, 1 strict, 2 loose).
/// Decapsulated packets enter through a TUN with the client's source, which a
/// strict check on that interface would drop. The kernel applies the larger of the
/// `all` and per-interface values, so the `all` value is returned for the caller
/// to warn about.
pub fn set_rp_filter(iface: &str, mode: u8) -> Result<u8, SyscallError> {
    if iface.contains(['/', '.']) {
        return Err(SyscallError::new(
            "sysctl",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface {iface:?}"),
            ),
        ));
    }
    write(
        &format!("net/ipv4/conf/{iface}/rp_filter"),
        &mode.to_string(),
    )?;
    let all = read("net/ipv4/conf/all/rp_filter")?;
    Ok(all.parse().unwrap_or(0))
}

/// Turn IPv6 off on interface `iface`, so the kernel sends no router solicitations
/// or MLD reports into a TUN that carries only IPv4.
pub fn disable_ipv6(iface: &str) -> Result<(), SyscallError> {
    if iface.contains(['/', '.']) {
        return Err(SyscallError::new(
            "sysctl",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface {iface:?}"),
            ),
        ));
    }
    write(&format!("net/ipv6/conf/{iface}/disable_ipv6"), "1")
}
