//! gob type definitions: the `wireType` messages that tell a decoder what a type id means.
//!
//! A definition message is `-id` followed by a `wireType` value. `wireType` and the structs it
//! holds are gob's own built-in types, so their fields go by number, not by name:
//! `wireType{ArrayT 0, SliceT 1, StructT 2, MapT 3, GobEncoderT 4, BinaryMarshalerT 5,
//! TextMarshalerT 6}`, each a struct whose field 0 is `CommonType{Name 0, Id 1}`;
//! `sliceType.Elem 1`, `arrayType.Elem 1, Len 2`, `mapType.Key 1, Elem 2`,
//! `structType.Field 1` (a slice of `fieldType{Name 0, Id 1}`).

use super::error::TyphaCodecError;
use super::wire::{put_bytes, put_int, put_uint, Reader};

/// What a user type id stands for, as far as decoding needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireType {
    Struct {
        fields: Vec<(String, i64)>,
    },
    Slice {
        elem: i64,
    },
    Array {
        elem: i64,
    },
    Map {
        key: i64,
        elem: i64,
    },
    /// GobEncoder, BinaryMarshaler or TextMarshaler: a length-prefixed byte string.
    External,
}

/// A definition as the server and client encoders write it.
pub(crate) enum TypeDef<'a> {
    Struct {
        name: &'a str,
        fields: &'a [(&'a str, i64)],
    },
    Slice {
        name: &'a str,
        elem: i64,
    },
    GobEncoder {
        name: &'a str,
    },
}

fn put_common_type(out: &mut Vec<u8>, name: &str, id: i64) {
    // CommonType{Name, Id}; the name is never empty here, the id never zero.
    put_uint(out, 1);
    put_bytes(out, name.as_bytes());
    put_uint(out, 1);
    put_int(out, id);
    put_uint(out, 0);
}

/// Appends one complete definition message (length prefix included) for type `id`.
pub(crate) fn write_definition(out: &mut Vec<u8>, id: i64, def: &TypeDef<'_>) {
    let mut body = Vec::with_capacity(128);
    put_int(&mut body, -id);
    write_wire_type(&mut body, id, def);
    put_uint(out, body.len() as u64);
    out.extend_from_slice(&body);
}

/// Appends the `wireType` value describing type `id`.
pub(crate) fn write_wire_type(body: &mut Vec<u8>, id: i64, def: &TypeDef<'_>) {
    match def {
        TypeDef::Struct { name, fields } => {
            put_uint(body, 3); // wireType.StructT (field 2)
            put_uint(body, 1); // structType.CommonType
            put_common_type(body, name, id);
            if !fields.is_empty() {
                put_uint(body, 1); // structType.Field
                put_uint(body, fields.len() as u64);
                for (fname, fid) in fields.iter() {
                    put_uint(body, 1);
                    put_bytes(body, fname.as_bytes());
                    put_uint(body, 1);
                    put_int(body, *fid);
                    put_uint(body, 0);
                }
            }
            put_uint(body, 0); // end structType
        }
        TypeDef::Slice { name, elem } => {
            put_uint(body, 2); // wireType.SliceT (field 1)
            put_uint(body, 1);
            put_common_type(body, name, id);
            put_uint(body, 1); // sliceType.Elem
            put_int(body, *elem);
            put_uint(body, 0);
        }
        TypeDef::GobEncoder { name } => {
            put_uint(body, 5); // wireType.GobEncoderT (field 4)
            put_uint(body, 1);
            put_common_type(body, name, id);
            put_uint(body, 0);
        }
    }
    put_uint(body, 0); // end wireType
}

/// Reads the fields of a struct encoded by field number, calling `f` with each field number.
/// Field numbers at or above `n_fields` are an error, as in Go's decoder for a known type.
fn read_numbered_struct<'a>(
    r: &mut Reader<'a>,
    n_fields: u64,
    mut f: impl FnMut(u64, &mut Reader<'a>) -> Result<(), TyphaCodecError>,
) -> Result<(), TyphaCodecError> {
    let mut field: i64 = -1;
    loop {
        let delta = r.read_uint()?;
        if delta == 0 {
            return Ok(());
        }
        if delta > n_fields {
            return Err(TyphaCodecError::Malformed("field number out of range"));
        }
        field += delta as i64;
        if field as u64 >= n_fields {
            return Err(TyphaCodecError::Malformed("field number out of range"));
        }
        f(field as u64, r)?;
    }
}

