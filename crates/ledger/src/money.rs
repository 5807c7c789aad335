//! Money: integer minor units and currencies with their exponent.
//!
//! There is no floating point here. An amount is a `u64` count of minor units (fen, cents, fils) and
//! only means something together with a [`Currency`], whose exponent says how many minor units make one
//! major unit (CNY 2, JPY 0, KWD 3). Arithmetic on amounts is checked: an overflow is an error value.

use core::fmt;

/// Longest currency or unit code accepted (ISO codes are 3; custom units such as `POINTS` up to this).
pub const CURRENCY_CODE_BYTES_MAX: usize = 12;
/// Largest exponent a custom unit may declare (10^18 still fits in a `u64`).
pub const CURRENCY_EXPONENT_MAX: u8 = 18;

/// The code of a currency or unit: 1–12 bytes of `[A-Z0-9_]`, stored inline (no allocation, `Copy`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CurrencyCode {
    bytes: [u8; CURRENCY_CODE_BYTES_MAX],
    len: u8,
}

impl CurrencyCode {
    /// Parses a code. Returns `None` unless it is 1–12 bytes of upper-case letters, digits or `_`.
    pub fn new(code: &str) -> Option<CurrencyCode> {
        let raw = code.as_bytes();
        if raw.is_empty() || raw.len() > CURRENCY_CODE_BYTES_MAX {
            return None;
        }
        if !raw.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_') {
            return None;
        }
        let mut bytes = [0u8; CURRENCY_CODE_BYTES_MAX];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(CurrencyCode { bytes, len: raw.len() as u8 })
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored (checked in `new`).
        core::str::from_utf8(&self.bytes[..self.len as usize]).expect("currency code is ASCII")
    }
}

impl fmt::Debug for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A currency (ISO 4217) or a custom unit (loyalty points, airtime minutes) with its exponent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Currency {
    code: CurrencyCode,
    exponent: u8,
}

/// Why a currency was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CurrencyError {
    /// The code is not 1–12 bytes of `[A-Z0-9_]`.
    InvalidCode,
    /// A three-letter code that is not in the ISO 4217 table, with no exponent declared.
    UnknownIsoCode,
    /// A custom unit declared with an exponent above [`CURRENCY_EXPONENT_MAX`].
    ExponentTooLarge,
    /// A custom unit tried to reuse an ISO 4217 code with a different exponent.
    ConflictsWithIso,
}

impl fmt::Display for CurrencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CurrencyError::InvalidCode => "a currency code is 1-12 characters of A-Z, 0-9 or _",
            CurrencyError::UnknownIsoCode => {
                "not an ISO 4217 currency; declare an exponent to use a custom unit"
            }
            CurrencyError::ExponentTooLarge => "a custom unit's exponent must be at most 18",
            CurrencyError::ConflictsWithIso => "this code is an ISO 4217 currency with a different exponent",
        })
    }
}

impl std::error::Error for CurrencyError {}

impl Currency {
    /// An ISO 4217 currency by its alphabetic code, with the exponent from the standard.
    pub fn iso(code: &str) -> Result<Currency, CurrencyError> {
        let code = CurrencyCode::new(code).ok_or(CurrencyError::InvalidCode)?;
        let exponent = iso_exponent(code.as_str()).ok_or(CurrencyError::UnknownIsoCode)?;
        Ok(Currency { code, exponent })
    }

    /// A currency by code with an optional declared exponent: ISO codes may omit it (or must match the
    /// standard), any other code is a custom unit and must declare it.
    pub fn parse(code: &str, exponent: Option<u8>) -> Result<Currency, CurrencyError> {
        let parsed = CurrencyCode::new(code).ok_or(CurrencyError::InvalidCode)?;
        match (iso_exponent(parsed.as_str()), exponent) {
            (Some(iso), None) => Ok(Currency { code: parsed, exponent: iso }),
            (Some(iso), Some(e)) if iso == e => Ok(Currency { code: parsed, exponent: iso }),
            (Some(_), Some(_)) => Err(CurrencyError::ConflictsWithIso),
            (None, None) => Err(CurrencyError::UnknownIsoCode),
            (None, Some(e)) if e > CURRENCY_EXPONENT_MAX => Err(CurrencyError::ExponentTooLarge),
            (None, Some(e)) => Ok(Currency { code: parsed, exponent: e }),
        }
    }

    /// The currency's code.
    pub fn code(&self) -> CurrencyCode {
        self.code
    }

    /// Minor units per major unit, as a power of ten.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    /// Whether this is an ISO 4217 currency (as opposed to a custom unit).
    pub fn is_iso(&self) -> bool {
        iso_exponent(self.code.as_str()).is_some()
    }

    /// Formats an amount of minor units in major units, e.g. `1050` CNY → `"10.50"`. Exact: integer only.
    pub fn format_minor(&self, amount_minor: u64) -> String {
        format_minor_units(amount_minor as u128, false, self.exponent)
    }

    /// Formats a signed net balance (credits − debits) in major units.
    pub fn format_net(&self, net_minor: i128) -> String {
        format_minor_units(net_minor.unsigned_abs(), net_minor < 0, self.exponent)
    }
}

fn format_minor_units(magnitude: u128, negative: bool, exponent: u8) -> String {
    let sign = if negative { "-" } else { "" };
    if exponent == 0 {
        return format!("{sign}{magnitude}");
    }
    let scale = 10u128.pow(exponent as u32);
    format!("{sign}{}.{:0width$}", magnitude / scale, magnitude % scale, width = exponent as usize)
}

/// Adds two amounts, `None` on overflow.
#[inline]
pub fn add_minor(a: u64, b: u64) -> Option<u64> {
    a.checked_add(b)
}

