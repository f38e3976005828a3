//! When a certificate expires, read from its DER without a full X.509 parser, and the warning
//! given as the date approaches.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;

/// How close to its notAfter a certificate is warned about when it is loaded.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The end of a certificate's validity (notAfter), as the certificate states it, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAfter {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl NotAfter {
    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        days * 86_400 + i64::from(self.hour * 3600 + self.minute * 60 + self.second)
    }
}

impl std::fmt::Display for NotAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// The notAfter of a DER certificate: a walk over the outer SEQUENCE and the TBSCertificate's
/// fields up to its validity (RFC 5280 4.1; rustls-webpki checks validity but does not expose
/// it). Every length is checked against what is left; anything unexpected is an error.
pub fn not_after(cert: &[u8]) -> Result<NotAfter, &'static str> {
    const INTEGER: u8 = 0x02;
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT, constructed
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Result<&'a [u8], &'static str> {
        match der_element(input)? {
            (found, contents) if found == tag => Ok(contents),
            _ => Err("not an X.509 certificate"),
        }
    }
    let mut input = cert;
    let mut certificate = expect(&mut input, SEQUENCE)?;
    let mut tbs = expect(&mut certificate, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        der_element(&mut tbs)?;
    }
    expect(&mut tbs, INTEGER)?; // serialNumber
    expect(&mut tbs, SEQUENCE)?; // signature algorithm
    expect(&mut tbs, SEQUENCE)?; // issuer
    let mut validity = expect(&mut tbs, SEQUENCE)?;
    der_element(&mut validity)?; // notBefore
    match der_element(&mut validity)? {
        (UTC_TIME, time) => parse_time(time, 2),
        (GENERALIZED_TIME, time) => parse_time(time, 4),
        _ => Err("the validity's notAfter is not a time"),
    }
}

/// Splits the next DER element (tag, length, contents) off `input`: its tag and contents.
fn der_element<'a>(input: &mut &'a [u8]) -> Result<(u8, &'a [u8]), &'static str> {
    const TRUNCATED: &str = "truncated DER";
    let (&tag, rest) = input.split_first().ok_or(TRUNCATED)?;
    if tag & 0x1f == 0x1f {
        return Err("unexpected multi-byte DER tag");
    }
    let (&first, rest) = rest.split_first().ok_or(TRUNCATED)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1 to 4 length bytes (0x80 alone, the indefinite length, is not DER).
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err("bad DER length");
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |len, b| len << 8 | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return Err(TRUNCATED);
    }
    let (contents, rest) = rest.split_at(len);
    *input = rest;
    Ok((tag, contents))
}