/// Reads `CommonType`; the name is skipped (decoding never depends on it), the id returned.
fn read_common_type(r: &mut Reader<'_>) -> Result<i64, TyphaCodecError> {
    let mut id = 0;
    read_numbered_struct(r, 2, |f, r| {
        match f {
            0 => {
                r.read_bytes()?;
            }
            _ => id = r.read_int()?,
        }
        Ok(())
    })?;
    Ok(id)
}

/// Parses the `wireType` value of a definition message.
pub(crate) fn read_wire_type(r: &mut Reader<'_>) -> Result<WireType, TyphaCodecError> {
    let mut result: Option<WireType> = None;
    read_numbered_struct(r, 7, |which, r| {
        if result.is_some() {
            return Err(TyphaCodecError::Malformed(
                "wireType with more than one kind",
            ));
        }
        let wt = match which {
            0 => {
                let mut elem = 0;
                read_numbered_struct(r, 3, |f, r| {
                    match f {
                        0 => {
                            read_common_type(r)?;
                        }
                        1 => elem = r.read_int()?,
                        _ => {
                            r.read_int()?;
                        }
                    }
                    Ok(())
                })?;
                WireType::Array { elem }
            }
            1 => {
                let mut elem = 0;
                read_numbered_struct(r, 2, |f, r| {
                    match f {
                        0 => {
                            read_common_type(r)?;
                        }
                        _ => elem = r.read_int()?,
                    }
                    Ok(())
                })?;
                WireType::Slice { elem }
            }
            2 => {
                let mut fields = Vec::new();
                read_numbered_struct(r, 2, |f, r| {
                    match f {
                        0 => {
                            read_common_type(r)?;
                        }
                        _ => {
                            let n = r.read_count()?;
                            for _ in 0..n {
                                let mut name = String::new();
                                let mut id = 0;
                                read_numbered_struct(r, 2, |f, r| {
                                    match f {
                                        0 => name = r.read_string()?,
                                        _ => id = r.read_int()?,
                                    }
                                    Ok(())
                                })?;
                                fields.push((name, id));
                            }
                        }
                    }
                    Ok(())
                })?;
                WireType::Struct { fields }
            }
            3 => {
                let (mut key, mut elem) = (0, 0);
                read_numbered_struct(r, 3, |f, r| {
                    match f {
                        0 => {
                            read_common_type(r)?;
                        }
                        1 => key = r.read_int()?,
                        _ => elem = r.read_int()?,
                    }
                    Ok(())
                })?;
                WireType::Map { key, elem }
            }
            _ => {
                read_numbered_struct(r, 1, |_, r| read_common_type(r).map(|_| ()))?;
                WireType::External
            }
        };
        result = Some(wt);
        Ok(())
    })?;
    result.ok_or(TyphaCodecError::Malformed("empty wireType"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::typha::wire::T_INT;

    /// The `Point{X, Y int}` definition from Go's `encoding/gob` package documentation.
    #[test]
    fn struct_definition_matches_the_gob_documentation_example() {
        let mut out = Vec::new();
        write_definition(
            &mut out,
            65,
            &TypeDef::Struct {
                name: "Point",
                fields: &[("X", T_INT), ("Y", T_INT)],
            },
        );
        let want: &[u8] = &[
            0x1f, 0xff, 0x81, 0x03, 0x01, 0x01, 0x05, 0x50, 0x6f, 0x69, 0x6e, 0x74, 0x01, 0xff,
            0x82, 0x00, 0x01, 0x02, 0x01, 0x01, 0x58, 0x01, 0x04, 0x00, 0x01, 0x01, 0x59, 0x01,
            0x04, 0x00, 0x00, 0x00,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn definitions_parse_back() {
        let mut out = Vec::new();
        write_definition(
            &mut out,
            70,
            &TypeDef::Slice {
                name: "[]x",
                elem: 71,
            },
        );
        write_definition(&mut out, 71, &TypeDef::GobEncoder { name: "Time" });
        write_definition(
            &mut out,
            72,
            &TypeDef::Struct {
                name: "Empty",
                fields: &[],
            },
        );
        let mut r = Reader::new(&out);
        let mut got = Vec::new();
        while r.remaining() > 0 {
            let len = r.read_uint().unwrap() as usize;
            let mut m = Reader::new(r.take(len).unwrap());
            let id = -m.read_int().unwrap();
            got.push((id, read_wire_type(&mut m).unwrap()));
            assert_eq!(m.remaining(), 0);
        }
        assert_eq!(
            got,
            vec![
                (70, WireType::Slice { elem: 71 }),
                (71, WireType::External),
                (72, WireType::Struct { fields: vec![] }),
            ]
        );
    }
}
