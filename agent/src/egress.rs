//! The agent's egress allow-list: the destinations it may open TCP connections to.
//!
//! The agent runs inside a private network and dials destinations when the
//! control plane asks. The control plane is not trusted with that choice: if it
//! were compromised, an agent that dialled anything it was told to would let the
//! attacker reach every host the agent can reach. So the agent checks every
//! request against its own allow-list, which is set locally (`egress_allow` in
//! the agent config, or `--allow` flags) and which the control plane cannot
//! change. The default is deny: an empty list allows nothing.
//!
//! # Rule syntax
//!
//! A rule is `HOST:PORTS`.
//!
//! HOST is one of:
//!
//! | HOST             | matches                                                              |
//! |------------------|----------------------------------------------------------------------|
//! | `db.internal`    | that name only; case-insensitive, a trailing dot is ignored          |
//! | `*.corp.example` | any name ending in `.corp.example`, but not `corp.example` itself    |
//! | `10.1.2.3`       | that IPv4 address                                                    |
//! | `10.0.0.0/8`     | any IPv4 address in the CIDR block                                   |
//! | `[fd00::1]`      | that IPv6 address (always in brackets)                               |
//! | `[fd00::/8]`     | any IPv6 address in the CIDR block                                   |
//! | `*`              | any host; it has to be written out, nothing allows everything by itself |
//!
//! PORTS is `*` (any port), a port such as `5432`, or an inclusive range such
//! as `5000-5100`. Port 0 is not a destination and is rejected.
//!
//! # How a destination is checked
//!
//! - An IP literal (`10.1.2.3`, `::1` or `[::1]`) is matched by IP, CIDR and
//!   `*` rules only: a name rule says which *name* may be dialled, not which
//!   addresses.
//! - A name matched by a name rule (exact, wildcard or `*`) may be dialled at
//!   every address it resolves to: the operator trusts that name's DNS.
//! - Otherwise the name's addresses are filtered through the IP and CIDR rules;
//!   the ones no rule covers are dropped, and if none remain the request is
//!   denied.
//! - The host and the port must be allowed by the same rule.
//! - The name is resolved once and the caller connects only to the addresses
//!   returned here, so DNS answering differently between the check and the
//!   connect (DNS rebinding) cannot smuggle in another address.
//! - No DNS query is made unless its answer could allow the request, so a
//!   compromised control plane cannot use the agent to leak data through
//!   lookups of names it is not allowed to dial.
//! - IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) reach the IPv4 host, so
//!   they are treated as the IPv4 address they carry: only IPv4 rules match
//!   them, and `[::/0]` does not allow all of IPv4 through the back door.
//! - Requested host names must be plain DNS names (letters, digits, `-`, `_`,
//!   dots). The system resolver accepts odd spellings of IP addresses such as
//!   `127.1`, `0x7f.0.0.1`, `010.0.0.1` (octal) or an address followed by a
//!   space and junk, which could otherwise slip past name rules.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Longest DNS name in text form, without the trailing dot (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// One allow-list rule, `HOST:PORTS`. See the module docs for the syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    host: HostPattern,
    ports: Ports,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host, name or address.
    Any,
    /// An exact name, lowercase, without a trailing dot.
    Name(String),
    /// `*.suffix`: the suffix, lowercase, without the `*.` and trailing dot.
    Suffix(String),
    /// An address or CIDR block; a single address is a full-length prefix.
    Net(IpNet),
}

impl HostPattern {
    /// Whether this pattern allows dialling `name` (normalised) at any address.
    fn matches_name(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Name(exact) => exact == name,
            // At least one label before the suffix: `*.corp.example` is about
            // the hosts under `corp.example`, not the domain itself.
            Self::Suffix(suffix) => name
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
            Self::Net(_) => false,
        }
    }

    /// Whether this pattern allows the (canonical) address `ip`.
    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            Self::Any => true,
            Self::Name(_) | Self::Suffix(_) => false,
            Self::Net(net) => net.contains(ip),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Name(name) => f.write_str(name),
            Self::Suffix(suffix) => write!(f, "*.{suffix}"),
            Self::Net(net) => net.fmt(f),
        }
    }
}

/// An IP address block. Invariant: no bits are set after the prefix, and the
/// prefix is at most 32 (IPv4) or 128 (IPv6); `parse_host` guarantees both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IpNet {
    V4 { addr: Ipv4Addr, prefix: u8 },
    V6 { addr: Ipv6Addr, prefix: u8 },
}

impl IpNet {
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Self::V4 { addr, prefix }, IpAddr::V4(ip)) => {
                u32::from(ip) & v4_mask(prefix) == u32::from(addr)
            }
            (Self::V6 { addr, prefix }, IpAddr::V6(ip)) => {
                u128::from(ip) & v6_mask(prefix) == u128::from(addr)
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4 { addr, prefix: 32 } => write!(f, "{addr}"),
            Self::V4 { addr, prefix } => write!(f, "{addr}/{prefix}"),
            Self::V6 { addr, prefix: 128 } => write!(f, "[{addr}]"),
            Self::V6 { addr, prefix } => write!(f, "[{addr}/{prefix}]"),
        }
    }
}

/// The network mask for an IPv4 prefix length (at most 32).
fn v4_mask(prefix: u8) -> u32 {
    // A shift by the full width is not defined, so /0 falls out of
    // `checked_shl` as "no bits".
    u32::MAX
        .checked_shl(u32::from(32_u8.saturating_sub(prefix)))
        .unwrap_or(0)
}

/// The network mask for an IPv6 prefix length (at most 128).
fn v6_mask(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(u32::from(128_u8.saturating_sub(prefix)))
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ports {
    /// `*`: every port from 1 to 65535.
    Any,
    /// An inclusive range; a single port has `first == last`. Never contains 0.
    Range { first: u16, last: u16 },
}

impl Ports {
    fn contains(self, port: u16) -> bool {
        match self {
            Self::Any => port != 0,
            Self::Range { first, last } => (first..=last).contains(&port),
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Any => f.write_str("*"),
            Self::Range { first, last } if first == last => write!(f, "{first}"),
            Self::Range { first, last } => write!(f, "{first}-{last}"),
        }
    }
}

impl fmt::Display for Rule {
    /// The canonical rule text: it parses back to the same rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.ports)
    }
}

