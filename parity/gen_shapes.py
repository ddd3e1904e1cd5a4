#!/usr/bin/env python3
"""Generates src/datastore/k8s/translate/go_shapes.rs: the JSON member order and omitempty rules
of the Go structs Typha marshals raw v3 and Kubernetes values from.

Go's encoding/json writes a struct's members in declaration order, drops fields the struct does
not declare, writes a non-omitempty zero field as its zero value and leaves an omitempty one
out. typha-rs holds objects as JSON maps, so it needs each struct's declarations as data; this
script reads them from the Go sources of the exact versions Calico v3.32.1 builds against:

    python3 parity/gen_shapes.py CALICO_DIR K8S_API_DIR > src/datastore/k8s/translate/go_shapes.rs
    cargo fmt --all

CALICO_DIR is a checkout of projectcalico/calico at v3.32.1 (`git archive v3.32.1 api
libcalico-go`), K8S_API_DIR one of kubernetes/api at the version its go.mod pins (v0.35.6; only
core/v1/types.go and discovery/v1/types.go are read).
"""

import os
import re
import sys

BASIC = {"string", "bool", "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16",
         "uint32", "uint64", "float32", "float64", "byte"}


def parse(paths):
    structs, aliases = {}, {}
    for path in paths:
        with open(path) as f:
            lines = f.read().split("\n")
        i = 0
        while i < len(lines):
            line = lines[i]
            m = re.match(r'^type (\w+) struct \{', line)
            if m:
                name, fields, depth = m.group(1), [], 1
                i += 1
                while i < len(lines) and depth > 0:
                    l = lines[i].split("//")[0] if "`" not in lines[i] else lines[i]
                    if l.strip().startswith("//"):
                        i += 1
                        continue
                    depth += l.count("{") - l.count("}")
                    if depth == 1 and "`" in l:
                        head, tag = l.split("`", 1)
                        toks = head.split()
                        if len(toks) == 1:
                            fname, ftype = toks[0].lstrip("*").split(".")[-1], toks[0]
                        elif len(toks) == 2:
                            fname, ftype = toks
                        else:
                            toks = []
                        if toks:
                            jm = re.search(r'json:"([^"]*)"', tag)
                            parts = (jm.group(1) if jm else fname).split(",")
                            jname = parts[0]
                            if not (jname == "-" and len(parts) == 1):
                                inline = "inline" in parts[1:] or (len(toks) == 1 and jname == "")
                                fields.append((fname, ftype, jname or fname,
                                               "omitempty" in parts[1:], inline))
                    elif depth == 1:
                        toks = l.split()
                        if len(toks) == 2 and re.match(r'^[A-Z]\w*$', toks[0]):
                            fields.append((toks[0], toks[1], toks[0], False, False))
                    i += 1
                structs.setdefault(name, fields)
                continue
            m = re.match(r'^type (\w+) (\*?[\w\.\[\]]+)\s*$', line)
            if m and m.group(2) != "struct":
                aliases.setdefault(m.group(1), m.group(2))
            i += 1
    return structs, aliases


