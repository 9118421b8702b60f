#!/usr/bin/env python3
"""make_io_fixtures.py — writes tests/fixtures/io/ref.safetensors by hand with
struct + json only (no torch, no safetensors package, no ds4 code), so that
tests/test_io_safetensors.c checks the C reader against an independent writer.

Usage: python3 tools/make_io_fixtures.py [out_dir]   (default tests/fixtures/io)

The expected values below are repeated in test_io_safetensors.c (ref_* tables);
change both together.
"""
import json
import os
import struct
import sys


def bf16_bits(x):
    """bfloat16 = top 16 bits of the float32 (values below are exact in bf16)."""
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "io")
    os.makedirs(out_dir, exist_ok=True)

    # name -> (dtype, shape, raw little-endian bytes)
    tensors = {}
    f32 = [0.5, -1.25, 3.0, 1e-3, -7.5e5, 42.0]                    # (2, 3)
    tensors["model.embed_tokens.weight"] = ("F32", [2, 3], struct.pack("<6f", *f32))
    f16 = [1.0, -2.0, 0.5, 65504.0]                                # (4,)
    tensors["half"] = ("F16", [4], struct.pack("<4e", *f16))
    bf = [1.0, -3.5, 0.15625]                                      # (3, 1)
    tensors["brain"] = ("BF16", [3, 1], struct.pack("<3H", *[bf16_bits(v) for v in bf]))
    tensors["scalar"] = ("F64", [], struct.pack("<d", 2.718281828459045))
    tensors["ids"] = ("I32", [2, 2], struct.pack("<4i", 7, -8, 2147483647, -2147483648))
    tensors["big"] = ("I64", [2], struct.pack("<2q", 1 << 40, -(1 << 62)))
    tensors["bytes"] = ("U8", [5], bytes([0, 1, 127, 128, 255]))
    tensors["signed"] = ("I8", [3], struct.pack("<3b", -128, 0, 127))
    tensors["shorts"] = ("I16", [2], struct.pack("<2h", -32768, 12345))
    tensors["mask"] = ("BOOL", [2, 2], bytes([1, 0, 0, 1]))
    tensors["empty"] = ("F32", [0, 3], b"")
    tensors["wéird \"name\"\t"] = ("F32", [1], struct.pack("<f", -0.0))

    # Lay the data out in an order different from the header's (reverse), to
    # check that the reader follows data_offsets rather than header order.
    header = {"__metadata__": {"format": "pt", "source": "make_io_fixtures.py"}}
    data = b""
    offsets = {}
    for name in reversed(list(tensors)):
        raw = tensors[name][2]
        offsets[name] = [len(data), len(data) + len(raw)]
        data += raw
    for name, (dtype, shape, _) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets[name]}
    text = json.dumps(header, ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)

    path = os.path.join(out_dir, "ref.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)
    print(f"wrote {path}: {len(tensors)} tensors, header {len(text)} bytes, data {len(data)} bytes")


if __name__ == "__main__":
    main()
