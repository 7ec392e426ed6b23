#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (corpus/<target>/seed-*) and
dictionaries (dict/<target>.dict). Run once; the files are checked in, and
inputs of findings are added beside the seeds as corpus/<target>/finding-*.

The checkpoint targets read their inputs as edit programs over the
checkpoint fixtures (archive_tree.h): the first byte picks a fixture, so a
one-byte seed is that fixture unedited; the longer seeds edit it.
"""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def fixtures(kind):
    names = []
    base = os.path.join(ROOT, "tests", "fixtures", "checkpoints")
    for v in sorted(os.listdir(base)):
        if not v.startswith("v"):
            continue
        for f in sorted(os.listdir(os.path.join(base, v))):
            if f.endswith(".run.pt") and (("accumulator" in f) == (kind == "accumulator")):
                names.append(v + "/" + f[: -len(".run.pt")])
    return names


rng = random.Random(1)
for target, kind in (("optimizer_checkpoint", "optimizer"), ("accumulator_checkpoint", "accumulator")):
    for i, name in enumerate(fixtures(kind)):
        tag = name.replace("/", "-")
        write(target, tag, bytes([i]))
        for k in range(2):
            write(target, f"{tag}-edits{k}", bytes([i]) + bytes(rng.randrange(256) for _ in range(24)))
for s in range(3):
    for t in range(3):
        write("synchronizer_checkpoint", f"{s}-{t}", bytes([s, t]))
    write("synchronizer_checkpoint", f"{s}-edits", bytes([s, s]) + bytes(rng.randrange(256) for _ in range(16)))


def safetensors(tensors, metadata=None, pad=True):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":"))
    if pad:
        text += " " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
write("safetensors", "f32-bf16-metadata", safetensors(
    [("a", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)), ("b.weight", "BF16", [4], b"\x80\x3f" * 4)], {"format": "pt"}))
write("safetensors", "every-dtype", safetensors([
    ("f64", "F64", [1], struct.pack("<d", 1.5)), ("f16", "F16", [2], b"\x00\x3c\x00\xc0"),
    ("i64", "I64", [1], struct.pack("<q", -7)), ("i32", "I32", [1], struct.pack("<i", 7)),
    ("i16", "I16", [1], struct.pack("<h", 7)), ("i8", "I8", [2], b"\x01\xff"), ("u8", "U8", [3], b"\x00\x7f\xff"),
    ("bool", "BOOL", [2], b"\x00\x01")]))
write("safetensors", "empty-and-scalar", safetensors([("empty", "F32", [0, 4], b""), ("scalar", "F32", [], f32(3))]))
write("safetensors", "no-tensors", safetensors([], {"format": "pt"}))
write("safetensors", "unpadded", safetensors([("x", "F32", [1], f32(1))], pad=False))
write("safetensors", "truncated", safetensors([("x", "F32", [4], f32(1, 2, 3, 4))])[:-3])

with open(os.path.join(ROOT, "examples", "gpt2", "assets", "tiny-gpt2", "config.json")) as f:
    write("config", "tiny-gpt2", f.read())
write("config", "aliases", json.dumps({"vocab_size": 50257, "max_position_embeddings": 1024, "hidden_size": 768,
                                       "num_hidden_layers": 12, "num_attention_heads": 12}))
write("config", "options", json.dumps({"model_type": "gpt2", "vocab_size": 10, "n_positions": 8, "n_embd": 8,
                                       "n_layer": 1, "n_head": 2, "n_inner": 16, "layer_norm_epsilon": 1e-6,
                                       "activation_function": "relu", "tie_word_embeddings": False,
                                       "scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True}))

texts = ["Hello world", "I'm sure they'll've done it 123 times.\n\n  ok", "caf\u00e9 \u65e5\u672c\u8a9e \U0001F600",
         "<|endoftext|>a<|endoftext|>", "tabs\tand\r\nlines   ", ""]
for i, t in enumerate(texts):
    write("tokenizer", f"shipped-{i}", b"\x00" + t.encode())
write("tokenizer", "shipped-invalid-utf8", b"\x00ok \xff\xfe bad \xc3")
vocab = {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120a": 4, "<|endoftext|>": 5}
config = {"added_tokens_decoder": {"5": {"content": "<|endoftext|>"}, "6": {"content": "<pad>"}}}
sep = "\n--8<--\n"
write("tokenizer", "own-files", b"\x01" + sep.join([
    json.dumps(vocab), "#version: 0.2\na b\n\u0120 a\n", json.dumps(config), "ab a<pad>b<|endoftext|>"]).encode())
write("tokenizer", "own-files-no-config", b"\x01" + sep.join([json.dumps(vocab), "a b\n", "", "abab ab"]).encode())

dicts = {
    "safetensors": ['"dtype"', '"shape"', '"data_offsets"', '"__metadata__"', '"F32"', '"F64"', '"F16"', '"BF16"',
                    '"I64"', '"I32"', '"I16"', '"I8"', '"U8"', '"BOOL"', '"format"', '"pt"', '[0,0]', '[]',
                    '18446744073709551615', '9223372036854775807', '-1', '1e400', '{', '}', '[', ']', ':', ','],
    "config": ['"vocab_size"', '"n_positions"', '"n_embd"', '"n_layer"', '"n_head"', '"n_inner"', '"hidden_size"',
               '"max_position_embeddings"', '"num_hidden_layers"', '"num_attention_heads"', '"layer_norm_epsilon"',
               '"activation_function"', '"gelu_new"', '"gelu"', '"relu"', '"silu"', '"tanh"', '"swish"',
               '"tie_word_embeddings"', '"scale_attn_weights"', '"scale_attn_by_inverse_layer_idx"', '"model_type"',
               '"gpt2"', 'null', 'true', 'false', '9223372036854775807', '-9223372036854775808',
               '18446744073709551615', '4611686018427387904', '1e308', '1e400', '-0', '0.0'],
    "tokenizer": ['"<|endoftext|>"', '<|endoftext|>', '"added_tokens_decoder"', '"content"', '#version: 0.2',
                  '\\x0a--8<--\\x0a', '\\xc4\\xa0', '\'s', '\'ll', '2147483647', '2147483648', '-1'],
}
os.makedirs(os.path.join(HERE, "dict"), exist_ok=True)
for target, words in dicts.items():
    with open(os.path.join(HERE, "dict", target + ".dict"), "w") as f:
        for w in words:
            f.write('"' + w.replace('\\"', '"').replace('"', '\\"').replace('\\\\x', '\\x') + '"\n')
print("seeds written")
