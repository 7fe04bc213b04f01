//! Binary-protocol result values to JSON, without loss.
//!
//! JSON numbers are doubles in most clients, so integers beyond 2^53 and DECIMALs travel as
//! strings; floats stay numbers; dates are ISO 8601; TIME is a signed duration
//! `[-]H:MM:SS[.ffffff]` (it may be negative or exceed 24 hours); bytes are base64; JSON
//! columns are embedded as JSON; BIT is an unsigned integer.

use base64::Engine;
use mysql_common::constants::{ColumnFlags, ColumnType};
use mysql_common::packets::Column;
use mysql_common::Value;
use serde_json::{json, Value as Json};

/// The binary character set: columns in it hold bytes, not text.
const BINARY_CHARSET: u16 = 63;
/// Largest integer every JSON reader represents exactly (2^53 - 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The SQL type name of a column, as clients know it.
pub fn type_name(column: &Column) -> &'static str {
    use ColumnType::*;
    let flags = column.flags();
    let binary = column.character_set() == BINARY_CHARSET;
    if flags.contains(ColumnFlags::ENUM_FLAG) {
        return "ENUM";
    }
    if flags.contains(ColumnFlags::SET_FLAG) {
        return "SET";
    }
    match column.column_type() {
        MYSQL_TYPE_TINY => "TINYINT",
        MYSQL_TYPE_SHORT => "SMALLINT",
        MYSQL_TYPE_INT24 => "MEDIUMINT",
        MYSQL_TYPE_LONG => "INT",
        MYSQL_TYPE_LONGLONG => "BIGINT",
        MYSQL_TYPE_FLOAT => "FLOAT",
        MYSQL_TYPE_DOUBLE => "DOUBLE",
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => "DECIMAL",
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => "DATE",
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => "DATETIME",
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => "TIMESTAMP",
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => "TIME",
        MYSQL_TYPE_YEAR => "YEAR",
        MYSQL_TYPE_BIT => "BIT",
        MYSQL_TYPE_JSON => "JSON",
        MYSQL_TYPE_ENUM => "ENUM",
        MYSQL_TYPE_SET => "SET",
        MYSQL_TYPE_NULL => "NULL",
        MYSQL_TYPE_GEOMETRY => "GEOMETRY",
        MYSQL_TYPE_STRING if binary => "BINARY",
        MYSQL_TYPE_STRING => "CHAR",
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if binary => "VARBINARY",
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => "VARCHAR",
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB
            if binary =>
        {
            "BLOB"
        }
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            "TEXT"
        }
        _ => "UNKNOWN",
    }
}

/// A column's description: name, type and nullability always; with `full`, where it
/// comes from and its size.
pub fn describe(column: &Column, full: bool) -> Json {
    let flags = column.flags();
    let mut out = json!({
        "name": column.name_str(),
        "type": type_name(column),
        "nullable": !flags.contains(ColumnFlags::NOT_NULL_FLAG),
    });
    if full {
        let extra = json!({
            "table": column.table_str(),
            "org_table": column.org_table_str(),
            "org_name": column.org_name_str(),
            "schema": column.schema_str(),
            "length": column.column_length(),
            "decimals": column.decimals(),
            "unsigned": flags.contains(ColumnFlags::UNSIGNED_FLAG),
            "binary": column.character_set() == BINARY_CHARSET,
            "charset": column.character_set(),
        });
        if let (Json::Object(out), Json::Object(extra)) = (&mut out, extra) {
            out.extend(extra);
        }
    }
    out
}

fn integer<T: Into<i128>>(value: T) -> Json {
    let wide: i128 = value.into();
    if wide.unsigned_abs() <= u128::from(MAX_SAFE_INTEGER) {
        // Fits in i64 because it is at most 2^53 in magnitude.
        Json::from(wide as i64)
    } else {
        Json::String(wide.to_string())
    }
}

