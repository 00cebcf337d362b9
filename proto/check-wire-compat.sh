#!/usr/bin/env bash
# Check that berth's CRI definition (proto/proto/cri/v1/api.proto) is
# wire-compatible with an upstream k8s.io/cri-api api.proto.
#
# Usage: proto/check-wire-compat.sh [UPSTREAM_API_PROTO]
#   default: the k8s.io/cri-api@v0.37.0 copy in the Go module cache.
#
# Both files are compiled with protoc into descriptor sets, decoded to text
# against descriptor.proto, and reduced by a python3 (stdlib only) filter to a
# sorted dump of: package; services and methods (input/output types, client and
# server streaming); messages (recursively, including nested types and map
# entries) with every field's name, number, label, type, type_name, json name,
# oneof index and proto3_optional; oneof names; enums with value names/numbers.
# Comments, source info and options (deprecated, debug_redact, go_package, ...)
# are ignored: they do not affect the wire format. Exits non-zero and prints a
# diff on any difference.
#
# Needs: protoc (Debian: protobuf-compiler) with descriptor.proto available,
# and python3.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ours="${here}/proto/cri/v1/api.proto"
upstream="${1:-${HOME}/go/pkg/mod/k8s.io/cri-api@v0.37.0/pkg/apis/runtime/v1/api.proto}"