/// A UTCTime ("YYMMDDHHMMSSZ", `year_digits` 2: 50–99 are 19xx) or GeneralizedTime
/// ("YYYYMMDDHHMMSSZ", 4), the forms RFC 5280 allows in certificates.
fn parse_time(time: &[u8], year_digits: usize) -> Result<NotAfter, &'static str> {
    const BAD: &str = "the notAfter time is not in the form RFC 5280 requires";
    let (digits, zone) = time.split_at(time.len().saturating_sub(1));
    if zone != b"Z" || digits.len() != year_digits + 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    let number = |at: usize, len: usize| {
        digits[at..at + len]
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
    };
    let year = i64::from(number(0, year_digits));
    let year = match year_digits {
        2 if year >= 50 => 1900 + year,
        2 => 2000 + year,
        _ => year,
    };
    let field = |i: usize| number(year_digits + 2 * i, 2);
    let time = NotAfter {
        year,
        month: field(0),
        day: field(1),
        hour: field(2),
        minute: field(3),
        second: field(4),
    };
    let valid = (1..=12).contains(&time.month)
        && (1..=31).contains(&time.day)
        && time.hour < 24
        && time.minute < 60
        && time.second < 61;
    if valid {
        Ok(time)
    } else {
        Err(BAD)
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
/// days_from_civil).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * i64::from((month + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A warning when a certificate of the chain in `path` has expired at `now` or expires within
/// `EXPIRY_WARNING` of it (the one that expires first); None otherwise. A certificate whose
/// validity cannot be read gets none: rustls accepted it, and its peers will judge it.
pub fn expiry_warning(
    path: &Path,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Option<String> {
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => since.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    let (position, ends) = chain
        .iter()
        .enumerate()
        .filter_map(|(i, cert)| not_after(cert).ok().map(|ends| (i, ends)))
        .min_by_key(|(_, ends)| ends.unix())?;
    let which = match position {
        0 => "the certificate".to_string(),
        n => format!("certificate {} of the file (an intermediate)", n + 1),
    };
    let left = ends.unix() - now;
    if left < 0 {
        Some(format!(
            "{}: {which} expired on {ends}: peers that verify it refuse it; renew it",
            path.display()
        ))
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        Some(format!(
            "{}: {which} expires in {} day(s), on {ends}: renew it",
            path.display(),
            left / 86_400
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate valid until `year-month-day 12:34:56` UTC, as DER.
    fn certificate_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_after =
            rcgen::date_time_ymd(year, month, day) + Duration::from_secs(12 * 3600 + 34 * 60 + 56);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn not_after_of_utc_and_generalized_times() {
        // Up to 2049 a certificate says UTCTime, from 2050 GeneralizedTime (RFC 5280).
        let utc = not_after(&certificate_until(2049, 12, 31)).unwrap();
        assert_eq!(utc.to_string(), "2049-12-31 12:34:56 UTC");
        assert_eq!(utc.unix(), 2_524_566_896);
        let generalized = not_after(&certificate_until(2050, 1, 1)).unwrap();
        assert_eq!(generalized.to_string(), "2050-01-01 12:34:56 UTC");
        assert_eq!(generalized.unix(), 2_524_653_296);
        let past = not_after(&certificate_until(1999, 3, 1)).unwrap();
        assert_eq!(past.unix(), 920_291_696);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn not_after_refuses_what_is_not_a_certificate() {
        let cert = certificate_until(2049, 12, 31);
        // Every truncation is an error, never a panic or a read past the end.
        for len in 0..cert.len() {
            assert!(not_after(&cert[..len]).is_err(), "{len} bytes");
        }
        for bad in [
            &b""[..],
            &[0x30, 0x80, 0x00, 0x00],             // indefinite length
            &[0x30, 0x85, 1, 0, 0, 0, 0],          // 5 length bytes
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], // longer than the input
            &[0x1f, 0x01, 0x00],                   // multi-byte tag
            &[0x30, 0x03, 0x02, 0x01, 0x00],       // no TBSCertificate
            &[0x04, 0x00],                         // not a SEQUENCE
        ] {
            assert!(not_after(bad).is_err(), "{bad:?}");
        }
        // A time in a form RFC 5280 does not allow.
        for time in [
            &b"491231123456"[..],
            b"4912311234Z",
            b"491331123456Z",
            b"4912311234+0",
        ] {
            assert!(parse_time(time, 2).is_err(), "{time:?}");
        }
        assert!(parse_time(b"20491231123456Z", 4).is_ok());
    }

    #[test]
    fn expiry_is_warned_within_30_days_and_after() {
        let path = Path::new("/etc/l4relay/tls/a.pem");
        let chain = [CertificateDer::from(certificate_until(2030, 6, 15))];
        let ends = SystemTime::UNIX_EPOCH
            + Duration::from_secs(not_after(&chain[0]).unwrap().unix() as u64);
        let day = Duration::from_secs(86_400);
        assert_eq!(expiry_warning(path, &chain, ends - 31 * day), None);
        assert_eq!(
            expiry_warning(path, &chain, ends - 10 * day).as_deref(),
            Some("/etc/l4relay/tls/a.pem: the certificate expires in 10 day(s), on 2030-06-15 12:34:56 UTC: renew it")
        );
        assert_eq!(
            expiry_warning(path, &chain, ends + day).as_deref(),
            Some("/etc/l4relay/tls/a.pem: the certificate expired on 2030-06-15 12:34:56 UTC: peers that verify it refuse it; renew it")
        );
        // An intermediate that ends first is the one named.
        let chain = [
            CertificateDer::from(certificate_until(2031, 1, 1)),
            CertificateDer::from(certificate_until(2030, 6, 15)),
        ];
        let warning = expiry_warning(path, &chain, ends - day).unwrap();
        assert!(warning.contains("certificate 2 of the file"), "{warning}");
        // Unreadable: no warning (the handshake is the judge).
        assert_eq!(
            expiry_warning(path, &[CertificateDer::from(vec![0x30, 0x00])], ends),
            None
        );
    }
}
