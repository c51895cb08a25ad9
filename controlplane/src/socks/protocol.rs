//! The SOCKS5 messages the front reads and writes: method selection and
//! request (RFC 1928), username/password sub-negotiation (RFC 1929).
//!
//! Hand-written rather than taken from a crate: the SOCKS server crates we
//! looked at log the password at debug level, and here the password is an
//! API key. Every read is bounded by the wire format (lengths are one byte).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol version of RFC 1928.
pub const VERSION: u8 = 5;
/// Version of the RFC 1929 sub-negotiation.
const AUTH_VERSION: u8 = 1;
/// Method: username/password (RFC 1929).
pub const METHOD_PASSWORD: u8 = 2;
/// Method selection answer: none of the offered methods is acceptable.
pub const NO_ACCEPTABLE_METHOD: u8 = 0xff;
/// Command: CONNECT.
const CMD_CONNECT: u8 = 1;

/// The reply codes of RFC 1928 section 6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

impl Reply {
    /// The metric label and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reply::Succeeded => "succeeded",
            Reply::GeneralFailure => "general_failure",
            Reply::NotAllowed => "not_allowed",
            Reply::NetworkUnreachable => "network_unreachable",
            Reply::HostUnreachable => "host_unreachable",
            Reply::ConnectionRefused => "connection_refused",
            Reply::TtlExpired => "ttl_expired",
            Reply::CommandNotSupported => "command_not_supported",
            Reply::AddressTypeNotSupported => "address_type_not_supported",
        }
    }
}

/// A destination as the client gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A name for the agent to resolve inside the private network.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the connection failed or ended: {0}")]
    Io(#[from] std::io::Error),
    #[error("version {0} is not SOCKS5; configure the client for SOCKS version 5")]
    Version(u8),
    #[error(
        "username/password sub-negotiation version {0} is not 1 (RFC 1929); the client is not speaking SOCKS5 with a password"
    )]
    AuthVersion(u8),
    #[error("the username or password is not UTF-8")]
    NotUtf8,
    #[error("command {0} is not supported: only CONNECT (1)")]
    Command(u8),
    #[error("address type {0} is not supported: use IPv4 (1), a domain name (3) or IPv6 (4)")]
    AddressType(u8),
    #[error("the domain name is empty or not UTF-8")]
    BadName,
}

impl ReadError {
    /// The reply a client gets for this error, if it can still get one.
    pub fn reply(&self) -> Reply {
        match self {
            ReadError::Command(_) => Reply::CommandNotSupported,
            ReadError::AddressType(_) => Reply::AddressTypeNotSupported,
            _ => Reply::GeneralFailure,
        }
    }
}

/// Reads the method selection message; returns the offered methods.
pub async fn read_greeting<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let version = r.read_u8().await?;
    if version != VERSION {
        return Err(ReadError::Version(version));
    }
    let n = r.read_u8().await?;
    let mut methods = vec![0; usize::from(n)];
    r.read_exact(&mut methods).await?;
    Ok(methods)
}

/// Reads the RFC 1929 username and password.
pub async fn read_credentials<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(String, SecretString), ReadError> {
    let version = r.read_u8().await?;
    if version != AUTH_VERSION {
        return Err(ReadError::AuthVersion(version));
    }
    let user = read_short(r).await?;
    let password = read_short(r).await?;
    let user = String::from_utf8(user).map_err(|_| ReadError::NotUtf8)?;
    let password = String::from_utf8(password).map_err(|_| ReadError::NotUtf8)?;
    Ok((user, SecretString::from(password)))
}

/// The RFC 1929 answer: status 0 is success, anything else closes.
pub fn auth_reply(ok: bool) -> [u8; 2] {
    [AUTH_VERSION, if ok { 0 } else { 1 }]
}

