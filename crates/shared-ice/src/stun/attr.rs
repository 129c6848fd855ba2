//! STUN/TURN attribute types (IANA "STUN Attributes" registry).
//!
//! Types `0x0000..=0x7FFF` are *comprehension-required*: a server that does not
//! understand one must reject a request with 420 (Unknown Attribute). Types
//! `0x8000..=0xFFFF` are *comprehension-optional* and are ignored when unknown.

/// MAPPED-ADDRESS ([RFC 8489 §14.1](https://www.rfc-editor.org/rfc/rfc8489#section-14.1)).
pub const MAPPED_ADDRESS: u16 = 0x0001;
/// USERNAME ([RFC 8489 §14.3](https://www.rfc-editor.org/rfc/rfc8489#section-14.3)); fewer than 513 bytes.
pub const USERNAME: u16 = 0x0006;
/// MESSAGE-INTEGRITY, HMAC-SHA1 ([RFC 8489 §14.5](https://www.rfc-editor.org/rfc/rfc8489#section-14.5)).
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
/// ERROR-CODE ([RFC 8489 §14.8](https://www.rfc-editor.org/rfc/rfc8489#section-14.8)).
pub const ERROR_CODE: u16 = 0x0009;
/// UNKNOWN-ATTRIBUTES ([RFC 8489 §14.13](https://www.rfc-editor.org/rfc/rfc8489#section-14.13)).
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// CHANNEL-NUMBER ([RFC 8656 §18.1](https://www.rfc-editor.org/rfc/rfc8656#section-18.1)).
pub const CHANNEL_NUMBER: u16 = 0x000C;
/// LIFETIME in seconds ([RFC 8656 §18.2](https://www.rfc-editor.org/rfc/rfc8656#section-18.2)).
pub const LIFETIME: u16 = 0x000D;
/// XOR-PEER-ADDRESS, may repeat ([RFC 8656 §18.3](https://www.rfc-editor.org/rfc/rfc8656#section-18.3)).
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
/// DATA ([RFC 8656 §18.4](https://www.rfc-editor.org/rfc/rfc8656#section-18.4)).
pub const DATA: u16 = 0x0013;
/// REALM ([RFC 8489 §14.9](https://www.rfc-editor.org/rfc/rfc8489#section-14.9)); fewer than 763 bytes.
pub const REALM: u16 = 0x0014;
/// NONCE ([RFC 8489 §14.10](https://www.rfc-editor.org/rfc/rfc8489#section-14.10)); fewer than 763 bytes.
pub const NONCE: u16 = 0x0015;
/// XOR-RELAYED-ADDRESS ([RFC 8656 §18.5](https://www.rfc-editor.org/rfc/rfc8656#section-18.5)).
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
/// REQUESTED-ADDRESS-FAMILY ([RFC 8656 §18.6](https://www.rfc-editor.org/rfc/rfc8656#section-18.6), [RFC 6156 §4.1.1](https://www.rfc-editor.org/rfc/rfc6156#section-4.1.1)).
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
/// EVEN-PORT ([RFC 8656 §18.7](https://www.rfc-editor.org/rfc/rfc8656#section-18.7)).
pub const EVEN_PORT: u16 = 0x0018;
/// REQUESTED-TRANSPORT ([RFC 8656 §18.8](https://www.rfc-editor.org/rfc/rfc8656#section-18.8)).
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
/// DONT-FRAGMENT ([RFC 8656 §18.9](https://www.rfc-editor.org/rfc/rfc8656#section-18.9)).
pub const DONT_FRAGMENT: u16 = 0x001A;
/// MESSAGE-INTEGRITY-SHA256 ([RFC 8489 §14.6](https://www.rfc-editor.org/rfc/rfc8489#section-14.6)).
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
/// PASSWORD-ALGORITHM ([RFC 8489 §14.12](https://www.rfc-editor.org/rfc/rfc8489#section-14.12)).
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
/// USERHASH ([RFC 8489 §14.4](https://www.rfc-editor.org/rfc/rfc8489#section-14.4)).
pub const USERHASH: u16 = 0x001E;
/// XOR-MAPPED-ADDRESS ([RFC 8489 §14.2](https://www.rfc-editor.org/rfc/rfc8489#section-14.2)).
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// RESERVATION-TOKEN ([RFC 8656 §18.10](https://www.rfc-editor.org/rfc/rfc8656#section-18.10)).
pub const RESERVATION_TOKEN: u16 = 0x0022;
/// PRIORITY, ICE connectivity checks ([RFC 8445 §16.1](https://www.rfc-editor.org/rfc/rfc8445#section-16.1)).
pub const PRIORITY: u16 = 0x0024;
/// USE-CANDIDATE, ICE connectivity checks ([RFC 8445 §16.1](https://www.rfc-editor.org/rfc/rfc8445#section-16.1)).
pub const USE_CANDIDATE: u16 = 0x0025;
/// CONNECTION-ID, TURN-TCP ([RFC 6062 §6.2.1](https://www.rfc-editor.org/rfc/rfc6062#section-6.2.1)).
pub const CONNECTION_ID: u16 = 0x002A;
/// ADDITIONAL-ADDRESS-FAMILY ([RFC 8656 §18.11](https://www.rfc-editor.org/rfc/rfc8656#section-18.11)).
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// ADDRESS-ERROR-CODE ([RFC 8656 §18.12](https://www.rfc-editor.org/rfc/rfc8656#section-18.12)).
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
/// PASSWORD-ALGORITHMS ([RFC 8489 §14.11](https://www.rfc-editor.org/rfc/rfc8489#section-14.11)).
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
/// ALTERNATE-DOMAIN ([RFC 8489 §14.16](https://www.rfc-editor.org/rfc/rfc8489#section-14.16)).
pub const ALTERNATE_DOMAIN: u16 = 0x8003;
/// ICMP ([RFC 8656 §18.13](https://www.rfc-editor.org/rfc/rfc8656#section-18.13)).
pub const ICMP: u16 = 0x8004;
/// SOFTWARE ([RFC 8489 §14.14](https://www.rfc-editor.org/rfc/rfc8489#section-14.14)).
pub const SOFTWARE: u16 = 0x8022;
/// ALTERNATE-SERVER ([RFC 8489 §14.15](https://www.rfc-editor.org/rfc/rfc8489#section-14.15)).
pub const ALTERNATE_SERVER: u16 = 0x8023;
/// FINGERPRINT ([RFC 8489 §14.7](https://www.rfc-editor.org/rfc/rfc8489#section-14.7)).
pub const FINGERPRINT: u16 = 0x8028;
/// ICE-CONTROLLED ([RFC 8445 §16.1](https://www.rfc-editor.org/rfc/rfc8445#section-16.1)).
pub const ICE_CONTROLLED: u16 = 0x8029;
/// ICE-CONTROLLING ([RFC 8445 §16.1](https://www.rfc-editor.org/rfc/rfc8445#section-16.1)).
pub const ICE_CONTROLLING: u16 = 0x802A;

