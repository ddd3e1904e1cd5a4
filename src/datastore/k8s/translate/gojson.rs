//! JSON written the way Go's `encoding/json` writes the structs Typha marshals.
//!
//! Typha decodes each object into a Go struct and marshals that struct again, so the bytes a
//! Felix receives depend on the struct, not on the object as stored:
//!
//! * members come in the struct's declaration order; members the struct does not declare are
//!   gone (an API server newer than the Go types adds nothing);
//! * a member without `omitempty` is always written, as its zero value when the object lacks
//!   it (`"creationTimestamp":null`, `"status":{}`); a member with `omitempty` is left out when
//!   it is zero (`false`, `0`, `""`, `null`, an empty list or map), except non-pointer structs,
//!   which `omitempty` never drops;
//! * `metav1.Duration` members are re-formatted by `time.Duration.String()` (`2m` → `"2m0s"`);
//! * map keys are sorted (Go sorts them; `serde_json::Map` is a sorted map here);
//! * in strings, `<`, `>`, `&`, U+2028 and U+2029 are escaped as `\u003c`, `\u003e`, `\u0026`,
//!   `\u2028`, `\u2029` (Go's HTML-safe default);
//! * floats use Go's forms ([`go_float64`]: `0.000001`, `1e-7`, `1e+21`), integers are written
//!   as they are.
//!
//! A [`Shape`] carries one struct's declarations; `go_shapes.rs` holds the tables, generated
//! from the Go sources by `parity/gen_shapes.py`.

use super::calico::{go_duration_string, parse_go_duration};
use bytes::Bytes;
use serde_json::Value;
use std::fmt::Write as _;