/// Reads a CONNECT request; returns the destination.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Host, u16), ReadError> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    let [version, command, _reserved, address_type] = head;
    if version != VERSION {
        return Err(ReadError::Version(version));
    }
    let host = match address_type {
        1 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).await?;
            Host::Ip(IpAddr::V4(Ipv4Addr::from(b)))
        }
        3 => {
            let name = String::from_utf8(read_short(r).await?).map_err(|_| ReadError::BadName)?;
            if name.is_empty() {
                return Err(ReadError::BadName);
            }
            Host::Name(name)
        }
        4 => {
            let mut b = [0u8; 16];
            r.read_exact(&mut b).await?;
            Host::Ip(IpAddr::V6(Ipv6Addr::from(b)))
        }
        // The length of an unknown address is unknown: nothing more can be read.
        other => return Err(ReadError::AddressType(other)),
    };
    let port = r.read_u16().await?;
    // Read to the end before refusing, so that the reply is not mistaken
    // for a half-read request.
    if command != CMD_CONNECT {
        return Err(ReadError::Command(command));
    }
    Ok((host, port))
}

/// A request's reply; `bound` is the address the front uses (0.0.0.0:0 when
/// it failed).
pub fn reply(code: Reply, bound: SocketAddr) -> Vec<u8> {
    let mut out = vec![VERSION, code as u8, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// A one-byte length, then that many bytes.
async fn read_short<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let n = r.read_u8().await?;
    let mut b = vec![0; usize::from(n)];
    r.read_exact(&mut b).await?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use secrecy::ExposeSecret;

    use super::*;

    #[tokio::test]
    async fn reads_a_greeting_credentials_and_each_address_type() {
        let mut g: &[u8] = &[5, 2, 0, 2];
        assert_eq!(read_greeting(&mut g).await.unwrap(), vec![0, 2]);

        let mut c: &[u8] = &[1, 2, b'p', b'g', 3, b'k', b'e', b'y'];
        let (user, password) = read_credentials(&mut c).await.unwrap();
        assert_eq!(user, "pg");
        assert_eq!(password.expose_secret(), "key");

        let mut v4: &[u8] = &[5, 1, 0, 1, 127, 0, 0, 1, 0x15, 0x38];
        assert_eq!(
            read_request(&mut v4).await.unwrap(),
            (Host::Ip("127.0.0.1".parse().unwrap()), 5432)
        );
        let mut name: &[u8] = &[5, 1, 0, 3, 2, b'd', b'b', 0, 80];
        assert_eq!(
            read_request(&mut name).await.unwrap(),
            (Host::Name("db".into()), 80)
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 22]);
        assert_eq!(
            read_request(&mut v6.as_slice()).await.unwrap(),
            (Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 22)
        );
    }

    #[tokio::test]
    async fn refusals_carry_their_reply_code() {
        let mut bind: &[u8] = &[5, 2, 0, 1, 127, 0, 0, 1, 0, 80];
        let e = read_request(&mut bind).await.unwrap_err();
        assert_eq!(e.reply(), Reply::CommandNotSupported);
        assert!(bind.is_empty(), "the whole request is read before refusing");

        let mut odd: &[u8] = &[5, 1, 0, 9];
        assert_eq!(
            read_request(&mut odd).await.unwrap_err().reply(),
            Reply::AddressTypeNotSupported
        );
        let mut v4: &[u8] = &[4, 1, 0, 80];
        assert!(matches!(
            read_greeting(&mut v4).await,
            Err(ReadError::Version(4))
        ));
        let mut empty_name: &[u8] = &[5, 1, 0, 3, 0, 0, 80];
        assert!(matches!(
            read_request(&mut empty_name).await,
            Err(ReadError::BadName)
        ));
        let mut short: &[u8] = &[5, 1, 0, 1, 127];
        assert!(matches!(
            read_request(&mut short).await,
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn replies_encode_the_bound_address() {
        assert_eq!(
            reply(Reply::Succeeded, "127.0.0.1:1080".parse().unwrap()),
            vec![5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38]
        );
        let r = reply(Reply::ConnectionRefused, "[::1]:0".parse().unwrap());
        assert_eq!(&r[..4], &[5, 5, 0, 4]);
        assert_eq!(r.len(), 4 + 16 + 2);
        assert_eq!(auth_reply(false), [1, 1]);
    }
}
