#!/usr/bin/env python3
"""test_gguf_py.py - check common/gguf.c and common/gguf_quants.c against the gguf Python package.

Writes a GGUF file with gguf.GGUFWriter holding metadata of every value type and, for every
tensor type we dequantize, random blocks (scale fields set to finite float16 values of all
magnitudes, subnormals included) next to their float32 dequantization by gguf.quants.dequantize
(tensor NAME.ref). Where the package can quantize (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16) a second
tensor holds quantized random floats. Then runs the C checker (tests/gguf_pyref.c), which must
reproduce every reference bit for bit, and compares its metadata dump with what was written.

usage: test_gguf_py.py PATH/TO/gguf_pyref      (exit 77 when numpy or gguf is not installed)
"""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as T, GGUFValueType as V
except ImportError as e:  # pragma: no cover
    print(f"skip: {e} (pip install gguf numpy)")
    sys.exit(77)

rng = np.random.default_rng(20261207)

# byte offsets of the float16 scale fields inside one block, per type
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16]


def random_f16(n):
    """Finite float16 values, log-uniform from 2^-24 (subnormal) to 2^15, both signs, some zeros."""
    mag = np.exp2(rng.uniform(-24, 15, n))
    v = (mag * rng.choice([-1.0, 1.0], n)).astype(np.float16)
    v[rng.random(n) < 0.02] = 0
    assert np.isfinite(v).all()
    return v


def random_blocks(qt, rows, cols):
    """[rows, cols/block*bytes] uint8: random bits with finite scale fields."""
    blk, nb = gguf.GGML_QUANT_SIZES[qt]
    n_blocks = rows * cols // blk
    raw = rng.integers(0, 256, (n_blocks, nb), dtype=np.uint8)
    for off in F16_FIELDS[qt]:
        raw[:, off:off + 2] = random_f16(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // blk * nb)


def tensors():
    """(name, raw array, qtype, float32 reference or None)"""
    rows, cols = 3, 512
    out = []
    for qt in F16_FIELDS:
        raw = random_blocks(qt, rows, cols)
        out.append((f"rand_{qt.name}", raw, qt))
    for qt in QUANTIZABLE:
        x = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 10)).astype(np.float32)
        x[0, :32] = 0  # an all-zero block
        out.append((f"quant_{qt.name}", gguf.quants.quantize(x, qt), qt))
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    out.append(("plain_F32", x, T.F32))
    out.append(("plain_F16", random_f16(rows * cols).reshape(rows, cols), T.F16))
    return [(n, a, qt, gguf.quants.dequantize(a, qt).astype(np.float32)) for n, a, qt in out]


def hexs(b):
    return b.hex() if b else "-"


def expected_kv():
    """(key, vtype, value, sub_type) written and the dump line each must give."""
    kvs = [
        ("t.u8", V.UINT8, 200), ("t.i8", V.INT8, -100), ("t.u16", V.UINT16, 60000), ("t.i16", V.INT16, -30000),
        ("t.u32", V.UINT32, 4000000000), ("t.i32", V.INT32, -2000000000), ("t.f32", V.FLOAT32, 0.1),
        ("t.bool", V.BOOL, True), ("t.str", V.STRING, "h\u00e9llo \u2581world"), ("t.u64", V.UINT64, 2**63 - 5),
        ("t.i64", V.INT64, -(2**62)), ("t.f64", V.FLOAT64, 1e-300),
        ("t.arr_i32", V.ARRAY, [1, -2, 3]), ("t.arr_f32", V.ARRAY, [0.5, -1.25]),
        ("t.arr_str", V.ARRAY, ["a", "", "\u00fc\n"]), ("t.arr_bool", V.ARRAY, [True, False]),
    ]
    lines = {}
    for key, vt, val in kvs:
        if vt == V.ARRAY:
            et, vals = V.get_type(val[0]), val
        else:
            et, vals = vt, [val]
        if et == V.STRING:
            body = [hexs(s.encode()) for s in vals]
        elif et == V.FLOAT32:
            body = ["%.9g" % float(np.float32(v)) for v in vals]
        elif et == V.FLOAT64:
            body = ["%.17g" % v for v in vals]
        else:
            body = [str(int(v)) for v in vals]
        lines[key] = f"kv {key} {int(vt)} {int(et)} {len(vals)} " + " ".join(body)
    return kvs, lines


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    checker = sys.argv[1]
    kvs, want_kv = expected_kv()
    ts = tensors()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.gguf")
        w = gguf.GGUFWriter(path, arch="testarch")
        for key, vt, val in kvs:
            if vt == V.ARRAY:
                w.add_array(key, val)
            else:
                w.add_key_value(key, val, vt)
        for name, raw, qt, ref in ts:
            w.add_tensor(name, raw, raw_dtype=qt)
            w.add_tensor(name + ".ref", ref)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        # what the package reads back must match what our reader sees
        rd = gguf.GGUFReader(path)
        r = subprocess.run([checker, path], capture_output=True, text=True)
    out = r.stdout.splitlines()
    print("\n".join(out[-40:]))
    if r.returncode != 0:
        print(f"FAIL: checker exited {r.returncode}: {r.stderr.strip()}")
        return 1
    got = {ln.split()[1]: ln for ln in out if ln.startswith("kv ")}
    bad = 0
    for key, line in want_kv.items():
        if got.get(key) != line:
            print(f"FAIL: metadata {key}:\n  got  {got.get(key)}\n  want {line}")
            bad += 1
    if got.get("general.architecture") != "kv general.architecture 8 8 1 " + hexs(b"testarch"):
        print("FAIL: general.architecture", got.get("general.architecture"))
        bad += 1
    tens = {ln.split()[1]: ln.split()[2:] for ln in out if ln.startswith("tensor ")}
    for t in rd.tensors:
        want = [t.tensor_type.name] + [str(int(x)) for x in t.shape]
        if tens.get(t.name) != want:
            print(f"FAIL: tensor {t.name}: got {tens.get(t.name)}, want {want}")
            bad += 1
    ok = {ln.split()[1] for ln in out if ln.startswith("dequant ") and ln.endswith(" ok")}
    for name, _, qt, _ in ts:
        if name not in ok:
            print(f"FAIL: {name} ({qt.name}) was not checked")
            bad += 1
    print(f"{len(ok)} dequantized tensors bit-exact, {len(want_kv)} metadata entries, {len(tens)} tensors: "
          + ("PASS" if not bad else f"{bad} FAILURES"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
