//! JSON request parameters to binary-protocol values, bound server-side by
//! `COM_STMT_EXECUTE`; nothing is ever spliced into SQL text.
//!
//! Plain JSON values cover most needs (`null`, booleans as 0/1, numbers, strings). Typed
//! values, `{"type": "...", "value": ...}`, say what plain JSON cannot: exact decimals and
//! integers beyond 2^53 (as strings), bytes (base64), dates and times, and JSON documents.

use base64::Engine;
use mysql_common::Value;
use serde_json::Value as Json;

/// Converts every parameter, naming the first bad one in the error.
pub fn to_values(params: &[Json]) -> Result<Vec<Value>, String> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| to_value(p).map_err(|why| format!("parameter {i}: {why}")))
        .collect()
}

fn to_value(param: &Json) -> Result<Value, String> {
    Ok(match param {
        Json::Null => Value::NULL,
        Json::Bool(b) => Value::Int(i64::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (None, None, Some(f)) => Value::Double(f),
            _ => return Err(format!("{n} is not a representable number")),
        },
        Json::String(s) => Value::Bytes(s.as_bytes().to_vec()),
        Json::Array(_) => {
            return Err(
                "arrays are not parameters; pass a JSON document as {\"type\": \"json\", \"value\": [...]}"
                    .into(),
            )
        }
        Json::Object(map) => {
            let kind = map.get("type").and_then(Json::as_str).ok_or(
                "an object parameter must be a typed value {\"type\": ..., \"value\": ...}",
            )?;
            let value = map.get("value").ok_or("a typed value needs a \"value\"")?;
            typed(kind, value)?
        }
    })
}

fn typed(kind: &str, value: &Json) -> Result<Value, String> {
    if value.is_null() {
        return Ok(Value::NULL);
    }
    let text = || {
        value
            .as_str()
            .ok_or_else(|| format!("a {kind} value must be a string"))
    };
    Ok(match kind {
        "string" => Value::Bytes(text()?.as_bytes().to_vec()),
        "json" => Value::Bytes(value.to_string().into_bytes()),
        "blob" => Value::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(text()?)
                .map_err(|e| format!("blob value is not base64: {e}"))?,
        ),
        "decimal" => {
            let s = match value {
                Json::Number(n) => n.to_string(),
                _ => text()?.to_owned(),
            };
            if !is_decimal(&s) {
                return Err(format!("{s:?} is not a decimal number"));
            }
            Value::Bytes(s.into_bytes())
        }
        "integer" => match value {
            Json::Number(_) => to_value(value)?,
            _ => {
                let s = text()?;
                match (s.parse::<i64>(), s.parse::<u64>()) {
                    (Ok(i), _) => Value::Int(i),
                    (_, Ok(u)) => Value::UInt(u),
                    _ => return Err(format!("{s:?} is not a 64-bit integer")),
                }
            }
        },
        "date" | "datetime" | "timestamp" => parse_datetime(text()?)?,
        "time" => parse_time(text()?)?,
        other => {
            return Err(format!(
                "unknown type {other:?}; use string, integer, decimal, blob, date, datetime, timestamp, time or json"
            ))
        }
    })
}

fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `field` as a number of at most `max` (inclusive).
fn number<T: std::str::FromStr + PartialOrd>(field: &str, max: T) -> Option<T> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok().filter(|v| *v <= max)
}

/// Microseconds from a fraction's digits (`"5"` is 500000).
fn micros(fraction: &str) -> Option<u32> {
    if fraction.len() > 6 {
        return None;
    }
    let padded = format!("{fraction:0<6}");
    number(&padded, 999_999)
}

/// `HH:MM:SS[.ffffff]` into its parts; hours up to `max_hours`.
fn clock(text: &str, max_hours: u32) -> Option<(u32, u8, u8, u32)> {
    let (hms, fraction) = text.split_once('.').unwrap_or((text, ""));
    let mut parts = hms.split(':');
    let hours = number(parts.next()?, max_hours)?;
    let minutes = number(parts.next()?, 59)?;
    let seconds = number(parts.next()?, 59)?;
    if parts.next().is_some() {
        return None;
    }
    let micros = if fraction.is_empty() {
        0
    } else {
        micros(fraction)?
    };
    Some((hours, minutes, seconds, micros))
}

/// ISO 8601 `YYYY-MM-DD[THH:MM:SS[.ffffff]]` (a space works as well as `T`; a trailing `Z`
/// is accepted and ignored, since DATETIME has no zone).
fn parse_datetime(text: &str) -> Result<Value, String> {
    let bad =
        || format!("{text:?} is not an ISO 8601 date or date-time (YYYY-MM-DDTHH:MM:SS.ffffff)");
    let trimmed = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = match trimmed.split_once(['T', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (trimmed, None),
    };
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (year, month, day) = (
        number(y, 9999u16)
            .filter(|_| y.len() == 4)
            .ok_or_else(bad)?,
        number(m, 12u8).ok_or_else(bad)?,
        number(d, 31u8).ok_or_else(bad)?,
    );
    let (hours, minutes, seconds, micros) = match time {
        Some(time) => clock(time, 23).ok_or_else(bad)?,
        None => (0, 0, 0, 0),
    };
    Ok(Value::Date(
        year,
        month,
        day,
        hours as u8,
        minutes,
        seconds,
        micros,
    ))
}

/// A TIME as sluice returns it: `[-]H:MM:SS[.ffffff]`, hours up to 838.
fn parse_time(text: &str) -> Result<Value, String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (hours, minutes, seconds, micros) = clock(rest, 838)
        .ok_or_else(|| format!("{text:?} is not a time ([-]H:MM:SS[.ffffff], up to 838 hours)"))?;
    Ok(Value::Time(
        negative,
        hours / 24,
        (hours % 24) as u8,
        minutes,
        seconds,
        micros,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_and_typed_values() {
        let values = to_values(&[
            json!(null),
            json!(true),
            json!(-5),
            json!(18446744073709551615u64),
            json!(1.5),
            json!("x"),
            json!({"type": "decimal", "value": "12.30"}),
            json!({"type": "blob", "value": "AAH/"}),
            json!({"type": "datetime", "value": "2024-02-29T23:59:58.5"}),
            json!({"type": "time", "value": "-838:59:59.000001"}),
            json!({"type": "json", "value": {"a": [1]}}),
            json!({"type": "integer", "value": "-9223372036854775808"}),
        ])
        .unwrap();
        assert_eq!(
            values,
            vec![
                Value::NULL,
                Value::Int(1),
                Value::Int(-5),
                Value::UInt(u64::MAX),
                Value::Double(1.5),
                Value::Bytes(b"x".to_vec()),
                Value::Bytes(b"12.30".to_vec()),
                Value::Bytes(vec![0, 1, 255]),
                Value::Date(2024, 2, 29, 23, 59, 58, 500_000),
                Value::Time(true, 34, 22, 59, 59, 1),
                Value::Bytes(br#"{"a":[1]}"#.to_vec()),
                Value::Int(i64::MIN),
            ]
        );
    }

    #[test]
    fn bad_values_name_their_index() {
        for bad in [
            json!([1]),
            json!({"value": 1}),
            json!({"type": "decimal", "value": "1e5"}),
            json!({"type": "blob", "value": "!!"}),
            json!({"type": "datetime", "value": "2024-13-01"}),
            json!({"type": "time", "value": "839:00:00"}),
            json!({"type": "uuid", "value": "x"}),
        ] {
            let err = to_values(&[json!(1), bad.clone()]).unwrap_err();
            assert!(err.starts_with("parameter 1: "), "{bad}: {err}");
        }
    }
}