/// Why a rule from the config could not be parsed. Every message names the
/// rule as written and says how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("egress rule {rule:?}: the rule is empty; write HOST:PORTS, e.g. \"db.internal:5432\"")]
    Empty { rule: String },
    #[error(
        "egress rule {rule:?}: no port; write \"{host}:PORT\", \"{host}:5000-5100\" for a range or \"{host}:*\" for any port"
    )]
    MissingPort { rule: String, host: String },
    #[error(
        "egress rule {rule:?}: no host before ':'; write HOST:PORTS, e.g. \"db.internal:5432\", or \"*:PORTS\" for any host"
    )]
    MissingHost { rule: String },
    #[error(
        "egress rule {rule:?}: IPv6 addresses must be in brackets; write e.g. \"[fd00::1]:5432\" or \"[fd00::/8]:*\""
    )]
    UnbracketedIpv6 { rule: String },
    #[error(
        "egress rule {rule:?}: more than one ':'; write HOST:PORTS with a single ':', e.g. \"db.internal:5432\" (IPv6 addresses go in brackets: \"[fd00::1]:5432\")"
    )]
    TooManyColons { rule: String },
    #[error(
        "egress rule {rule:?}: '[' is not closed by ']'; write IPv6 addresses as e.g. \"[fd00::1]:5432\""
    )]
    UnclosedBracket { rule: String },
    #[error(
        "egress rule {rule:?}: expected ':' after ']' but found {found:?}; write \"[{inside}]:PORTS\""
    )]
    AfterBracket {
        rule: String,
        inside: String,
        found: String,
    },
    #[error(
        "egress rule {rule:?}: {text:?} is not an IPv6 address or CIDR; write e.g. [fd00::1] or [fd00::/8]"
    )]
    InvalidIpv6 { rule: String, text: String },
    #[error(
        "egress rule {rule:?}: IPv4 addresses are written without brackets; write \"{text}:PORTS\""
    )]
    BracketedIpv4 { rule: String, text: String },
    #[error(
        "egress rule {rule:?}: {text:?} is not an IPv4 address; write an IPv4 CIDR as e.g. 10.0.0.0/8, or an IPv6 one in brackets as e.g. [fd00::/8]"
    )]
    InvalidCidrAddress { rule: String, text: String },
    #[error("egress rule {rule:?}: prefix length {prefix:?} is not a number; use 0-{max}")]
    InvalidPrefix {
        rule: String,
        prefix: String,
        max: u8,
    },
    #[error(
        "egress rule {rule:?}: prefix length {prefix} is larger than {max} for {family}; use 0-{max}"
    )]
    PrefixTooLong {
        rule: String,
        prefix: String,
        max: u8,
        family: &'static str,
    },
    #[error(
        "egress rule {rule:?}: {text} has bits set after the /{prefix} prefix; write the network address {network}, or {addr} alone for a single address"
    )]
    HostBitsSet {
        rule: String,
        text: String,
        prefix: u8,
        network: String,
        addr: String,
    },
    #[error(
        "egress rule {rule:?}: {text} is an IPv4-mapped IPv6 address, which the agent matches as IPv4; write {ipv4} instead"
    )]
    Ipv4Mapped {
        rule: String,
        text: String,
        ipv4: String,
    },
    #[error(
        "egress rule {rule:?}: '*' can only be the whole host or a leading \"*.\" label; write \"*:PORTS\" for any host, or e.g. \"*.corp.example:PORTS\" for the names under a domain"
    )]
    MisplacedWildcard { rule: String },
    #[error("egress rule {rule:?}: host {host:?} {problem}")]
    InvalidName {
        rule: String,
        host: String,
        problem: NameProblem,
    },
    #[error(
        "egress rule {rule:?}: ports {ports:?} are not valid; write a port (5432), a range (5000-5100) or * for any port"
    )]
    InvalidPorts { rule: String, ports: String },
    #[error("egress rule {rule:?}: port {port} is out of range; use 1-65535")]
    PortOutOfRange { rule: String, port: String },
    #[error("egress rule {rule:?}: port 0 is not a valid destination port; use 1-65535")]
    PortZero { rule: String },
    #[error("egress rule {rule:?}: port range {first}-{last} is reversed; write {last}-{first}")]
    ReversedRange { rule: String, first: u16, last: u16 },
}

/// What is wrong with a host name, in a rule or in a request. Displays as a
/// predicate of the name ("has an empty label ...").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    NotAscii,
    TooLong(usize),
    EmptyLabel,
    LabelTooLong(usize),
    BadChar(char),
    EndsInNumber,
    BracketsWithoutIpv6,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("has no name; write e.g. db.internal or *.corp.example"),
            Self::NotAscii => f.write_str(
                "is not ASCII; write internationalised names in their xn-- (punycode) form",
            ),
            Self::TooLong(len) => write!(
                f,
                "is {len} characters long; DNS names are at most {MAX_NAME_LEN}"
            ),
            Self::EmptyLabel => f.write_str(
                "has an empty label (a leading dot or two dots in a row); remove the extra dot",
            ),
            Self::LabelTooLong(len) => write!(
                f,
                "has a label of {len} characters; DNS labels are at most {MAX_LABEL_LEN}"
            ),
            Self::BadChar(c) => write!(
                f,
                "contains {c:?}; host names may only use letters, digits, '-', '_' and '.'"
            ),
            Self::EndsInNumber => f.write_str(
                "ends in a number but is not an IPv4 address; write all four parts of an IPv4 address (e.g. 10.1.2.0) or a CIDR (e.g. 10.1.2.0/24)",
            ),
            Self::BracketsWithoutIpv6 => {
                f.write_str("is in brackets but is not an IPv6 address; write e.g. [fd00::1]")
            }
        }
    }
}

/// Checks a DNS name and returns it lowercase without its trailing dot, the
/// form rules and requests are compared in.
fn normalize_name(host: &str) -> Result<String, NameProblem> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if !name.is_ascii() {
        return Err(NameProblem::NotAscii);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameProblem::TooLong(name.len()));
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameProblem::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameProblem::LabelTooLong(label.len()));
        }
        // Underscores are not valid in host names proper, but they are common
        // in internal DNS, and they cannot make a name look like an address.
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(NameProblem::BadChar(c));
        }
        last = label;
    }
    // A name whose last label is a number is no name (no TLD is numeric) but
    // the resolver reads it as an IPv4 address in some legacy form (`127.1`,
    // `0x7f.0.0.1`, `010.0.0.1`); refusing it keeps "name" and "address"
    // apart. Same test as the WHATWG URL standard's "ends in a number".
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    if hex || last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameProblem::EndsInNumber);
    }
    Ok(name.to_ascii_lowercase())
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, RuleError> {
        // Surrounding whitespace is an artefact of YAML or shell quoting, never
        // meant; whitespace inside the rule is still an error.
        let rule = text.trim();
        if rule.is_empty() {
            return Err(RuleError::Empty {
                rule: text.to_owned(),
            });
        }
        let (host, ports) = split_rule(text, rule)?;
        Ok(Self {
            host: parse_host(text, host)?,
            ports: parse_ports(text, ports)?,
        })
    }
}

