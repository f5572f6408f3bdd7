"""ref_gguf.py: the canonical text form of tests/gguf_dump.c, from the PyPI
gguf package's GGUFReader (an independent parser).
  ref_gguf.py dump FILE      print it
  ref_gguf.py write DIR      write v2.gguf and v3.gguf with GGUFWriter: every
                             value type, nested arrays, F32/F16/Q8_0 tensors"""
import sys
import numpy as np
import gguf
from gguf import GGUFValueType as T

NAMES = {T.UINT8: "uint8", T.INT8: "int8", T.UINT16: "uint16", T.INT16: "int16", T.UINT32: "uint32",
         T.INT32: "int32", T.FLOAT32: "float32", T.BOOL: "bool", T.STRING: "string", T.ARRAY: "array",
         T.UINT64: "uint64", T.INT64: "int64", T.FLOAT64: "float64"}


def qstr(b):
    out = ["'"]
    for c in b:
        ch = bytes([c])
        if ch == b"\\": out.append("\\\\")
        elif ch == b"'": out.append("\\'")
        elif ch == b"\n": out.append("\\n")
        elif ch == b"\t": out.append("\\t")
        elif ch == b"\r": out.append("\\r")
        elif c < 0x20 or c == 0x7F: out.append("\\x%02x" % c)
        else: out.append(None); out[-1] = ch
    return b"".join(x if isinstance(x, bytes) else x.encode() for x in out) + b"'"


def walk(parts, i, t):
    """(text bytes, next part index) of the value of type t starting at parts[i]"""
    if t == T.STRING:
        return qstr(parts[i + 1].tobytes()), i + 2
    if t == T.ARRAY:
        et, n = T(int(parts[i][0])), int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(n):
            s, i = walk(parts, i, et)
            items.append(s)
        return b"[" + b", ".join(items) + b"]", i
    v = parts[i][0]
    if t == T.BOOL: s = "true" if v else "false"
    elif t == T.FLOAT32: s = "%.9g" % float(v)
    elif t == T.FLOAT64: s = "%.17g" % float(v)
    else: s = str(int(v))
    return s.encode(), i + 1


def dump(path):
    r = gguf.GGUFReader(path)
    out = sys.stdout.buffer
    ver = int(r.fields["GGUF.version"].parts[0][0])
    align = r.alignment
    out.write(b"version %d\nalignment %d\n" % (ver, align))
    for name, f in r.fields.items():
        if name.startswith("GGUF."): continue
        t = f.types[0]
        tn = NAMES[t] if t != T.ARRAY else "array[%s]" % NAMES[T(int(f.parts[3][0]))]
        s, _ = walk(f.parts, 3, t)
        out.write(b"kv\t" + name.encode() + b"\t" + tn.encode() + b"\t" + s + b"\n")
    for t in r.tensors:
        b = np.asarray(r.data[t.data_offset:t.data_offset + t.n_bytes]).astype(np.uint64)
        w = np.arange(len(b), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        h = int((b * w).sum(dtype=np.uint64))
        shape = ",".join(str(int(x)) for x in t.shape)
        out.write(("tensor\t%s\t%d\t%s\t%d\t%d\t%016x\n" % (t.name, int(t.tensor_type), shape, t.data_offset, t.n_bytes, h)).encode())


def write(d):
    rng = np.random.default_rng(0)
    for ver in (2, 3):
        gguf.gguf_writer.GGUF_VERSION = ver   # v2 and v3 share the layout on little-endian
        w = gguf.GGUFWriter("%s/v%d.gguf" % (d, ver), "llama")
        w.add_uint8("t.u8", 255); w.add_int8("t.i8", -128); w.add_uint16("t.u16", 65535)
        w.add_int16("t.i16", -32768); w.add_uint32("t.u32", 4294967295); w.add_int32("t.i32", -2147483648)
        w.add_float32("t.f32", 3.14159); w.add_bool("t.bool", True); w.add_bool("t.false", False)
        w.add_string("t.str", "caf\u00e9 'q' \\ \n\t\x01 \u4e2d")
        w.add_string("t.empty", "")
        w.add_uint64("t.u64", 2**64 - 1); w.add_int64("t.i64", -2**63); w.add_float64("t.f64", 1 / 3)
        w.add_float32("t.inf", float("inf"))
        w.add_array("t.arr_i32", [1, -2, 3]); w.add_array("t.arr_f32", [0.5, -1.25])
        w.add_array("t.arr_str", ["a", "", "b'c"]); w.add_array("t.arr_bool", [True, False])
        w.add_array("t.nested", [[1, 2], [3], [4, 5, 6]])
        w.add_array("t.nested_str", [["x", "y"], ["z"]])
        w.add_array("t.nested3", [[[1], [2, 3]], [[4]]])
        w.add_tensor("f32", rng.standard_normal((3, 8)).astype(np.float32))
        w.add_tensor("f16", rng.standard_normal((2, 5)).astype(np.float16))
        q = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("q8_0", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("scalar_row", np.arange(7, dtype=np.float32))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


if __name__ == "__main__":
    (dump if sys.argv[1] == "dump" else write)(sys.argv[2])