command -v protoc >/dev/null || { echo "protoc not found (apt-get install protobuf-compiler)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 2; }
[[ -f "$ours" ]] || { echo "missing $ours" >&2; exit 2; }
[[ -f "$upstream" ]] || { echo "missing upstream file $upstream" >&2; exit 2; }

# Locate descriptor.proto for --decode.
desc_inc=""
for d in "${PROTOC_INCLUDE:-}" /usr/include /usr/local/include; do
    if [[ -n "$d" && -f "$d/google/protobuf/descriptor.proto" ]]; then
        desc_inc="$d"
        break
    fi
done
[[ -n "$desc_inc" ]] || { echo "google/protobuf/descriptor.proto not found (set PROTOC_INCLUDE)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Copy both files under the same name so the file-level descriptor names match.
# Older protoc (< 22) does not know the `debug_redact` field option upstream
# uses; options are not compared, so drop it from the upstream copy.
mkdir -p "$work/ours" "$work/upstream"
cp "$ours" "$work/ours/api.proto"
python3 - "$upstream" "$work/upstream/api.proto" <<'PY'
import re, sys
src = open(sys.argv[1], encoding="utf-8").read()
# `[debug_redact = true]` alone, or as one entry of an option list.
src = re.sub(r"\[\s*debug_redact\s*=\s*(true|false)\s*\]", "", src)
src = re.sub(r"debug_redact\s*=\s*(true|false)\s*,\s*", "", src)
src = re.sub(r",\s*debug_redact\s*=\s*(true|false)", "", src)
open(sys.argv[2], "w", encoding="utf-8").write(src)
PY

dump() {
    local side="$1"
    protoc -I"$work/$side" --descriptor_set_out="$work/$side.pb" "$work/$side/api.proto"
    protoc -I"$desc_inc" --decode=google.protobuf.FileDescriptorSet \
        google/protobuf/descriptor.proto <"$work/$side.pb" >"$work/$side.txt"
    python3 - "$work/$side.txt" >"$work/$side.norm" <<'PY'
import sys

# --- parse protobuf text format (as printed by protoc --decode) into dicts ---
def tokenize(text):
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "{}:":
            yield c
            i += 1
        elif c == '"':
            j = i + 1
            buf = []
            while text[j] != '"':
                if text[j] == "\\":
                    buf.append(text[j:j + 2])
                    j += 2
                else:
                    buf.append(text[j])
                    j += 1
            yield ("str", "".join(buf))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{}:":
                j += 1
            yield ("word", text[i:j])
            i = j

def parse(tokens):
    msg = {}
    for tok in tokens:
        if tok == "}":
            return msg
        key = tok[1]
        nxt = next(tokens)
        if nxt == ":":
            val = next(tokens)
            if val == "{":
                val = parse(tokens)
            else:
                val = val[1]
        elif nxt == "{":
            val = parse(tokens)
        else:
            raise SystemExit("unexpected token %r after %r" % (nxt, key))
        msg.setdefault(key, []).append(val)
    return msg

def one(m, k, default=""):
    return m.get(k, [default])[0]

out = []

def enum(prefix, e):
    name = prefix + one(e, "name")
    out.append("enum %s" % name)
    for v in e.get("value", []):
        out.append("enum %s value %s = %s" % (name, one(v, "name"), one(v, "number")))

def message(prefix, m):
    name = prefix + one(m, "name")
    out.append("message %s" % name)
    for f in m.get("field", []):
        attrs = [
            "number=%s" % one(f, "number"),
            "label=%s" % one(f, "label"),
            "type=%s" % one(f, "type"),
            "type_name=%s" % one(f, "type_name"),
            "json_name=%s" % one(f, "json_name"),
            "oneof_index=%s" % one(f, "oneof_index", "-"),
            "proto3_optional=%s" % one(f, "proto3_optional", "false"),
            "extendee=%s" % one(f, "extendee"),
        ]
        out.append("message %s field %s %s" % (name, one(f, "name"), " ".join(attrs)))
    for i, o in enumerate(m.get("oneof_decl", [])):
        out.append("message %s oneof %d %s" % (name, i, one(o, "name")))
    # map<K,V> is an auto-generated nested *Entry message with map_entry set.
    opts = one(m, "options", {})
    if opts and one(opts, "map_entry", "false") == "true":
        out.append("message %s map_entry" % name)
    for r in m.get("reserved_range", []):
        out.append("message %s reserved_range %s-%s" % (name, one(r, "start"), one(r, "end")))
    for r in m.get("reserved_name", []):
        out.append("message %s reserved_name %s" % (name, r))
    for nested in m.get("nested_type", []):
        message(name + ".", nested)
    for e in m.get("enum_type", []):
        enum(name + ".", e)

root = parse(tokenize(open(sys.argv[1], encoding="utf-8").read()))
files = root.get("file", [])
if len(files) != 1:
    raise SystemExit("expected exactly one file in descriptor set, got %d" % len(files))
f = files[0]
pkg = one(f, "package")
out.append("package %s" % pkg)
out.append("syntax %s" % one(f, "syntax", "proto2"))
for d in f.get("dependency", []):
    out.append("dependency %s" % d)
prefix = "." + pkg + "." if pkg else "."
for s in f.get("service", []):
    sname = prefix + one(s, "name")
    out.append("service %s" % sname)
    for meth in s.get("method", []):
        out.append("service %s rpc %s (%s%s) returns (%s%s)" % (
            sname, one(meth, "name"),
            "stream " if one(meth, "client_streaming", "false") == "true" else "",
            one(meth, "input_type"),
            "stream " if one(meth, "server_streaming", "false") == "true" else "",
            one(meth, "output_type")))
for m in f.get("message_type", []):
    message(prefix, m)
for e in f.get("enum_type", []):
    enum(prefix, e)
for x in f.get("extension", []):
    out.append("extension %s" % one(x, "name"))
print("\n".join(sorted(out)))
PY
}

dump ours
dump upstream

count() { grep -c "$1" "$2" || true; }
for side in ours upstream; do
    printf '%-8s services=%s rpcs=%s streaming_rpcs=%s messages=%s fields=%s enums=%s enum_values=%s\n' \
        "$side" \
        "$(grep -Ec '^service [^ ]+$' "$work/$side.norm" || true)" \
        "$(count ' rpc ' "$work/$side.norm")" \
        "$(count 'returns (stream ' "$work/$side.norm")" \
        "$(grep -Ec '^message [^ ]+$' "$work/$side.norm" || true)" \
        "$(count ' field ' "$work/$side.norm")" \
        "$(grep -Ec '^enum [^ ]+$' "$work/$side.norm" || true)" \
        "$(count ' value ' "$work/$side.norm")"
done

if diff -u --label "upstream ($upstream)" --label "berth ($ours)" \
        "$work/upstream.norm" "$work/ours.norm"; then
    echo "OK: wire-compatible, no differences"
else
    echo "FAIL: descriptor differences above ('-' upstream only, '+' berth only)" >&2
    exit 1
fi