/// The ISO 4217 exponent (minor unit digits) of an active currency code, or `None` if unknown.
pub fn iso_exponent(code: &str) -> Option<u8> {
    ISO_4217.binary_search_by(|(c, _)| (*c).cmp(code)).ok().map(|i| ISO_4217[i].1)
}

/// Active ISO 4217 codes with their minor-unit exponent, sorted by code (checked by a test).
#[rustfmt::skip]
const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2), ("AFN", 2), ("ALL", 2), ("AMD", 2), ("ANG", 2), ("AOA", 2), ("ARS", 2), ("AUD", 2),
    ("AWG", 2), ("AZN", 2), ("BAM", 2), ("BBD", 2), ("BDT", 2), ("BGN", 2), ("BHD", 3), ("BIF", 0),
    ("BMD", 2), ("BND", 2), ("BOB", 2), ("BRL", 2), ("BSD", 2), ("BTN", 2), ("BWP", 2), ("BYN", 2),
    ("BZD", 2), ("CAD", 2), ("CDF", 2), ("CHF", 2), ("CLF", 4), ("CLP", 0), ("CNY", 2), ("COP", 2),
    ("CRC", 2), ("CUP", 2), ("CVE", 2), ("CZK", 2), ("DJF", 0), ("DKK", 2), ("DOP", 2), ("DZD", 2),
    ("EGP", 2), ("ERN", 2), ("ETB", 2), ("EUR", 2), ("FJD", 2), ("FKP", 2), ("GBP", 2), ("GEL", 2),
    ("GHS", 2), ("GIP", 2), ("GMD", 2), ("GNF", 0), ("GTQ", 2), ("GYD", 2), ("HKD", 2), ("HNL", 2),
    ("HTG", 2), ("HUF", 2), ("IDR", 2), ("ILS", 2), ("INR", 2), ("IQD", 3), ("IRR", 2), ("ISK", 0),
    ("JMD", 2), ("JOD", 3), ("JPY", 0), ("KES", 2), ("KGS", 2), ("KHR", 2), ("KMF", 0), ("KPW", 2),
    ("KRW", 0), ("KWD", 3), ("KYD", 2), ("KZT", 2), ("LAK", 2), ("LBP", 2), ("LKR", 2), ("LRD", 2),
    ("LSL", 2), ("LYD", 3), ("MAD", 2), ("MDL", 2), ("MGA", 2), ("MKD", 2), ("MMK", 2), ("MNT", 2),
    ("MOP", 2), ("MRU", 2), ("MUR", 2), ("MVR", 2), ("MWK", 2), ("MXN", 2), ("MYR", 2), ("MZN", 2),
    ("NAD", 2), ("NGN", 2), ("NIO", 2), ("NOK", 2), ("NPR", 2), ("NZD", 2), ("OMR", 3), ("PAB", 2),
    ("PEN", 2), ("PGK", 2), ("PHP", 2), ("PKR", 2), ("PLN", 2), ("PYG", 0), ("QAR", 2), ("RON", 2),
    ("RSD", 2), ("RUB", 2), ("RWF", 0), ("SAR", 2), ("SBD", 2), ("SCR", 2), ("SDG", 2), ("SEK", 2),
    ("SGD", 2), ("SHP", 2), ("SLE", 2), ("SOS", 2), ("SRD", 2), ("SSP", 2), ("STN", 2), ("SVC", 2),
    ("SYP", 2), ("SZL", 2), ("THB", 2), ("TJS", 2), ("TMT", 2), ("TND", 3), ("TOP", 2), ("TRY", 2),
    ("TTD", 2), ("TWD", 2), ("TZS", 2), ("UAH", 2), ("UGX", 0), ("USD", 2), ("UYI", 0), ("UYU", 2),
    ("UYW", 4), ("UZS", 2), ("VES", 2), ("VND", 0), ("VUV", 0), ("WST", 2), ("XAF", 0), ("XCD", 2),
    ("XOF", 0), ("XPF", 0), ("YER", 2), ("ZAR", 2), ("ZMW", 2), ("ZWG", 2),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_table_is_sorted_and_unique() {
        assert!(ISO_4217.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(Currency::iso("CNY").unwrap().exponent(), 2);
        assert_eq!(Currency::iso("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::iso("KWD").unwrap().exponent(), 3);
        assert_eq!(Currency::iso("XYZ"), Err(CurrencyError::UnknownIsoCode));
        assert_eq!(Currency::iso("cny"), Err(CurrencyError::InvalidCode));
    }

    #[test]
    fn custom_units_declare_an_exponent() {
        let points = Currency::parse("POINTS", Some(0)).unwrap();
        assert!(!points.is_iso());
        assert_eq!(Currency::parse("POINTS", None), Err(CurrencyError::UnknownIsoCode));
        assert_eq!(Currency::parse("JPY", Some(2)), Err(CurrencyError::ConflictsWithIso));
        assert_eq!(Currency::parse("GOLD_MG", Some(19)), Err(CurrencyError::ExponentTooLarge));
    }

    #[test]
    fn formatting_is_exact() {
        let cny = Currency::iso("CNY").unwrap();
        assert_eq!(cny.format_minor(1050), "10.50");
        assert_eq!(cny.format_minor(7), "0.07");
        assert_eq!(cny.format_net(-1050), "-10.50");
        assert_eq!(Currency::iso("KWD").unwrap().format_minor(1), "0.001");
        assert_eq!(Currency::iso("JPY").unwrap().format_minor(500), "500");
        assert_eq!(cny.format_minor(u64::MAX), "184467440737095516.15");
    }
}
