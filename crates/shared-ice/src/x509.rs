//! The expiry (`notAfter`) of an X.509 certificate, for the services' certificate-expiry
//! metric. Both services load their TLS certificate with rustls, which does not expose
//! the validity; this is the one field they need, read from the DER (RFC 5280 §4.1)
//! without a general ASN.1 library: `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE
//! { [0] version OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE {
//! notBefore, notAfter }, … }, … }`. Panic-free; every length is checked against the
//! bytes present.

/// Why the validity could not be read.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum CertError {
    /// Not the DER layout of a certificate (truncated, wrong tag, bad length).
    Malformed,
    /// The time is neither UTCTime nor GeneralizedTime in the RFC 5280 §4.1.2.5 form
    /// (`YYMMDDHHMMSSZ` / `YYYYMMDDHHMMSSZ`), or before 1970.
    BadTime,
}

/// One DER element: (tag, contents, the bytes after it). Single-byte tags only (all
/// the elements walked here have one); definite lengths of up to 4 bytes.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertError> {
    let (&tag, rest) = input.split_first().ok_or(CertError::Malformed)?;
    let (&first, mut rest) = rest.split_first().ok_or(CertError::Malformed)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(CertError::Malformed);
        }
        let (bytes, after) = rest.split_at_checked(n).ok_or(CertError::Malformed)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (value, after) = rest.split_at_checked(len).ok_or(CertError::Malformed)?;
    Ok((tag, value, after))
}

fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), CertError> {
    match tlv(input)? {
        (t, value, rest) if t == tag => Ok((value, rest)),
        _ => Err(CertError::Malformed),
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `notAfter` of the DER certificate `der`, in Unix seconds.
pub fn not_after(der: &[u8]) -> Result<u64, CertError> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (mut tbs, _) = expect(cert, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = tlv(tbs)?.2;
    }
    let (_serial, tbs) = expect(tbs, INTEGER)?;
    let (_signature, tbs) = expect(tbs, SEQUENCE)?;
    let (_issuer, tbs) = expect(tbs, SEQUENCE)?;
    let (validity, _) = expect(tbs, SEQUENCE)?;
    let (_, _not_before, rest) = tlv(validity)?;
    let (tag, t, _) = tlv(rest)?;
    parse_time(tag, t)
}

fn digits(s: &[u8]) -> Result<u64, CertError> {
    s.iter().try_fold(0u64, |acc, b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + u64::from(b - b'0'))
        } else {
            Err(CertError::BadTime)
        }
    })
}

fn parse_time(tag: u8, t: &[u8]) -> Result<u64, CertError> {
    let (year, rest) = match tag {
        // RFC 5280 §4.1.2.5.1: YY >= 50 is 19YY, else 20YY
        UTC_TIME if t.len() == 13 => {
            let (yy, rest) = t.split_at_checked(2).ok_or(CertError::BadTime)?;
            let yy = digits(yy)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, rest)
        }
        GENERALIZED_TIME if t.len() == 15 => {
            let (yyyy, rest) = t.split_at_checked(4).ok_or(CertError::BadTime)?;
            (digits(yyyy)?, rest)
        }
        _ => return Err(CertError::BadTime),
    };
    // rest = MMDDHHMMSSZ
    let field = |i: usize| {
        rest.get(i..i + 2)
            .ok_or(CertError::BadTime)
            .and_then(digits)
    };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if rest.get(10) != Some(&b'Z')
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || year < 1970
    {
        return Err(CertError::BadTime);
    }
    let days = days_from_civil(year, month, day);
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar (year ≥
/// 1970), H. Hinnant's `days_from_civil`.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// A certificate-shaped DER with the given validity times (tag, text); the other
    /// fields are minimal placeholders.
    fn cert(version: bool, not_before: (u8, &str), not_after: (u8, &str)) -> Vec<u8> {
        fn el(tag: u8, v: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            if v.len() < 0x80 {
                out.push(v.len() as u8);
            } else {
                out.extend([0x82, (v.len() >> 8) as u8, v.len() as u8]);
            }
            out.extend_from_slice(v);
            out
        }
        let mut validity = el(not_before.0, not_before.1.as_bytes());
        validity.extend(el(not_after.0, not_after.1.as_bytes()));
        let mut tbs = Vec::new();
        if version {
            tbs.extend(el(VERSION, &el(INTEGER, &[2])));
        }
        tbs.extend(el(INTEGER, &[1]));
        tbs.extend(el(SEQUENCE, &[]));
        tbs.extend(el(SEQUENCE, &[0x31; 200])); // a long issuer: multi-byte length
        tbs.extend(el(SEQUENCE, &validity));
        tbs.extend(el(SEQUENCE, &[])); // subject
        let mut c = el(SEQUENCE, &tbs);
        c.extend(el(SEQUENCE, &[])); // signatureAlgorithm
        c.extend(el(0x03, &[0])); // signature
        el(SEQUENCE, &c)
    }

    #[test]
    fn utc_and_generalized_time() {
        let c = cert(
            true,
            (UTC_TIME, "260101000000Z"),
            (UTC_TIME, "270101000000Z"),
        );
        assert_eq!(not_after(&c), Ok(1_798_761_600));
        // YY >= 50 is the 1900s
        let c = cert(
            false,
            (UTC_TIME, "900101000000Z"),
            (UTC_TIME, "991231235959Z"),
        );
        assert_eq!(not_after(&c), Ok(946_684_799));
        let c = cert(
            true,
            (UTC_TIME, "260101000000Z"),
            (GENERALIZED_TIME, "21261101153025Z"),
        );
        assert_eq!(not_after(&c), Ok(4_949_220_625));
    }

    #[test]
    fn a_real_certificate() {
        // the gateway's TLS test certificate: `openssl x509 -enddate` says
        // notAfter=Nov  1 15:30:25 2126 GMT (a GeneralizedTime)
        let pem = include_str!("../../gateway/tests/fixtures/cert1.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(not_after(&der), Ok(4_949_220_625));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = cert(
            true,
            (UTC_TIME, "260101000000Z"),
            (UTC_TIME, "270101000000Z"),
        );
        // every truncation
        for n in 0..good.len() {
            assert!(not_after(&good[..n]).is_err(), "truncated to {n}");
        }
        assert_eq!(not_after(&[]), Err(CertError::Malformed));
        assert_eq!(
            not_after(&[0x30, 0x85, 1, 1, 1, 1, 1]),
            Err(CertError::Malformed)
        );
        assert_eq!(not_after(&[0x31, 0x00]), Err(CertError::Malformed));
        for bad in [
            (UTC_TIME, "2701010000Z"),       // no seconds
            (UTC_TIME, "270101000000+0100"), // not Z
            (UTC_TIME, "271301000000Z"),     // month 13
            (UTC_TIME, "27010100000AZ"),     // not a digit
            (GENERALIZED_TIME, "19690101000000Z"),
            (0x04, "270101000000Z"), // an OCTET STRING
        ] {
            let c = cert(true, (UTC_TIME, "260101000000Z"), bad);
            assert_eq!(not_after(&c), Err(CertError::BadTime), "{bad:?}");
        }
        // arbitrary bytes never panic
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let mut v = good.clone();
            for _ in 0..4 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let i = (x as usize >> 4) % v.len();
                v[i] = (x >> 16) as u8;
            }
            let _ = not_after(&v);
        }
    }
}