/// The HOST part of a rule as written.
#[derive(Clone, Copy)]
enum HostText<'a> {
    /// Inside `[...]`.
    Bracketed(&'a str),
    Plain(&'a str),
}

/// Splits `rule` into HOST and PORTS; `original` is the text for errors.
fn split_rule<'a>(original: &str, rule: &'a str) -> Result<(HostText<'a>, &'a str), RuleError> {
    let missing_port = |host: String| RuleError::MissingPort {
        rule: original.to_owned(),
        host,
    };
    if let Some(rest) = rule.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(RuleError::UnclosedBracket {
                rule: original.to_owned(),
            });
        };
        return match after.strip_prefix(':') {
            Some("") => Err(missing_port(format!("[{inside}]"))),
            Some(ports) => Ok((HostText::Bracketed(inside), ports)),
            None if after.is_empty() => Err(missing_port(format!("[{inside}]"))),
            None => Err(RuleError::AfterBracket {
                rule: original.to_owned(),
                inside: inside.to_owned(),
                found: after.to_owned(),
            }),
        };
    }
    let Some((host, ports)) = rule.rsplit_once(':') else {
        return Err(missing_port(rule.to_owned()));
    };
    if host.contains(':') {
        return Err(if looks_like_ipv6(rule) {
            RuleError::UnbracketedIpv6 {
                rule: original.to_owned(),
            }
        } else {
            RuleError::TooManyColons {
                rule: original.to_owned(),
            }
        });
    }
    if host.is_empty() {
        return Err(RuleError::MissingHost {
            rule: original.to_owned(),
        });
    }
    if ports.is_empty() {
        return Err(missing_port(host.to_owned()));
    }
    Ok((HostText::Plain(host), ports))
}

/// Whether an unbracketed rule with several colons was probably meant as an
/// IPv6 address, to pick the more helpful error.
fn looks_like_ipv6(rule: &str) -> bool {
    let charset = rule
        .chars()
        .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.' | '/' | '*' | '-'));
    charset && (rule.contains("::") || rule.matches(':').count() >= 3)
}

fn parse_host(rule: &str, host: HostText<'_>) -> Result<HostPattern, RuleError> {
    match host {
        HostText::Bracketed(inside) => parse_v6_net(rule, inside).map(HostPattern::Net),
        HostText::Plain("*") => Ok(HostPattern::Any),
        HostText::Plain(host) if host.contains('*') => match host.strip_prefix("*.") {
            Some(suffix) if !suffix.contains('*') => normalize_name(suffix)
                .map(HostPattern::Suffix)
                .map_err(|problem| RuleError::InvalidName {
                    rule: rule.to_owned(),
                    host: host.to_owned(),
                    problem,
                }),
            _ => Err(RuleError::MisplacedWildcard {
                rule: rule.to_owned(),
            }),
        },
        HostText::Plain(host) => {
            if let Some((addr, prefix)) = host.split_once('/') {
                let Ok(addr) = addr.parse::<Ipv4Addr>() else {
                    return Err(RuleError::InvalidCidrAddress {
                        rule: rule.to_owned(),
                        text: addr.to_owned(),
                    });
                };
                let prefix = parse_prefix(rule, prefix, 32, "IPv4")?;
                return v4_net(rule, addr, prefix).map(HostPattern::Net);
            }
            if let Ok(addr) = host.parse::<Ipv4Addr>() {
                return Ok(HostPattern::Net(IpNet::V4 { addr, prefix: 32 }));
            }
            normalize_name(host)
                .map(HostPattern::Name)
                .map_err(|problem| RuleError::InvalidName {
                    rule: rule.to_owned(),
                    host: host.to_owned(),
                    problem,
                })
        }
    }
}

/// Parses the inside of `[...]`: an IPv6 address or CIDR.
fn parse_v6_net(rule: &str, inside: &str) -> Result<IpNet, RuleError> {
    let (addr_text, prefix) = match inside.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (inside, None),
    };
    let Ok(addr) = addr_text.parse::<Ipv6Addr>() else {
        return Err(if addr_text.parse::<Ipv4Addr>().is_ok() {
            RuleError::BracketedIpv4 {
                rule: rule.to_owned(),
                text: inside.to_owned(),
            }
        } else {
            RuleError::InvalidIpv6 {
                rule: rule.to_owned(),
                text: inside.to_owned(),
            }
        });
    };
    let prefix = match prefix {
        Some(prefix) => parse_prefix(rule, prefix, 128, "IPv6")?,
        None => 128,
    };
    let mask = v6_mask(prefix);
    let bits = u128::from(addr);
    if bits & !mask != 0 {
        return Err(RuleError::HostBitsSet {
            rule: rule.to_owned(),
            text: format!("[{addr}/{prefix}]"),
            prefix,
            network: format!("[{}/{prefix}]", Ipv6Addr::from(bits & mask)),
            addr: format!("[{addr}]"),
        });
    }
    // Requests for mapped addresses are matched as IPv4 (see the module
    // docs), so a rule written in mapped form could never match anything.
    // `prefix >= 96` is exactly when the whole block lies in ::ffff:0:0/96.
    if let (Some(v4), Some(v4_prefix)) = (addr.to_ipv4_mapped(), prefix.checked_sub(96)) {
        let net = IpNet::V4 {
            addr: v4,
            prefix: v4_prefix,
        };
        return Err(RuleError::Ipv4Mapped {
            rule: rule.to_owned(),
            text: IpNet::V6 { addr, prefix }.to_string(),
            ipv4: net.to_string(),
        });
    }
    Ok(IpNet::V6 { addr, prefix })
}

fn v4_net(rule: &str, addr: Ipv4Addr, prefix: u8) -> Result<IpNet, RuleError> {
    let mask = v4_mask(prefix);
    let bits = u32::from(addr);
    // `10.1.2.3/8` is ambiguous (10.0.0.0/8? 10.1.2.3 alone?); in an
    // allow-list a guess either way can be a surprise, so ask.
    if bits & !mask != 0 {
        return Err(RuleError::HostBitsSet {
            rule: rule.to_owned(),
            text: format!("{addr}/{prefix}"),
            prefix,
            network: format!("{}/{prefix}", Ipv4Addr::from(bits & mask)),
            addr: addr.to_string(),
        });
    }
    Ok(IpNet::V4 { addr, prefix })
}

fn parse_prefix(rule: &str, text: &str, max: u8, family: &'static str) -> Result<u8, RuleError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::InvalidPrefix {
            rule: rule.to_owned(),
            prefix: text.to_owned(),
            max,
        });
    }
    // All digits: a parse failure can only mean "too big for u8", which is
    // too long for either family.
    match text.parse::<u8>() {
        Ok(prefix) if prefix <= max => Ok(prefix),
        _ => Err(RuleError::PrefixTooLong {
            rule: rule.to_owned(),
            prefix: text.to_owned(),
            max,
            family,
        }),
    }
}

fn parse_ports(rule: &str, text: &str) -> Result<Ports, RuleError> {
    if text == "*" {
        return Ok(Ports::Any);
    }
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (
            parse_port(rule, text, first)?,
            parse_port(rule, text, last)?,
        ),
        None => {
            let port = parse_port(rule, text, text)?;
            (port, port)
        }
    };
    if first > last {
        return Err(RuleError::ReversedRange {
            rule: rule.to_owned(),
            first,
            last,
        });
    }
    Ok(Ports::Range { first, last })
}