class Gen:
    def __init__(self, structs, aliases, prefix):
        self.structs, self.aliases, self.prefix = structs, aliases, prefix
        self.out, self.done = [], {}
        self.external = {}

    def shape(self, t):
        """A Rust expression for the shape of Go type t, and its zero JSON (None: not emitted)."""
        t = t.strip()
        if t.startswith("*"):
            s, _, _ = self.shape(t[1:])
            return s, "null", "nil"
        if t.startswith("[]"):
            if t == "[]byte":
                return "&Shape::Any", "null", "empty"
            s, _, _ = self.shape(t[2:])
            return f"&Shape::List({s})", "null", "empty"
        m = re.match(r'^map\[[^\]]+\](.*)$', t)
        if m:
            s, _, _ = self.shape(m.group(1))
            return f"&Shape::Map({s})", "null", "empty"
        if t in BASIC:
            return "&Shape::Any", ('""' if t == "string" else "false" if t == "bool" else "0"), "zero"
        if t in ("metav1.Duration",):
            return "&Shape::Duration", '"0s"', "never"
        if t in ("numorstring.ASNumber",):
            # Read from a number or a string, written as a number.
            return "&Shape::AsNumber", "0", "zero"
        if t in ("metav1.Time", "metav1.MicroTime"):
            return "&Shape::Any", "null", "never"
        if t in ("metav1.ObjectMeta", "ObjectMeta"):
            return "&OBJECT_META", None, "never"
        if "." in t and t.split(".")[0] in self.external:
            # A Kubernetes struct inside a Calico type (k8sv1.SecretKeySelector): Go writes it
            # by its own declaration, so it gets a shape too (with the structs it inlines).
            table = self.external[t.split(".")[0]]
            base = t.split(".")[-1]
            pending = [base]
            while pending:
                b = pending.pop()
                if b in table and b not in self.structs:
                    self.structs[b] = table[b]
                    pending.extend(f[1].lstrip("*") for f in table[b] if f[4])
        base = t.split(".")[-1] if t.startswith(self.prefix) else t
        if base in self.structs:
            name = self.struct(base)
            return f"&{name}", self.zero(base), "never"
        if base in self.aliases:
            return self.shape(self.aliases[base])
        # External types with custom marshalling (numorstring, intstr, resource.Quantity):
        # passed through as they are.
        return "&Shape::Any", None, "zero"

    def zero(self, base):
        parts = []
        for fname, ftype, jname, omit, inline in self.structs[base]:
            if inline:
                continue
            _, z, kind = self.shape(ftype)
            if omit and kind != "never":
                continue
            if z is None:
                continue
            parts.append(f'"{jname}":{z}')
        return "{" + ",".join(parts) + "}"

    def struct(self, base):
        ident = re.sub(r'(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])', '_', base).upper()
        if base in self.done:
            return self.done[base]
        self.done[base] = ident
        rows = []
        for fname, ftype, jname, omit, inline in self.structs[base]:
            if inline:
                if ftype.endswith("TypeMeta"):
                    rows.append('    Field { name: "kind", shape: &Shape::Any, omit: Omit::IfZero, zero: None },')
                    rows.append('    Field { name: "apiVersion", shape: &Shape::Any, omit: Omit::IfZero, zero: None },')
                    continue
                inner = ftype.lstrip("*").split(".")[-1]
                if inner in self.structs:
                    sub = self.struct(inner)
                    rows.append(f"    // inline {inner}")
                    rows.extend(self.inline_rows(inner))
                continue
            s, z, kind = self.shape(ftype)
            om = {"nil": "IfNull", "empty": "IfEmpty", "zero": "IfZero", "never": "Never"}[kind] if omit else "Never"
            zl = "None" if (z is None or omit and kind != "never") else "Some(" + rust_str(z) + ")"
            rows.append(f'    Field {{ name: "{jname}", shape: {s}, omit: Omit::{om}, zero: {zl} }},')
        self.out.append(f"pub(crate) static {ident}: Shape = Shape::Struct(&[\n" + "\n".join(rows) + "\n]);\n")
        return ident

    def inline_rows(self, base):
        rows = []
        for fname, ftype, jname, omit, inline in self.structs[base]:
            s, z, kind = self.shape(ftype)
            om = {"nil": "IfNull", "empty": "IfEmpty", "zero": "IfZero", "never": "Never"}[kind] if omit else "Never"
            zl = "None" if (z is None or omit and kind != "never") else "Some(" + rust_str(z) + ")"
            rows.append(f'    Field {{ name: "{jname}", shape: {s}, omit: Omit::{om}, zero: {zl} }},')
        return rows


def rust_str(s):
    return "r#\"" + s + "\"#"


def main():
    calico, k8s = sys.argv[1], sys.argv[2]
    v3dir = os.path.join(calico, "api/pkg/apis/projectcalico/v3")
    v3 = [os.path.join(v3dir, f) for f in sorted(os.listdir(v3dir))
          if f.endswith(".go") and not f.endswith("_test.go") and not f.startswith("zz_")]
    internal = [os.path.join(calico, "libcalico-go/lib/apis/internalapi", f)
                for f in ("node.go", "livemigration.go")]
    structs, aliases = parse(internal + v3)
    print("// @generated by parity/gen_shapes.py from Calico v3.32.1 (api/pkg/apis/projectcalico/v3,")
    print("// libcalico-go/lib/apis/internalapi/{node,livemigration}.go) and k8s.io/api v0.35.6")
    print("// (core/v1, discovery/v1).")
    print("// Do not edit by hand: rerun the script (see its header).")
    print("#![allow(clippy::all, dead_code)]")
    print("use super::gojson::{Field, Omit, Shape, OBJECT_META};\n")
    g = Gen(structs, aliases, "")
    core, _ = parse([os.path.join(k8s, "core/v1/types.go")])
    g.external = {"k8sv1": core}
    roots = ["Node", "LiveMigration", "Profile", "BGPConfiguration", "BGPPeer", "BGPFilter", "CalicoNodeStatus",
             "ClusterInformation",
             "FelixConfiguration"]
    for r in roots:
        g.struct(r)
    # discovery/v1 first: on a name both packages declare (EndpointPort), the first parse wins,
    # and the only root using such a name is EndpointSlice.
    kstructs, kaliases = parse([os.path.join(k8s, "discovery/v1/types.go"),
                                os.path.join(k8s, "core/v1/types.go")])
    gk = Gen(kstructs, kaliases, "")
    gk.done = {}
    for r in ["Service", "EndpointSlice"]:
        gk.struct(r)
    print("\n".join(g.out))
    print("/// Kubernetes types (k8s.io/api v0.35.6).")
    print("pub(crate) mod k8s {")
    print("    use super::super::gojson::{Field, Omit, Shape, OBJECT_META};")
    for block in gk.out:
        print("\n".join("    " + l if l else l for l in block.split("\n")))
    print("}")


if __name__ == "__main__":
    main()