fn base64(bytes: &[u8]) -> Json {
    Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `.ffffff` with as many digits as the column declares (all six when it declares none
/// but the value has some).
fn fraction(micros: u32, decimals: u8) -> String {
    let digits = match decimals {
        1..=6 => usize::from(decimals),
        _ if micros != 0 => 6,
        _ => return String::new(),
    };
    let text = format!("{micros:06}");
    format!(".{}", &text[..digits])
}

/// Converts one value of `column` to JSON.
pub fn to_json(value: Value, column: &Column) -> Json {
    let kind = column.column_type();
    match value {
        Value::NULL => Json::Null,
        Value::Int(i) => integer(i),
        Value::UInt(u) => integer(u),
        // Through the shortest decimal text, so 1.1f32 reads 1.1 and not 1.100000023841858.
        Value::Float(f) => f
            .to_string()
            .parse::<f64>()
            .map(Json::from)
            .unwrap_or(Json::Null),
        Value::Double(d) => Json::from(d),
        Value::Date(y, mo, d, h, mi, s, us) => {
            if matches!(
                kind,
                ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE
            ) {
                Json::String(format!("{y:04}-{mo:02}-{d:02}"))
            } else {
                Json::String(format!(
                    "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}",
                    fraction(us, column.decimals())
                ))
            }
        }
        Value::Time(negative, days, h, m, s, us) => Json::String(format!(
            "{}{}:{m:02}:{s:02}{}",
            if negative { "-" } else { "" },
            u64::from(days) * 24 + u64::from(h),
            fraction(us, column.decimals())
        )),
        Value::Bytes(bytes) => bytes_to_json(bytes, column),
    }
}

fn bytes_to_json(bytes: Vec<u8>, column: &Column) -> Json {
    match column.column_type() {
        ColumnType::MYSQL_TYPE_BIT if bytes.len() <= 8 => {
            integer(bytes.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
        }
        ColumnType::MYSQL_TYPE_JSON => {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| text(bytes))
        }
        ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL => text(bytes),
        ColumnType::MYSQL_TYPE_GEOMETRY | ColumnType::MYSQL_TYPE_BIT => base64(&bytes),
        _ if column.character_set() == BINARY_CHARSET => base64(&bytes),
        _ => text(bytes),
    }
}

fn text(bytes: Vec<u8>) -> Json {
    Json::String(
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

/// Roughly how many bytes `value` takes in the response, for `http.max_result_size`.
pub fn size_of(value: &Value) -> usize {
    match value {
        Value::NULL => 4,
        Value::Bytes(bytes) => bytes.len() * 4 / 3 + 4,
        Value::Int(_) | Value::UInt(_) | Value::Float(_) | Value::Double(_) => 20,
        Value::Date(..) | Value::Time(..) => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(kind: ColumnType, charset: u16, decimals: u8) -> Column {
        Column::new(kind)
            .with_character_set(charset)
            .with_decimals(decimals)
    }

    #[test]
    fn lossless_mapping() {
        let bigint = column(ColumnType::MYSQL_TYPE_LONGLONG, BINARY_CHARSET, 0);
        assert_eq!(
            to_json(Value::UInt(u64::MAX), &bigint),
            json!("18446744073709551615")
        );
        assert_eq!(
            to_json(Value::Int(-(1 << 53) + 1), &bigint),
            json!(-(1i64 << 53) + 1)
        );
        assert_eq!(
            to_json(Value::Int(-(1 << 53)), &bigint),
            json!("-9007199254740992")
        );
        let float = column(ColumnType::MYSQL_TYPE_FLOAT, BINARY_CHARSET, 31);
        assert_eq!(to_json(Value::Float(1.1), &float), json!(1.1));
        let time = column(ColumnType::MYSQL_TYPE_TIME, BINARY_CHARSET, 3);
        assert_eq!(
            to_json(Value::Time(true, 34, 22, 59, 59, 120_000), &time),
            json!("-838:59:59.120")
        );
        let datetime = column(ColumnType::MYSQL_TYPE_DATETIME, BINARY_CHARSET, 6);
        assert_eq!(
            to_json(Value::Date(2024, 2, 29, 1, 2, 3, 4), &datetime),
            json!("2024-02-29T01:02:03.000004")
        );
        let blob = column(ColumnType::MYSQL_TYPE_BLOB, BINARY_CHARSET, 0);
        assert_eq!(to_json(Value::Bytes(vec![0, 1, 255]), &blob), json!("AAH/"));
        let bit = column(ColumnType::MYSQL_TYPE_BIT, BINARY_CHARSET, 0);
        assert_eq!(to_json(Value::Bytes(vec![1, 2]), &bit), json!(258));
        let text = column(ColumnType::MYSQL_TYPE_VAR_STRING, 45, 0);
        assert_eq!(
            to_json(Value::Bytes(b"h\xc3\xa9".to_vec()), &text),
            json!("hé")
        );
    }
}
