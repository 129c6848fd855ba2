//! Configuration plumbing both services share: reading the TOML file, merging a flag over
//! the file's key over the default, range checks and the parsers both need — all with
//! errors that name the key and say how to fix it.
//!
//! Each service keeps its own keys, defaults and cross-key rules in its own `config.rs`;
//! this module holds only what they did alike.

use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::DeserializeOwned;

/// A configuration error: the key (or the file) it is about, what is wrong and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has an unusable value (from the file, a flag or the environment).
    #[error("config key `{key}`: {msg}")]
    Key {
        /// The TOML key; its flag is `--key-with-dashes`.
        key: &'static str,
        /// What is wrong and how to fix it.
        msg: String,
    },
    /// The file cannot be read, is not TOML, or does not fit the schema (an unknown or
    /// mistyped key: the parser's message names it and its line).
    #[error("config file {}: {msg}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The reader's or parser's message.
        msg: String,
    },
}

impl ConfigError {
    /// The error for `key`: `msg` says what is wrong and how to fix it.
    pub fn key(key: &'static str, msg: impl Into<String>) -> Self {
        Self::Key {
            key,
            msg: msg.into(),
        }
    }
}

/// Reads and parses the TOML file at `path` into `T` (use `#[serde(deny_unknown_fields)]`
/// so that a misspelt key is an error naming it).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.into(),
        msg: e.to_string(),
    })?;
    parse_toml(path, &text)
}

/// Parses TOML `text` read from `path` (named in the error) into `T`.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::File {
        path: path.into(),
        // toml's message spans lines (a caret under the key) and ends in a newline
        msg: e.to_string().trim_end().to_owned(),
    })
}

/// The flag's value when it was given, else the file's, else `default`.
pub fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// The flag's list when it has entries (a repeatable flag given at least once), else the
/// file's.
pub fn pick_list<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() { file } else { flag }
}

/// `value` when it lies in `range`, else the error naming `key`, the value and the allowed
/// range; `unit` follows the range in the message (e.g. `" seconds (0 = never)"`).
///
/// `60..=604800` reads "use 60..=604800", `1..` "use at least 1", `..=9` "use at most 9".
pub fn in_range<T, R>(key: &'static str, value: T, range: R, unit: &str) -> Result<T, ConfigError>
where
    T: PartialOrd + Display,
    R: RangeBounds<T>,
{
    if range.contains(&value) {
        return Ok(value);
    }
    let allowed = match (range.start_bound(), range.end_bound()) {
        (Bound::Included(a), Bound::Included(b)) => format!("{a}..={b}"),
        (Bound::Included(a), Bound::Excluded(b)) => format!("{a}..{b}"),
        (Bound::Included(a), Bound::Unbounded) => format!("at least {a}"),
        (Bound::Excluded(a), _) => format!("more than {a}"),
        (Bound::Unbounded, Bound::Included(b)) => format!("at most {b}"),
        (Bound::Unbounded, Bound::Excluded(b)) => format!("less than {b}"),
        // contains every value: not reached
        (Bound::Unbounded, Bound::Unbounded) => "any value".to_owned(),
    };
    Err(ConfigError::key(
        key,
        format!("{value} is out of range; use {allowed}{unit}"),
    ))
}

/// Parses one `ADDR:PORT` value of `key`.
pub fn socket_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::key(
            key,
            format!("`{value}` is not ADDR:PORT (IPv6 as [::1]:3478)"),
        )
    })
}

/// Parses every `ADDR:PORT` of the list `key`.
pub fn socket_addrs<S: AsRef<str>>(
    key: &'static str,
    values: &[S],
) -> Result<Vec<SocketAddr>, ConfigError> {
    values
        .iter()
        .map(|s| socket_addr(key, s.as_ref()))
        .collect()
}

/// Parses every CIDR block of the list `key`.
pub fn cidrs<S: AsRef<str>>(key: &'static str, values: &[S]) -> Result<Vec<Cidr>, ConfigError> {
    values
        .iter()
        .map(|s| {
            s.as_ref()
                .parse()
                .map_err(|e: CidrError| ConfigError::key(key, e.to_string()))
        })
        .collect()
}

/// An address block (`10.0.0.0/8`, `2001:db8::/32`; a bare address is one host).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Cidr {
    /// The network address (host bits zero).
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR block does not parse; the message says what to write instead.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("`{0}` is not an address or CIDR block (e.g. 10.0.0.0/8, 2001:db8::/32, ::1)")]
    NotAnAddress(String),
    /// The prefix length is not a number up to the family's bit count.
    #[error("`{input}`: the prefix length must be 0..={max}")]
    BadPrefix {
        /// What was written.
        input: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Bits below the prefix are set: the block would not mean what it says.
    #[error("`{input}` has host bits set; write {network}")]
    HostBits {
        /// What was written.
        input: String,
        /// The block it would be with the host bits cleared.
        network: Cidr,
    },
}

impl Cidr {
    /// The block's network address and prefix length.
    fn network(addr: IpAddr, prefix: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether `ip` lies in the block. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// matches as itself and as the IPv4 address it stands for.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let hit = |ip: IpAddr| {
            ip.is_ipv4() == self.addr.is_ipv4() && Self::network(ip, self.prefix) == self.addr
        };
        hit(ip) || hit(ip.to_canonical())
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `addr/prefix` or a bare address; the host bits must be zero.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::BadPrefix {
                    input: s.to_owned(),
                    max,
                })?,
        };
        let network = Self::network(addr, prefix);
        if network != addr {
            return Err(CidrError::HostBits {
                input: s.to_owned(),
                network: Self {
                    addr: network,
                    prefix,
                },
            });
        }
        Ok(Self { addr, prefix })
    }
}

impl Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests;