/// How Go marshals one type.
#[derive(Debug)]
pub(crate) enum Shape {
    /// Written as it is (scalars, and types with their own marshalling).
    Any,
    /// A struct: its members in declaration order.
    Struct(&'static [Field]),
    List(&'static Shape),
    /// A map: keys sorted, every value of the given shape.
    Map(&'static Shape),
    /// `metav1.Duration`: a string in Go's `Duration.String()` form.
    Duration,
    /// `numorstring.ASNumber`: read from a number or a string (`"64512"`, dotted `"1.10"`),
    /// written as the uint32 it holds.
    AsNumber,
}

/// When an `omitempty` member is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Omit {
    /// No `omitempty`, or a non-pointer struct.
    Never,
    /// A pointer: left out when nil.
    IfNull,
    /// A list or map: left out when nil or empty.
    IfEmpty,
    /// A scalar: left out when `""`, `false` or `0`.
    IfZero,
}

/// One struct member.
#[derive(Debug)]
pub(crate) struct Field {
    pub name: &'static str,
    pub shape: &'static Shape,
    pub omit: Omit,
    /// The JSON Go writes when the object lacks the member and it is not omitted.
    pub zero: Option<&'static str>,
}

/// `metav1.ObjectMeta` (k8s.io/apimachinery v0.35).
pub(crate) static OBJECT_META: Shape = Shape::Struct(&[
    f("name", &Shape::Any, Omit::IfZero),
    f("generateName", &Shape::Any, Omit::IfZero),
    f("namespace", &Shape::Any, Omit::IfZero),
    f("selfLink", &Shape::Any, Omit::IfZero),
    f("uid", &Shape::Any, Omit::IfZero),
    f("resourceVersion", &Shape::Any, Omit::IfZero),
    f("generation", &Shape::Any, Omit::IfZero),
    // A non-pointer `metav1.Time`: never omitted, and its zero marshals as null.
    Field {
        name: "creationTimestamp",
        shape: &Shape::Any,
        omit: Omit::Never,
        zero: Some("null"),
    },
    f("deletionTimestamp", &Shape::Any, Omit::IfNull),
    f("deletionGracePeriodSeconds", &Shape::Any, Omit::IfNull),
    f("labels", &Shape::Map(&Shape::Any), Omit::IfEmpty),
    f("annotations", &Shape::Map(&Shape::Any), Omit::IfEmpty),
    f(
        "ownerReferences",
        &Shape::List(&OWNER_REFERENCE),
        Omit::IfEmpty,
    ),
    f("finalizers", &Shape::List(&Shape::Any), Omit::IfEmpty),
    f("managedFields", &Shape::List(&Shape::Any), Omit::IfEmpty),
]);

/// `metav1.OwnerReference`.
pub(crate) static OWNER_REFERENCE: Shape = Shape::Struct(&[
    req("apiVersion", r#""""#),
    req("kind", r#""""#),
    req("name", r#""""#),
    req("uid", r#""""#),
    f("controller", &Shape::Any, Omit::IfNull),
    f("blockOwnerDeletion", &Shape::Any, Omit::IfNull),
]);

const fn f(name: &'static str, shape: &'static Shape, omit: Omit) -> Field {
    Field {
        name,
        shape,
        omit,
        zero: None,
    }
}

const fn req(name: &'static str, zero: &'static str) -> Field {
    Field {
        name,
        shape: &Shape::Any,
        omit: Omit::Never,
        zero: Some(zero),
    }
}

/// `v` marshalled as Go marshals the struct `shape` describes.
pub(crate) fn to_bytes(v: &Value, shape: &Shape) -> Bytes {
    let mut out = String::new();
    write(&mut out, v, shape);
    Bytes::from(out)
}

/// A serializable value (the v1 model structs, whose serde derives follow Go's declaration
/// order) with Go's HTML-safe string escaping. The characters escaped can only occur inside
/// JSON strings, so escaping them in serde's output is exact.
pub(crate) fn serialize<T: serde::Serialize>(v: &T) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, GoFloats);
    if v.serialize(&mut ser).is_err() {
        return Bytes::new();
    }
    let Ok(text) = String::from_utf8(buf) else {
        return Bytes::new();
    };
    if !text.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return Bytes::from(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    Bytes::from(out)
}

fn is_omitted(v: &Value, omit: Omit) -> bool {
    match omit {
        Omit::Never => false,
        Omit::IfNull => v.is_null(),
        Omit::IfEmpty => match v {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(m) => m.is_empty(),
            Value::String(s) => s.is_empty(),
            _ => false,
        },
        Omit::IfZero => match v {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(m) => m.is_empty(),
        },
    }
}

fn write(out: &mut String, v: &Value, shape: &Shape) {
    match (shape, v) {
        (Shape::Struct(fields), Value::Object(m)) => {
            out.push('{');
            let mut first = true;
            for fd in *fields {
                let present = m.get(fd.name).filter(|x| !x.is_null());
                let member = match present {
                    Some(x) if !is_omitted(x, fd.omit) => Member::Value(x),
                    Some(_) => continue,
                    None if fd.omit == Omit::Never => match fd.zero {
                        Some(z) => Member::Literal(z),
                        None => continue,
                    },
                    None => continue,
                };
                if !std::mem::take(&mut first) {
                    out.push(',');
                }
                write_str(out, fd.name);
                out.push(':');
                match member {
                    Member::Value(x) => write(out, x, fd.shape),
                    Member::Literal(z) => out.push_str(z),
                }
            }
            out.push('}');
        }
        (Shape::List(item), Value::Array(a)) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(out, x, item);
            }
            out.push(']');
        }
        (Shape::Map(item), Value::Object(m)) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write(out, x, item);
            }
            out.push('}');
        }
        (Shape::AsNumber, Value::String(s)) => match as_number(s) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => write_str(out, s),
        },
        (Shape::Duration, Value::String(s)) => match parse_go_duration(s) {
            Some((neg, nanos)) => write_str(out, &go_duration_string(neg, nanos)),
            None => write_str(out, s),
        },
        // Anything else (and a value whose type does not fit the shape) as it is.
        (_, Value::Object(m)) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write(out, x, &Shape::Any);
            }
            out.push('}');
        }
        (_, Value::Array(a)) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(out, x, &Shape::Any);
            }
            out.push(']');
        }
        (_, Value::String(s)) => write_str(out, s),
        (_, Value::Number(n)) => write_number(out, n),
        (_, Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        (_, Value::Null) => out.push_str("null"),
    }
}