/// Longest USERNAME value accepted (RFC 8489 §14.3: "less than 513 bytes").
pub const MAX_USERNAME_LEN: usize = 512;
/// Longest REALM, NONCE, SOFTWARE or ERROR-CODE reason accepted when decoding
/// (RFC 8489 §14.8–14.10, §14.14: "less than 763 bytes").
pub const MAX_TEXT_LEN: usize = 762;

/// Whether `ty` is in the comprehension-required range (RFC 8489 §14).
#[must_use]
pub const fn is_comprehension_required(ty: u16) -> bool {
    ty < 0x8000
}

/// Whether shared-ice knows `ty` (it is one of the constants of this module).
///
/// Comprehension-required attributes that are *not* known make a request fail
/// with 420; see [`Message::unknown_comprehension_required`](super::Message::unknown_comprehension_required).
#[must_use]
pub const fn is_known(ty: u16) -> bool {
    matches!(
        ty,
        MAPPED_ADDRESS
            | USERNAME
            | MESSAGE_INTEGRITY
            | ERROR_CODE
            | UNKNOWN_ATTRIBUTES
            | CHANNEL_NUMBER
            | LIFETIME
            | XOR_PEER_ADDRESS
            | DATA
            | REALM
            | NONCE
            | XOR_RELAYED_ADDRESS
            | REQUESTED_ADDRESS_FAMILY
            | EVEN_PORT
            | REQUESTED_TRANSPORT
            | DONT_FRAGMENT
            | MESSAGE_INTEGRITY_SHA256
            | PASSWORD_ALGORITHM
            | USERHASH
            | XOR_MAPPED_ADDRESS
            | RESERVATION_TOKEN
            | PRIORITY
            | USE_CANDIDATE
            | CONNECTION_ID
            | ADDITIONAL_ADDRESS_FAMILY
            | ADDRESS_ERROR_CODE
            | PASSWORD_ALGORITHMS
            | ALTERNATE_DOMAIN
            | ICMP
            | SOFTWARE
            | ALTERNATE_SERVER
            | FINGERPRINT
            | ICE_CONTROLLED
            | ICE_CONTROLLING
    )
}

