//! Kubernetes resource quantities (`250m`, `1Gi`, `1e3`), enough to validate
//! annotation values and compare a request with its limit before the API
//! server does — a pod the webhook made invalid would fail with a worse message.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated quantity: the text as written (what goes into the pod) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    text: String,
    value: f64,
}

impl Quantity {
    /// Parses the Kubernetes quantity grammar: a signed decimal number followed by
    /// a binary suffix (`Ki`..`Ei`), a decimal suffix (`n`, `u`, `m`, `k`, `M`..`E`)
    /// or a decimal exponent (`e3`, `E-2`).
    pub fn parse(s: &str) -> Result<Quantity, String> {
        let bad = || {
            format!(
                "invalid quantity {s:?}: expected a number with an optional suffix \
                 (Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E), e.g. 500m or 2Gi"
            )
        };
        let t = s.trim();
        if t.is_empty() || t != s {
            return Err(bad());
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(t.len());
        let (num, suffix) = t.split_at(split);
        let digits = num.strip_prefix(['+', '-']).unwrap_or(num);
        if digits.is_empty()
            || digits.contains(['+', '-'])
            || digits.matches('.').count() > 1
            || digits == "."
        {
            return Err(bad());
        }
        let mantissa: f64 = num.parse().map_err(|_| bad())?;
        let factor: f64 = match suffix {
            "" => 1.0,
            "Ki" => 1024f64,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            "n" => 1e-9,
            "u" => 1e-6,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            exp if exp.starts_with(['e', 'E']) => {
                let e = &exp[1..];
                let body = e.strip_prefix(['+', '-']).unwrap_or(e);
                if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let e: i32 = e.parse().map_err(|_| bad())?;
                10f64.powi(e)
            }
            _ => return Err(bad()),
        };
        let value = mantissa * factor;
        if !value.is_finite() {
            return Err(bad());
        }
        Ok(Quantity {
            text: s.to_string(),
            value,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value in base units (cores, bytes), for comparisons.
    pub fn value(&self) -> f64 {
        self.value
    }

    pub fn is_positive(&self) -> bool {
        self.value > 0.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Str(String),
        }
        let s = match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string(),
            Raw::Float(f) => f.to_string(),
            Raw::Str(s) => s,
        };
        Quantity::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kubernetes_forms() {
        assert_eq!(Quantity::parse("250m").unwrap().value(), 0.25);
        assert_eq!(Quantity::parse("1Gi").unwrap().value(), 1073741824.0);
        assert_eq!(Quantity::parse("2").unwrap().value(), 2.0);
        assert_eq!(Quantity::parse("1.5").unwrap().value(), 1.5);
        assert_eq!(Quantity::parse("1e3").unwrap().value(), 1000.0);
        assert_eq!(Quantity::parse("128M").unwrap().value(), 128e6);
        assert!(!Quantity::parse("0").unwrap().is_positive());
        assert!(!Quantity::parse("-1").unwrap().is_positive());
    }

    #[test]
    fn rejects_garbage_with_the_accepted_forms() {
        for bad in [
            "", " 1", "1 ", "abc", "1GB", "1.2.3", "--1", "1e", "Gi", ".", "1x",
        ] {
            let e = Quantity::parse(bad).unwrap_err();
            assert!(e.contains("expected a number"), "{bad}: {e}");
        }
    }
}
