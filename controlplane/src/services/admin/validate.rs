//! Checks of names and targets that clients send, with the fix in the
//! message.

use tonic::Status;

/// Pool names: letters, digits, '.', '-' and '_', 1-63 characters.
pub fn check_pool(pool: &str) -> Result<(), Status> {
    let ok = !pool.is_empty()
        && pool.len() <= 63
        && pool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "pool {pool:?} is not a valid name: use 1-63 letters, digits, '.', '-' or '_'"
        )))
    }
}

/// Connection names: letters, digits, '-' and '_', 1-63 characters.
pub fn check_connection_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "connection name {name:?} is not valid: use 1-63 letters, digits, '-' or '_'"
        )))
    }
}

/// Org names: lower-case letters, digits and '-', 1-63 characters.
pub fn check_org(org: &str) -> Result<(), Status> {
    let ok = !org.is_empty()
        && org.len() <= 63
        && org
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "org {org:?} is not a valid name: use 1-63 lower-case letters, digits or '-'"
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