/// The registry name of a known attribute type (for logs), or `None`.
#[must_use]
pub const fn name(ty: u16) -> Option<&'static str> {
    Some(match ty {
        MAPPED_ADDRESS => "MAPPED-ADDRESS",
        USERNAME => "USERNAME",
        MESSAGE_INTEGRITY => "MESSAGE-INTEGRITY",
        ERROR_CODE => "ERROR-CODE",
        UNKNOWN_ATTRIBUTES => "UNKNOWN-ATTRIBUTES",
        CHANNEL_NUMBER => "CHANNEL-NUMBER",
        LIFETIME => "LIFETIME",
        XOR_PEER_ADDRESS => "XOR-PEER-ADDRESS",
        DATA => "DATA",
        REALM => "REALM",
        NONCE => "NONCE",
        XOR_RELAYED_ADDRESS => "XOR-RELAYED-ADDRESS",
        REQUESTED_ADDRESS_FAMILY => "REQUESTED-ADDRESS-FAMILY",
        EVEN_PORT => "EVEN-PORT",
        REQUESTED_TRANSPORT => "REQUESTED-TRANSPORT",
        DONT_FRAGMENT => "DONT-FRAGMENT",
        MESSAGE_INTEGRITY_SHA256 => "MESSAGE-INTEGRITY-SHA256",
        PASSWORD_ALGORITHM => "PASSWORD-ALGORITHM",
        USERHASH => "USERHASH",
        XOR_MAPPED_ADDRESS => "XOR-MAPPED-ADDRESS",
        RESERVATION_TOKEN => "RESERVATION-TOKEN",
        PRIORITY => "PRIORITY",
        USE_CANDIDATE => "USE-CANDIDATE",
        CONNECTION_ID => "CONNECTION-ID",
        ADDITIONAL_ADDRESS_FAMILY => "ADDITIONAL-ADDRESS-FAMILY",
        ADDRESS_ERROR_CODE => "ADDRESS-ERROR-CODE",
        PASSWORD_ALGORITHMS => "PASSWORD-ALGORITHMS",
        ALTERNATE_DOMAIN => "ALTERNATE-DOMAIN",
        ICMP => "ICMP",
        SOFTWARE => "SOFTWARE",
        ALTERNATE_SERVER => "ALTERNATE-SERVER",
        FINGERPRINT => "FINGERPRINT",
        ICE_CONTROLLED => "ICE-CONTROLLED",
        ICE_CONTROLLING => "ICE-CONTROLLING",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_names() {
        assert!(is_comprehension_required(USERNAME));
        assert!(!is_comprehension_required(SOFTWARE));
        assert!(is_known(CONNECTION_ID) && is_known(ICMP));
        assert!(!is_known(0x0002) && !is_known(0x7FFF));
        assert_eq!(name(XOR_PEER_ADDRESS), Some("XOR-PEER-ADDRESS"));
        assert_eq!(name(0x0003), None);
    }
}