/// Parses one port number out of `ports` (the whole PORTS text, for errors).
fn parse_port(rule: &str, ports: &str, text: &str) -> Result<u16, RuleError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::InvalidPorts {
            rule: rule.to_owned(),
            ports: ports.to_owned(),
        });
    }
    match text.parse::<u16>() {
        Ok(0) => Err(RuleError::PortZero {
            rule: rule.to_owned(),
        }),
        Ok(port) => Ok(port),
        // All digits, so the only failure is overflow.
        Err(_) => Err(RuleError::PortOutOfRange {
            rule: rule.to_owned(),
            port: text.to_owned(),
        }),
    }
}

/// A request the policy refused. The message says what was refused, why, and
/// what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("egress to {target} denied{reason}")]
pub struct Denied {
    /// The destination as requested, `host:port` (IPv6 in brackets).
    target: String,
    reason: DenyReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DenyReason {
    EmptyPolicy {
        fix: Fix,
    },
    NoRule {
        fix: Fix,
        port: u16,
        /// A rule that allows the host but on other ports, to point at.
        near: Option<String>,
    },
    NotCovered {
        fix: Fix,
        addresses: Vec<IpAddr>,
    },
    InvalidHost {
        host: String,
        problem: NameProblem,
    },
    PortZero,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyPolicy { fix } => write!(
                f,
                ": this agent allows no destinations yet (egress_allow is empty, and everything is denied by default); {fix}"
            ),
            Self::NoRule {
                fix, near: None, ..
            } => write!(
                f,
                " by this agent's policy: no rule in egress_allow matches; {fix}"
            ),
            Self::NoRule {
                fix,
                port,
                near: Some(near),
            } => write!(
                f,
                " by this agent's policy: no rule in egress_allow matches port {port} (rule \"{near}\" allows the host, on other ports); {fix}"
            ),
            Self::NotCovered { fix, addresses } => {
                f.write_str(
                    " by this agent's policy: no rule in egress_allow matches the name, and none of its addresses (",
                )?;
                for (i, addr) in addresses.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{addr}")?;
                }
                write!(f, ") is covered by an IP rule; {fix}")
            }
            Self::InvalidHost { host, problem } => {
                write!(f, ": the requested host {host:?} {problem}")
            }
            Self::PortZero => f.write_str(
                ": port 0 is not a valid destination port; request a port from 1 to 65535",
            ),
        }
    }
}

/// The rule that would allow a denied request, as config text and as a flag.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fix {
    rule: String,
    /// Shell-quoted when it has brackets, which shells treat as glob patterns.
    flag: String,
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "add \"{}\" to egress_allow in the agent config (or pass --allow {})",
            self.rule, self.flag
        )
    }
}

/// Why [`Policy::resolve`] returned no addresses.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("could not resolve {host}: {source}; check the name and the agent host's DNS")]
    Resolve {
        host: String,
        port: u16,
        #[source]
        source: io::Error,
    },
}

/// The agent's allow-list. Empty means nothing is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// A requested host, as the policy sees it.
enum Target {
    /// As requested (shown in messages) and canonical (matched and dialled).
    Ip {
        requested: IpAddr,
        canonical: IpAddr,
    },
    /// Normalised (see `normalize_name`).
    Name(String),
}

fn parse_target(host: &str) -> Result<Target, NameProblem> {
    let ip = if let Some(inside) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let Ok(ip) = inside.parse::<Ipv6Addr>() else {
            return Err(NameProblem::BracketsWithoutIpv6);
        };
        IpAddr::V6(ip)
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        ip
    } else {
        return normalize_name(host).map(Target::Name);
    };
    Ok(Target::Ip {
        requested: ip,
        canonical: ip.to_canonical(),
    })
}

/// An invalid host for a message: the control plane chose it, so keep a
/// hostile one from flooding the agent's logs.
fn abbreviate(host: &str) -> String {
    const KEEP: usize = 80;
    match host.char_indices().nth(KEEP) {
        Some((end, _)) => format!("{}...", host.get(..end).unwrap_or_default()),
        None => host.to_owned(),
    }
}

/// The part of the decision that needs no DNS.
enum Verdict {
    /// An allowed IP literal: dial exactly this.
    Literal(IpAddr),
    /// A name allowed by a name rule: dial whatever it resolves to.
    AnyAddress,
    /// A name no name rule allows, but IP rules for this port exist: dial the
    /// resolved addresses they cover.
    CoveredAddresses,
}

/// A request that passed the checks possible before DNS.
struct Approved {
    target: String,
    port: u16,
    fix: Fix,
    verdict: Verdict,
}

impl Policy {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// Parses rules as written in the config or on the command line; fails on
    /// the first bad one.
    pub fn parse<I: IntoIterator<Item = S>, S: AsRef<str>>(rules: I) -> Result<Self, RuleError> {
        rules
            .into_iter()
            .map(|rule| rule.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Self::new)
    }

    /// True if the policy allows nothing (the default).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The canonical text of every rule, in order, for the control plane's
    /// diagnostics.
    pub fn describe(&self) -> Vec<String> {
        self.rules.iter().map(ToString::to_string).collect()
    }

