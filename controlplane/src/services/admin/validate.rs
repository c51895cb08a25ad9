//! Checks of names and targets that clients send, with the fix in the
//! message.

use tonic::Status;

/// 1 to `max` bytes, each one `allowed`.
fn name_ok(name: &str, max: usize, allowed: impl Fn(u8) -> bool) -> bool {
    !name.is_empty() && name.len() <= max && name.bytes().all(allowed)
}

/// Letters, digits, '.', '-' and '_'.
fn dotted(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-".contains(&b)
}

/// Pool names: letters, digits, '.', '-' and '_', 1-63 characters.
pub fn check_pool(pool: &str) -> Result<(), Status> {
    if name_ok(pool, 63, dotted) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "pool {pool:?} is not a valid name: use 1-63 letters, digits, '.', '-' or '_'"
        )))
    }
}

/// Connection names: letters, digits, '-' and '_', 1-63 characters.
pub fn check_connection_name(name: &str) -> Result<(), Status> {
    if name_ok(name, 63, |b| {
        b.is_ascii_alphanumeric() || b"-_".contains(&b)
    }) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "connection name {name:?} is not valid: use 1-63 letters, digits, '-' or '_'"
        )))
    }
}

/// Org names: lower-case letters, digits and '-', 1-63 characters.
pub fn check_org(org: &str) -> Result<(), Status> {
    if name_ok(org, 63, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
    }) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "org {org:?} is not a valid name: use 1-63 lower-case letters, digits or '-'"
        )))
    }
}

/// Job types and credential names (what agents can declare): letters,
/// digits, '.', '-' and '_', 1-64 characters.
pub fn check_job_name(what: &str, name: &str) -> Result<(), Status> {
    if name_ok(name, 64, dotted) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{what} {name:?} is not valid: use 1-64 letters, digits, '.', '-' or '_'"
        )))
    }
}

/// A target host and port as a client gave them.
pub fn check_target(host: &str, port: u32) -> Result<u16, Status> {
    if host.is_empty()
        || host.len() > 253
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Status::invalid_argument(format!(
            "target host {host:?} is not valid: give a host name or IP address"
        )));
    }
    u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
        Status::invalid_argument(format!("target port {port} is not valid: use 1-65535"))
    })
}