enum Member<'a> {
    Value(&'a Value),
    Literal(&'static str),
}

/// Go's `encodeState.string` with HTML escaping on.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go 1.22 and later write these two short forms too.
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Integers as they are (the Go type is not known here, and an integer is written the same for
/// an int field and, below 2^53, for a float64 one); floats as [`go_float64`].
fn write_number(out: &mut String, n: &serde_json::Number) {
    match n.as_f64() {
        Some(f) if !(n.is_i64() || n.is_u64()) => out.push_str(&go_float64(f)),
        _ => {
            let _ = write!(out, "{n}");
        }
    }
}

/// `numorstring.ASNumberFromString`: a decimal uint32, or `<high>.<low>` with two decimal
/// uint16 halves (asdot notation).
fn as_number(s: &str) -> Option<u32> {
    let decimal = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    if decimal(s) {
        return s.parse().ok();
    }
    let (high, low) = s.split_once('.')?;
    if !decimal(high) || !decimal(low) {
        return None;
    }
    Some((u32::from(high.parse::<u16>().ok()?) << 16) + u32::from(low.parse::<u16>().ok()?))
}

/// A float64 exactly as Go's `encoding/json` writes it (`floatEncoder`):
/// `strconv.FormatFloat(f, 'f', -1, 64)` (the shortest digits that read back as `f`, no
/// exponent) when `1e-6 <= |f| < 1e21` or `f` is zero (`-0` keeps its sign), otherwise the
/// `'e'` form of the same digits with Go's exponent (`e+21`, `e+100`, `e-10`) and a
/// one-digit negative exponent shortened (`e-07` written `e-7`). Go refuses NaN and the
/// infinities; JSON cannot carry them, so they are written as `null` should one appear.
pub(crate) fn go_float64(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_string();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust's `{:e}` has the same shortest digits as Go's `-1` precision.
        let e = format!("{f:e}");
        let (mant, exp) = e.split_once('e').unwrap_or((e.as_str(), "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        if exp < 0 {
            format!("{mant}e-{}", -exp)
        } else {
            format!("{mant}e+{exp:02}")
        }
    } else {
        // Rust's `Display` is the shortest round-trip form and never uses an exponent.
        format!("{f}")
    }
}

/// serde_json's compact output with floats in Go's form ([`go_float64`]) instead of ryu's
/// (`1e21`, `1e16` where Go writes `1e+21`, `10000000000000000`).
struct GoFloats;

impl serde_json::ser::Formatter for GoFloats {
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        w.write_all(go_float64(v).as_bytes())
    }

    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f32) -> std::io::Result<()> {
        // No struct Typha marshals has a float32; widening keeps the value, not Go's 32-bit
        // shortest digits, so say so rather than guess.
        w.write_all(go_float64(f64::from(v)).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static INNER: Shape = Shape::Struct(&[f("b", &Shape::Any, Omit::IfZero), req("a", r#""""#)]);
    static OUTER: Shape = Shape::Struct(&[
        f("z", &Shape::Any, Omit::IfZero),
        Field {
            name: "inner",
            shape: &INNER,
            omit: Omit::Never,
            zero: Some(r#"{"a":""}"#),
        },
        f("d", &Shape::Duration, Omit::IfNull),
        f("list", &Shape::List(&INNER), Omit::IfEmpty),
        f("ptr", &Shape::Any, Omit::IfNull),
    ]);

    fn go(v: Value, s: &Shape) -> String {
        String::from_utf8(to_bytes(&v, s).to_vec()).unwrap()
    }

    #[test]
    fn members_in_declaration_order_zero_values_and_omitempty() {
        assert_eq!(
            go(
                json!({"ptr": false, "list": [{"a": "x", "b": "y"}], "d": "2m", "z": "", "extra": 1}),
                &OUTER
            ),
            r#"{"inner":{"a":""},"d":"2m0s","list":[{"b":"y","a":"x"}],"ptr":false}"#
        );
        assert_eq!(go(json!({"list": []}), &OUTER), r#"{"inner":{"a":""}}"#);
    }

    #[test]
    fn strings_and_numbers_as_go_writes_them() {
        assert_eq!(
            go(json!({"k": "a<b>&c\u{2028}\u{1}\n"}), &Shape::Any),
            r#"{"k":"a\u003cb\u003e\u0026c\u2028\u0001\n"}"#
        );
        assert_eq!(
            go(json!([1, -2, 1.5, 1e21, 1e-7, 0.000001]), &Shape::Any),
            "[1,-2,1.5,1e+21,1e-7,0.000001]"
        );
    }

    /// Expected strings are Go 1.25's `json.Marshal(float64)` output for the same values.
    #[test]
    fn floats_as_go_encoding_json_writes_a_float64() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "-0"),
            (1000.0, "1000"),
            (-3.0, "-3"),
            (100.5, "100.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e20, "100000000000000000000"),
            (999_999_999_999_999_999_999.0, "1e+21"),
            (1e21, "1e+21"),
            (1e100, "1e+100"),
            (1.797_693_134_862_315_7e308, "1.7976931348623157e+308"),
            (1e-6, "0.000001"),
            (0.000_001_234, "0.000001234"),
            (1e-7, "1e-7"),
            (-1.5e-10, "-1.5e-10"),
            (5e-324, "5e-324"),
            (1e16, "10000000000000000"),
            // Integers past 2^53 are written with the float64's shortest digits, zero-padded.
            (9_007_199_254_740_993.0, "9007199254740992"),
            (9_223_372_036_854_775_807.0, "9223372036854776000"),
            (1.234_567_890_123_456_8e23, "1.2345678901234569e+23"),
        ];
        for (f, want) in cases {
            assert_eq!(go_float64(*f), *want, "{f:e}");
        }
    }

    #[test]
    fn floats_in_serialized_structs_and_json_values_take_go_form() {
        #[derive(serde::Serialize)]
        struct P {
            order: f64,
            small: f64,
            n: u64,
        }
        assert_eq!(
            serialize(&P {
                order: 1e21,
                small: 1e-7,
                n: 9_223_372_036_854_775_807
            }),
            Bytes::from_static(br#"{"order":1e+21,"small":1e-7,"n":9223372036854775807}"#)
        );
        // JSON integers stay as written (an int field's value); JSON floats get Go's form.
        let v: Value = serde_json::from_str("[1e21, 1e-7, 1.0e2, 12345678901234567890]").unwrap();
        assert_eq!(go(v, &Shape::Any), "[1e+21,1e-7,100,12345678901234567890]");
    }

    #[test]
    fn as_numbers_are_written_as_numbers() {
        static PEER: Shape = Shape::Struct(&[f("asNumber", &Shape::AsNumber, Omit::IfNull)]);
        for (input, want) in [
            (json!(64512), "64512"),
            (json!("64512"), "64512"),
            (json!("1.10"), "65546"),
            (json!("65535.65535"), "4294967295"),
            (json!("4294967295"), "4294967295"),
            // Not an AS number (Go's decoder would refuse the object): left as it is.
            (json!("+1"), r#""+1""#),
            (json!("1.65536"), r#""1.65536""#),
        ] {
            assert_eq!(
                go(json!({ "asNumber": input }), &PEER),
                format!(r#"{{"asNumber":{want}}}"#)
            );
        }
    }

    #[test]
    fn serialized_structs_keep_their_order_and_get_go_escaping() {
        #[derive(serde::Serialize)]
        struct S {
            z: &'static str,
            a: u8,
        }
        assert_eq!(
            serialize(&S { z: "x && y", a: 1 }),
            Bytes::from_static(br#"{"z":"x \u0026\u0026 y","a":1}"#)
        );
    }

    #[test]
    fn object_meta_writes_a_missing_creation_timestamp_as_null() {
        assert_eq!(
            go(
                json!({"name": "x", "labels": {}, "generation": 3}),
                &OBJECT_META
            ),
            r#"{"name":"x","generation":3,"creationTimestamp":null}"#
        );
    }
}