    /// Checks a destination and resolves it. Returns the socket addresses the
    /// agent may connect to; connect to these and nothing else, so that the
    /// addresses checked are the addresses dialled.
    ///
    /// IP literals are not looked up. A name is looked up only if the policy
    /// could allow it, so denied names cause no DNS traffic.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let approved = self.approve(host, port)?;
        if let Verdict::Literal(ip) = approved.verdict {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let resolve_error = |source| EgressError::Resolve {
            host: host.to_owned(),
            port,
            source,
        };
        // `host` passed validation in `approve`, so the resolver sees a plain
        // DNS name (trailing dot kept: it means "no search domains").
        let resolved: Vec<IpAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(resolve_error)?
            .map(|addr| addr.ip())
            .collect();
        if resolved.is_empty() {
            return Err(resolve_error(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no addresses",
            )));
        }
        let allowed = self.admit(approved, &resolved)?;
        Ok(allowed
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// Pure decision used by [`Policy::resolve`], testable without DNS: given
    /// the host as requested and the addresses it resolved to, returns the
    /// addresses that may be dialled (canonical, without duplicates).
    ///
    /// For an IP literal `resolved` is ignored and the result is that address.
    /// For a name allowed by a name rule the result is all of `resolved`,
    /// which may be empty.
    pub fn check(&self, host: &str, port: u16, resolved: &[IpAddr]) -> Result<Vec<IpAddr>, Denied> {
        let approved = self.approve(host, port)?;
        match approved.verdict {
            Verdict::Literal(ip) => Ok(vec![ip]),
            Verdict::AnyAddress | Verdict::CoveredAddresses => self.admit(approved, resolved),
        }
    }

    /// Everything that can be decided before DNS.
    fn approve(&self, host: &str, port: u16) -> Result<Approved, Denied> {
        let target = parse_target(host).map_err(|problem| {
            let host = abbreviate(host);
            Denied {
                target: format!("{host:?}:{port}"),
                reason: DenyReason::InvalidHost { host, problem },
            }
        })?;
        let (shown, fix) = match &target {
            Target::Ip {
                requested,
                canonical,
            } => {
                let rule = SocketAddr::new(*canonical, port).to_string();
                let flag = match canonical {
                    IpAddr::V4(_) => rule.clone(),
                    IpAddr::V6(_) => format!("'{rule}'"),
                };
                (
                    SocketAddr::new(*requested, port).to_string(),
                    Fix { rule, flag },
                )
            }
            Target::Name(name) => {
                let rule = format!("{name}:{port}");
                (
                    format!("{host}:{port}"),
                    Fix {
                        flag: rule.clone(),
                        rule,
                    },
                )
            }
        };
        let deny = |reason| Denied {
            target: shown.clone(),
            reason,
        };
        if port == 0 {
            return Err(deny(DenyReason::PortZero));
        }
        if self.rules.is_empty() {
            return Err(deny(DenyReason::EmptyPolicy { fix }));
        }
        // Host and port must be allowed by the same rule.
        let allowed = |host_matches: &dyn Fn(&HostPattern) -> bool| {
            self.rules
                .iter()
                .any(|rule| rule.ports.contains(port) && host_matches(&rule.host))
        };
        // When denying, a rule that allows the host on other ports is the most
        // likely typo, so the message points at it.
        let near = |host_matches: &dyn Fn(&HostPattern) -> bool| {
            self.rules
                .iter()
                .find(|rule| host_matches(&rule.host))
                .map(ToString::to_string)
        };
        let verdict = match &target {
            Target::Ip { canonical, .. } => {
                let matches = |host: &HostPattern| host.matches_ip(*canonical);
                if !allowed(&matches) {
                    let near = near(&matches);
                    return Err(deny(DenyReason::NoRule { fix, port, near }));
                }
                Verdict::Literal(*canonical)
            }
            Target::Name(name) => {
                let matches = |host: &HostPattern| host.matches_name(name);
                if allowed(&matches) {
                    Verdict::AnyAddress
                } else if allowed(&|host| matches!(host, HostPattern::Net(_))) {
                    Verdict::CoveredAddresses
                } else {
                    // No answer from DNS could be allowed: deny without a
                    // lookup, so denied names cause no DNS traffic.
                    let near = near(&matches);
                    return Err(deny(DenyReason::NoRule { fix, port, near }));
                }
            }
        };
        Ok(Approved {
            target: shown,
            port,
            fix,
            verdict,
        })
    }

    /// The second half of the decision for names: which resolved addresses may
    /// be dialled.
    fn admit(&self, approved: Approved, resolved: &[IpAddr]) -> Result<Vec<IpAddr>, Denied> {
        let port = approved.port;
        let mut allowed = Vec::with_capacity(resolved.len());
        for ip in resolved.iter().map(IpAddr::to_canonical) {
            let ok = match approved.verdict {
                Verdict::Literal(literal) => ip == literal,
                Verdict::AnyAddress => true,
                // The address must be covered by a rule that also allows the
                // port: host and port come from the same rule.
                Verdict::CoveredAddresses => self
                    .rules
                    .iter()
                    .any(|rule| rule.ports.contains(port) && rule.host.matches_ip(ip)),
            };
            if ok && !allowed.contains(&ip) {
                allowed.push(ip);
            }
        }
        if allowed.is_empty() && matches!(approved.verdict, Verdict::CoveredAddresses) {
            return Err(Denied {
                target: approved.target,
                reason: DenyReason::NotCovered {
                    fix: approved.fix,
                    addresses: resolved.to_vec(),
                },
            });
        }
        Ok(allowed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> Policy {
        Policy::parse(rules).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ips(texts: &[&str]) -> Vec<IpAddr> {
        texts.iter().map(|t| ip(t)).collect()
    }

    /// Whether `host:port` is allowed, for hosts whose resolution is irrelevant
    /// (IP literals) or given as one private address.
    fn allows(policy: &Policy, host: &str, port: u16) -> bool {
        policy.check(host, port, &ips(&["10.9.9.9"])).is_ok()
    }

    fn rule_error(text: &str) -> RuleError {
        text.parse::<Rule>().unwrap_err()
    }

    fn canonical(text: &str) -> String {
        text.parse::<Rule>().unwrap().to_string()
    }

    #[test]
    fn exact_name_matches_only_that_name() {
        let p = policy(&["db.internal:5432"]);
        assert_eq!(
            p.check("db.internal", 5432, &ips(&["10.0.0.5", "fd00::5"])),
            Ok(ips(&["10.0.0.5", "fd00::5"]))
        );
        for other in [
            "db2.internal",
            "internal",
            "x.db.internal",
            "db.internal.evil",
        ] {
            assert!(!allows(&p, other, 5432), "{other}");
        }
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(canonical("DB.Internal:5432"), "db.internal:5432");
        let p = policy(&["DB.Internal:5432"]);
        assert!(allows(&p, "db.internal", 5432));
        assert!(allows(&p, "DB.INTERNAL", 5432));
    }

    #[test]
    fn trailing_dot_is_ignored() {
        assert_eq!(canonical("db.internal.:5432"), "db.internal:5432");
        let p = policy(&["db.internal.:5432"]);
        assert!(allows(&p, "db.internal", 5432));
        assert!(allows(&p, "db.internal.", 5432));
        // Only one: "db.internal.." has an empty label.
        assert!(!allows(&p, "db.internal..", 5432));
    }

    #[test]
    fn wildcard_matches_names_under_the_domain_but_not_the_domain() {
        let p = policy(&["*.corp.example:443"]);
        assert_eq!(p.describe(), ["*.corp.example:443"]);
        assert!(allows(&p, "a.corp.example", 443));
        assert!(allows(&p, "a.b.corp.example", 443));
        assert!(allows(&p, "A.Corp.Example.", 443));
        assert!(!allows(&p, "corp.example", 443));
        assert!(!allows(&p, "xcorp.example", 443));
        assert!(!allows(&p, "a.corp.example.evil", 443));
        assert!(!allows(&p, ".corp.example", 443));
    }

    #[test]
    fn star_host_allows_any_host_on_its_ports() {
        let p = policy(&["*:22"]);
        assert!(allows(&p, "anything.example", 22));
        assert!(allows(&p, "192.0.2.1", 22));
        assert!(allows(&p, "[2001:db8::1]", 22));
        assert!(!allows(&p, "anything.example", 23));
        assert!(!allows(&p, "192.0.2.1", 23));
    }

    #[test]
    fn empty_policy_denies_everything() {
        let p = Policy::default();
        assert!(p.is_empty());
        assert!(!allows(&p, "db.internal", 5432));
        assert!(!allows(&p, "127.0.0.1", 5432));
        assert!(Policy::parse(Vec::<String>::new()).unwrap().is_empty());
    }

    #[test]
    fn ipv4_address_matches_only_itself() {
        let p = policy(&["10.1.2.3:5432"]);
        assert_eq!(p.check("10.1.2.3", 5432, &[]), Ok(ips(&["10.1.2.3"])));
        assert!(!allows(&p, "10.1.2.4", 5432));
        assert!(!allows(&p, "10.1.2.2", 5432));
    }

    #[test]
    fn ip_literal_ignores_resolved_addresses() {
        let p = policy(&["10.1.2.3:5432"]);
        assert_eq!(
            p.check("10.1.2.3", 5432, &ips(&["10.6.6.6"])),
            Ok(ips(&["10.1.2.3"]))
        );
    }

    #[test]
    fn cidr_includes_network_and_broadcast_edges_only() {
        let p = policy(&["192.168.1.0/24:*"]);
        assert!(allows(&p, "192.168.1.0", 80));
        assert!(allows(&p, "192.168.1.255", 80));
        assert!(!allows(&p, "192.168.0.255", 80));
        assert!(!allows(&p, "192.168.2.0", 80));

        let p = policy(&["10.0.0.0/8:*"]);
        assert!(allows(&p, "10.0.0.0", 80));
        assert!(allows(&p, "10.255.255.255", 80));
        assert!(!allows(&p, "9.255.255.255", 80));
        assert!(!allows(&p, "11.0.0.0", 80));
    }

    #[test]
    fn cidr_slash_0_is_all_of_ipv4_and_nothing_else() {
        let p = policy(&["0.0.0.0/0:443"]);
        assert_eq!(p.describe(), ["0.0.0.0/0:443"]);
        assert!(allows(&p, "0.0.0.0", 443));
        assert!(allows(&p, "255.255.255.255", 443));
        assert!(!allows(&p, "::1", 443));
    }

    #[test]
    fn cidr_slash_32_is_one_address() {
        assert_eq!(canonical("10.1.2.3/32:5432"), "10.1.2.3:5432");
        let p = policy(&["10.1.2.3/32:5432"]);
        assert!(allows(&p, "10.1.2.3", 5432));
        assert!(!allows(&p, "10.1.2.4", 5432));
    }

    #[test]
    fn ipv6_address_in_brackets() {
        assert_eq!(canonical("[FD00:0:0::1]:80"), "[fd00::1]:80");
        let p = policy(&["[::1]:80"]);
        assert_eq!(p.check("::1", 80, &[]), Ok(ips(&["::1"])));
        assert_eq!(p.check("[::1]", 80, &[]), Ok(ips(&["::1"])));
        assert!(!allows(&p, "::2", 80));
        assert!(!allows(&p, "127.0.0.1", 80));
    }

    #[test]
    fn ipv6_cidr_edges() {
        let p = policy(&["[fd00::/8]:*"]);
        assert_eq!(p.describe(), ["[fd00::/8]:*"]);
        assert!(allows(&p, "fd00::", 1));
        assert!(allows(&p, "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1));
        assert!(!allows(&p, "fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1));
        assert!(!allows(&p, "fe00::", 1));
        assert!(!allows(&p, "10.0.0.1", 1));

        let p = policy(&["[::/0]:1", "[2001:db8::1/128]:2"]);
        assert_eq!(p.describe(), ["[::/0]:1", "[2001:db8::1]:2"]);
        assert!(allows(&p, "2001:db8::7", 1));
        assert!(allows(&p, "2001:db8::1", 2));
        assert!(!allows(&p, "2001:db8::2", 2));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_matched_as_ipv4() {
        // [::/0] is "all of IPv6", not a back door to IPv4 loopback.
        let p = policy(&["[::/0]:*"]);
        assert!(!allows(&p, "::ffff:127.0.0.1", 80));
        // An IPv4 rule covers the mapped form, and the IPv4 address is dialled.
        let p = policy(&["10.0.0.0/8:80"]);
        assert_eq!(p.check("::ffff:10.1.2.3", 80, &[]), Ok(ips(&["10.1.2.3"])));
        assert_eq!(
            p.check("db.internal", 80, &ips(&["::ffff:10.1.2.3"])),
            Ok(ips(&["10.1.2.3"]))
        );
    }

    #[test]
    fn port_star_allows_every_port() {
        let p = policy(&["db.internal:*"]);
        assert!(allows(&p, "db.internal", 1));
        assert!(allows(&p, "db.internal", 65535));
    }

    #[test]
    fn single_port_allows_only_that_port() {
        let p = policy(&["db.internal:5432"]);
        assert!(allows(&p, "db.internal", 5432));
        assert!(!allows(&p, "db.internal", 5431));
        assert!(!allows(&p, "db.internal", 5433));
    }

    #[test]
    fn port_range_is_inclusive() {
        let p = policy(&["db.internal:5000-5100"]);
        assert_eq!(p.describe(), ["db.internal:5000-5100"]);
        assert!(allows(&p, "db.internal", 5000));
        assert!(allows(&p, "db.internal", 5100));
        assert!(!allows(&p, "db.internal", 4999));
        assert!(!allows(&p, "db.internal", 5101));
        assert_eq!(canonical("db:1-65535"), "db:1-65535");
        assert_eq!(canonical("db:0080-80"), "db:80");
    }

    #[test]
    fn port_zero_is_never_allowed() {
        let p = policy(&["*:*"]);
        let denied = p.check("db.internal", 0, &ips(&["10.0.0.1"])).unwrap_err();
        assert!(
            denied.to_string().contains("port 0 is not a valid"),
            "{denied}"
        );
    }

    #[test]
    fn host_and_port_must_match_the_same_rule() {
        let p = policy(&["a.internal:80", "b.internal:5432"]);
        assert!(!allows(&p, "a.internal", 5432));
        let p = policy(&["10.0.0.0/8:80", "192.168.0.0/16:5432"]);
        assert!(!allows(&p, "10.0.0.1", 5432));
        assert!(p.check("db", 5432, &ips(&["10.0.0.1"])).is_err());
    }

    #[test]
    fn name_keeps_only_addresses_an_ip_rule_allows() {
        let p = policy(&["10.0.0.0/8:5432", "[fd00::/8]:5432", "192.168.0.0/16:80"]);
        let resolved = ips(&[
            "10.0.0.5",
            "192.168.1.1", // covered, but for another port
            "203.0.113.7",
            "fd00::5",
            "2001:db8::5",
            "10.0.0.5", // duplicates are dropped
        ]);
        assert_eq!(
            p.check("db.internal", 5432, &resolved),
            Ok(ips(&["10.0.0.5", "fd00::5"]))
        );
    }

    #[test]
    fn name_whose_addresses_are_all_uncovered_is_denied_naming_them() {
        let p = policy(&["10.0.0.0/8:5432"]);
        let denied = p
            .check("db.internal", 5432, &ips(&["203.0.113.7", "2001:db8::5"]))
            .unwrap_err();
        let message = denied.to_string();
        assert!(message.contains("(203.0.113.7, 2001:db8::5)"), "{message}");
        assert!(
            message.contains(r#"add "db.internal:5432" to egress_allow"#),
            "{message}"
        );
    }

    #[test]
    fn name_rule_allows_every_resolved_address() {
        let p = policy(&["db.internal:5432", "10.0.0.0/8:5432"]);
        assert_eq!(
            p.check("db.internal", 5432, &ips(&["203.0.113.7", "10.0.0.1"])),
            Ok(ips(&["203.0.113.7", "10.0.0.1"]))
        );
    }

    #[test]
    fn ip_literal_is_not_matched_by_name_rules() {
        let p = policy(&["localhost:*", "*.corp.example:*"]);
        let denied = p.check("127.0.0.1", 80, &[]).unwrap_err();
        assert!(
            denied.to_string().contains(r#"add "127.0.0.1:80""#),
            "{denied}"
        );
        assert!(!allows(&p, "::1", 80));
    }

    #[test]
    fn host_names_that_spell_addresses_are_denied() {
        // The resolver would turn each of these into an address, so none may
        // pass as a "name", not even under `*`.
        let p = policy(&["*.corp.example:*", "*:*"]);
        for host in [
            "127.0.0.1 x.corp.example",
            "127.1",
            "0x7f.0.0.1",
            "010.0.0.1",
            "2130706433",
            "0x7f000001",
            "a.corp.example\0",
            "[db.corp.example]",
            "fe80::1%eth0",
            "",
            "*.corp.example",
        ] {
            let denied = p.check(host, 80, &ips(&["127.0.0.1"])).unwrap_err();
            assert!(
                denied.to_string().contains("the requested host"),
                "{host:?}: {denied}"
            );
        }
    }

    #[test]
    fn deny_message_abbreviates_a_huge_invalid_host() {
        let host = "x".repeat(100_000);
        let message = policy(&["*:*"])
            .check(&host, 80, &[])
            .unwrap_err()
            .to_string();
        assert!(message.len() < 400, "{}", message.len());
        assert!(message.contains("is 100000 characters long"), "{message}");
    }

    #[test]
    fn deny_message_says_which_rule_to_add() {
        let p = policy(&["cache.internal:6379"]);
        assert_eq!(
            p.check("db.internal", 5432, &ips(&["10.0.0.5"]))
                .unwrap_err()
                .to_string(),
            "egress to db.internal:5432 denied by this agent's policy: no rule in egress_allow \
             matches; add \"db.internal:5432\" to egress_allow in the agent config (or pass \
             --allow db.internal:5432)"
        );
        // The suggested rule is the canonical one.
        let message = p.check("DB.Internal.", 5432, &[]).unwrap_err().to_string();
        assert!(
            message.starts_with("egress to DB.Internal.:5432 denied"),
            "{message}"
        );
        assert!(message.contains("--allow db.internal:5432)"), "{message}");
    }

    #[test]
    fn deny_message_for_an_empty_policy_says_default_deny() {
        let message = Policy::default()
            .check("db.internal", 5432, &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "egress to db.internal:5432 denied: this agent allows no destinations yet \
             (egress_allow is empty, and everything is denied by default); add \
             \"db.internal:5432\" to egress_allow in the agent config (or pass --allow \
             db.internal:5432)"
        );
    }

    #[test]
    fn deny_message_for_ipv6_suggests_the_bracketed_form() {
        let message = policy(&["db.internal:5432"])
            .check("fd00::1", 5432, &[])
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("egress to [fd00::1]:5432 denied"),
            "{message}"
        );
        assert!(
            message.ends_with(
                "add \"[fd00::1]:5432\" to egress_allow in the agent config \
                 (or pass --allow '[fd00::1]:5432')"
            ),
            "{message}"
        );
    }

    #[test]
    fn deny_message_points_at_a_rule_with_the_wrong_port() {
        let message = policy(&["db.internal:80-90"])
            .check("db.internal", 5432, &[])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(
                "no rule in egress_allow matches port 5432 (rule \"db.internal:80-90\" allows \
                 the host, on other ports)"
            ),
            "{message}"
        );
    }

    #[test]
    fn canonical_text_parses_back_to_the_same_rule() {
        for text in [
            "db.internal:5432",
            "*.corp.example:443",
            "*:*",
            "10.1.2.3:22",
            "10.0.0.0/8:5000-5100",
            "0.0.0.0/0:*",
            "[::1]:80",
            "[fd00::/8]:*",
            "[::/0]:1-65535",
            "under_score.internal:1",
        ] {
            let rule: Rule = text.parse().unwrap();
            assert_eq!(rule.to_string(), text);
            assert_eq!(rule.to_string().parse::<Rule>().unwrap(), rule);
        }
        assert_eq!(canonical("  db.internal:5432\n"), "db.internal:5432");
    }

    #[test]
    fn policy_parse_reports_the_first_bad_rule() {
        let err = Policy::parse(["db:1", "db:0", "db:70000"]).unwrap_err();
        assert_eq!(
            err,
            RuleError::PortZero {
                rule: "db:0".into()
            }
        );
        let p = Policy::parse(vec![String::from("db:1"), String::from("10.0.0.0/8:2")]).unwrap();
        assert_eq!(p.rules().len(), 2);
        assert_eq!(Policy::new(p.rules().to_vec()), p);
    }

    #[test]
    fn prefix_too_long_names_the_rule_and_the_range() {
        assert_eq!(
            rule_error("10.0.0.0/33:5432").to_string(),
            r#"egress rule "10.0.0.0/33:5432": prefix length 33 is larger than 32 for IPv4; use 0-32"#
        );
        assert_eq!(
            rule_error("[fd00::/129]:1").to_string(),
            r#"egress rule "[fd00::/129]:1": prefix length 129 is larger than 128 for IPv6; use 0-128"#
        );
        assert!(matches!(
            rule_error("10.0.0.0/300:1"),
            RuleError::PrefixTooLong { .. }
        ));
    }

    #[test]
    fn empty_rule_is_rejected() {
        assert!(matches!(rule_error(""), RuleError::Empty { .. }));
        assert!(matches!(rule_error("  "), RuleError::Empty { .. }));
    }

    #[test]
    fn missing_port_is_rejected_with_the_forms_to_use() {
        assert_eq!(
            rule_error("db.internal").to_string(),
            r#"egress rule "db.internal": no port; write "db.internal:PORT", "db.internal:5000-5100" for a range or "db.internal:*" for any port"#
        );
        assert!(matches!(
            rule_error("db.internal:"),
            RuleError::MissingPort { .. }
        ));
        assert!(matches!(
            rule_error("[::1]"),
            RuleError::MissingPort { host, .. } if host == "[::1]"
        ));
        assert!(matches!(rule_error(":5432"), RuleError::MissingHost { .. }));
    }

    #[test]
    fn port_zero_and_out_of_range_ports_are_rejected() {
        assert!(matches!(rule_error("db:0"), RuleError::PortZero { .. }));
        assert!(matches!(rule_error("db:0-10"), RuleError::PortZero { .. }));
        assert_eq!(
            rule_error("db:70000").to_string(),
            r#"egress rule "db:70000": port 70000 is out of range; use 1-65535"#
        );
        assert!(matches!(
            rule_error("db:65536"),
            RuleError::PortOutOfRange { .. }
        ));
        assert!(matches!(
            rule_error("db:99999999999999999999"),
            RuleError::PortOutOfRange { .. }
        ));
    }

    #[test]
    fn reversed_port_range_is_rejected() {
        assert_eq!(
            rule_error("db:6000-5000").to_string(),
            r#"egress rule "db:6000-5000": port range 6000-5000 is reversed; write 5000-6000"#
        );
    }

    #[test]
    fn malformed_ports_are_rejected() {
        for text in [
            "db:abc", "db:-1", "db:+80", "db:5000-", "db:-5000", "db:1-2-3", "db: 80",
        ] {
            assert!(
                matches!(rule_error(text), RuleError::InvalidPorts { .. }),
                "{text}: {:?}",
                rule_error(text)
            );
        }
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        assert!(matches!(
            rule_error("10.0.0.0/x:1"),
            RuleError::InvalidPrefix { .. }
        ));
        assert!(matches!(
            rule_error("10.0.0.0/:1"),
            RuleError::InvalidPrefix { .. }
        ));
        assert_eq!(
            rule_error("10.1.2.3/8:1").to_string(),
            r#"egress rule "10.1.2.3/8:1": 10.1.2.3/8 has bits set after the /8 prefix; write the network address 10.0.0.0/8, or 10.1.2.3 alone for a single address"#
        );
        assert!(matches!(
            rule_error("[fd00::1/8]:1"),
            RuleError::HostBitsSet { network, .. } if network == "[fd00::/8]"
        ));
        assert!(matches!(
            rule_error("db/8:1"),
            RuleError::InvalidCidrAddress { .. }
        ));
        assert!(matches!(
            rule_error("10.0.0/8:1"),
            RuleError::InvalidCidrAddress { .. }
        ));
        assert!(matches!(
            rule_error("fd00::1:5432"),
            RuleError::UnbracketedIpv6 { .. }
        ));
        assert!(matches!(
            rule_error("::1"),
            RuleError::UnbracketedIpv6 { .. }
        ));
        assert!(matches!(
            rule_error("db:1:2"),
            RuleError::TooManyColons { .. }
        ));
        assert!(matches!(
            rule_error("[fd00::1:5432"),
            RuleError::UnclosedBracket { .. }
        ));
        assert!(matches!(
            rule_error("[fd00::1]5432"),
            RuleError::AfterBracket { .. }
        ));
        assert!(matches!(
            rule_error("[10.0.0.1]:1"),
            RuleError::BracketedIpv4 { .. }
        ));
        assert!(matches!(
            rule_error("[zz::1]:1"),
            RuleError::InvalidIpv6 { .. }
        ));
        assert!(matches!(rule_error("[]:1"), RuleError::InvalidIpv6 { .. }));
    }

    #[test]
    fn ipv4_mapped_rules_are_rejected_with_the_ipv4_form() {
        assert!(matches!(
            rule_error("[::ffff:10.0.0.1]:1"),
            RuleError::Ipv4Mapped { ipv4, .. } if ipv4 == "10.0.0.1"
        ));
        assert!(matches!(
            rule_error("[::ffff:10.0.0.0/104]:1"),
            RuleError::Ipv4Mapped { ipv4, .. } if ipv4 == "10.0.0.0/8"
        ));
    }

    #[test]
    fn malformed_names_and_wildcards_are_rejected() {
        let name = |text: &str| match rule_error(text) {
            RuleError::InvalidName { problem, .. } => problem,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(name("db..internal:1"), NameProblem::EmptyLabel);
        assert_eq!(name(".db:1"), NameProblem::EmptyLabel);
        assert_eq!(name("db internal:1"), NameProblem::BadChar(' '));
        assert_eq!(name("%%%:1"), NameProblem::BadChar('%'));
        assert_eq!(name("bücher.example:1"), NameProblem::NotAscii);
        assert_eq!(name("10.1.2:1"), NameProblem::EndsInNumber);
        assert_eq!(name("010.0.0.1:1"), NameProblem::EndsInNumber);
        assert_eq!(name("a.0x1f:1"), NameProblem::EndsInNumber);
        assert_eq!(name("*.:1"), NameProblem::Empty);
        assert_eq!(
            name(&format!("{}.db:1", "a".repeat(64))),
            NameProblem::LabelTooLong(64)
        );
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(name(&format!("{long}:1")), NameProblem::TooLong(255));
        for text in ["db*.internal:1", "*db:1", "a.*.b:1", "*.*.b:1", "**:1"] {
            assert!(
                matches!(rule_error(text), RuleError::MisplacedWildcard { .. }),
                "{text}"
            );
        }
    }

    #[test]
    fn rule_errors_name_the_rule_and_say_the_fix() {
        for text in [
            "",
            "garbage",
            "db:",
            ":1",
            "db:0",
            "db:70000",
            "db:6000-5000",
            "db:x",
            "10.0.0.0/33:1",
            "10.0.0.0/x:1",
            "10.1.2.3/8:1",
            "fd00::1:1",
            "db:1:2",
            "[::1:1",
            "[::1]x",
            "[1.2.3.4]:1",
            "[x]:1",
            "x/8:1",
            "[::ffff:1.2.3.4]:1",
            "a*b:1",
            "db..x:1",
            "db x:1",
        ] {
            let message = rule_error(text).to_string();
            assert!(
                message.starts_with(&format!("egress rule {text:?}: ")),
                "{message}"
            );
            assert!(!message.ends_with('.'), "{message}");
            assert!(
                ["write", "use", "remove"]
                    .iter()
                    .any(|fix| message.contains(fix)),
                "no fix in: {message}"
            );
        }
    }

    #[tokio::test]
    async fn resolve_ip_literal_without_dns() {
        let p = policy(&["127.0.0.1:5432"]);
        let addrs = p.resolve("127.0.0.1", 5432).await.unwrap();
        assert_eq!(addrs, [SocketAddr::from(([127, 0, 0, 1], 5432))]);
        assert!(matches!(
            p.resolve("127.0.0.1", 5433).await,
            Err(EgressError::Denied(_))
        ));
    }

    #[tokio::test]
    async fn resolve_allowed_name_returns_its_addresses_on_the_port() {
        let p = policy(&["localhost:5432"]);
        let addrs = p.resolve("localhost", 5432).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|addr| addr.ip().is_loopback() && addr.port() == 5432),
            "{addrs:?}"
        );
    }

    #[tokio::test]
    async fn resolve_denies_before_dns_and_reports_dns_failure() {
        // No rule could allow this name, so it is denied without a lookup
        // (a lookup of `.invalid` would fail with a resolve error instead).
        let p = policy(&["db.internal:5432", "10.0.0.0/8:80"]);
        assert!(matches!(
            p.resolve("nothing.invalid", 5432).await,
            Err(EgressError::Denied(_))
        ));
        // An allowed name that does not resolve is a resolve error.
        let p = policy(&["*.invalid:*"]);
        let err = p.resolve("nothing.invalid", 5432).await.unwrap_err();
        assert!(
            matches!(err, EgressError::Resolve { port: 5432, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("could not resolve nothing.invalid: "),
            "{message}"
        );
        assert!(
            message.ends_with("; check the name and the agent host's DNS"),
            "{message}"
        );
    }
}
