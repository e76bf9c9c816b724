"""test_codec_selftest.py -- the suite's own SPOP codec (spop.py) against byte
vectors computed by hand from SPOE.txt 3.1/3.2. No agent involved."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, HERE)

from tcase import case, main  # noqa: E402
import spop as S  # noqa: E402

H = bytes.fromhex

VARINTS = [
    (0, "00"), (1, "01"), (239, "ef"),
    (240, "f000"),                     # first 2-byte value
    (300, "fc03"), (1000, "f82f"),
    (2287, "ff7f"),                    # last 2-byte value
    (2288, "f08000"),                  # first 3-byte value
    (16384, "f0f106"),
    (264431, "ffff7f"),                # last 3-byte value
    (264432, "f0808000"),              # first 4-byte value
    (33818863, "ffffff7f"),            # last 4-byte value
    (33818864, "f080808000"),          # first 5-byte value
    (0xFFFFFFFF, "fff0fefe7e"),
]


@case
def varint_vectors():
    for v, hx in VARINTS:
        assert S.encode_varint(v) == H(hx), (v, S.encode_varint(v).hex(), hx)
        d, pos = S.decode_varint(H(hx) + b"\xaa")
        assert (d, pos) == (v, len(H(hx))), (v, d, pos)


@case
def varint_roundtrip_and_lengths():
    bounds = [(240, 1), (2288, 2), (264432, 3), (33818864, 4), (4328786160, 5)]
    for limit, n in bounds:
        assert len(S.encode_varint(limit - 1)) == n, limit
        assert len(S.encode_varint(limit)) == n + 1, limit
    for v in [0, 239, 240, 241, 4095, 4096, 65535, 65536, 1 << 31, (1 << 32) - 1,
              1 << 32, 1 << 63, S.U64, 123456789012345]:
        e = S.encode_varint(v)
        assert S.decode_varint(e) == (v, len(e)), v
    assert len(S.encode_varint(S.U64)) == 10


@case
def varint_truncated_raises():
    for hx in ["", "f0", "f080", "ff8080", "f5ff"]:
        try:
            S.decode_varint(H(hx))
        except S.DecodeError:
            continue
        raise AssertionError("no error for %s" % hx)


@case
def typed_vectors():
    vec = [
        (S.NULL(), "00"),
        (S.BOOL(True), "11"), (S.BOOL(False), "01"),
        (S.INT32(5), "0205"),
        (S.INT32(-1), "02" + S.encode_varint(S.U64).hex()),
        (S.UINT32(7), "0307"),
        (S.UINT32(300), "03fc03"),
        (S.INT64(-2), "04" + S.encode_varint(S.U64 - 1).hex()),
        (S.UINT64(240), "05f000"),
        (S.IPV4("10.0.0.1"), "060a000001"),
        (S.IPV6("::1"), "07" + "00" * 15 + "01"),
        (S.STR("abc"), "0803616263"),
        (S.STR(""), "0800"),
        (S.BIN(b"\x00\xff"), "090200ff"),
    ]
    for t, hx in vec:
        assert S.encode_typed(t) == H(hx), (t, S.encode_typed(t).hex(), hx)
        d, pos = S.decode_typed(H(hx))
        assert d == t and pos == len(H(hx)), (t, d, pos)
    # flags bits other than TRUE on a non-bool are ignored by the decoder
    assert S.decode_typed(H("1305"))[0] == S.UINT32(5)


@case
def typed_errors():
    for hx in ["0c", "0a00", "0f", "0803ab", "06040000", "02", "03f0"]:
        try:
            S.decode_typed(H(hx))
        except S.DecodeError:
            continue
        raise AssertionError("no error for %s" % hx)


@case
def frame_vectors():
    f = S.notify_frame(1, 2)
    assert f.encode() == H("00000007" "03" "00000001" "01" "02"), f.encode().hex()
    f = S.Frame(S.NOTIFY, S.FIN | S.ABORT, 240, 2288)
    assert f.encode() == H("0000000a" "03" "00000003" "f000" "f08000")
    d = S.decode_frame_body(f.encode()[4:])
    assert (d.type, d.flags, d.stream_id, d.frame_id, d.payload) == \
        (S.NOTIFY, 3, 240, 2288, b"")
    f = S.disconnect_frame(0, "ok")
    assert f.encode() == H("00000021" "02" "00000001" "00" "00"
                           "0b" + b"status-code".hex() + "0300"
                           "07" + b"message".hex() + "08026f6b"), f.encode().hex()


@case
def hello_vector():
    f = S.hello_frame(versions="2.0", max_frame_size=16384, capabilities="")
    exp = (H("01" "00000001" "00" "00")
           + H("12") + b"supported-versions" + H("0803") + b"2.0"
           + H("0e") + b"max-frame-size" + H("03f0f106")
           + H("0c") + b"capabilities" + H("0800"))
    assert f.body() == exp, f.body().hex()
    kv = S.decode_frame_body(f.body()).kv()
    assert kv == [("supported-versions", S.STR("2.0")),
                  ("max-frame-size", S.UINT32(16384)),
                  ("capabilities", S.STR(""))], kv


@case
def message_and_action_vectors():
    m = S.encode_message("m", [("a", S.UINT32(1))])
    assert m == H("016d" "01" "0161" "0301"), m.hex()
    assert S.decode_messages(m + m) == [("m", [("a", S.UINT32(1))])] * 2
    assert S.encode_message("e", []) == H("016500")
    sv = S.encode_set_var("x", S.STR("y"))
    assert sv == H("010302" "0178" "080179"), sv.hex()
    uv = S.encode_unset_var("x")
    assert uv == H("020202" "0178"), uv.hex()
    acts = S.decode_actions(sv + uv)
    assert [(a.kind, a.scope, a.name, a.value) for a in acts] == \
        [(1, 2, b"x", S.STR("y")), (2, 2, b"x", None)]
    assert acts[0].raw == sv and acts[1].raw == uv
    for bad in [H("0103"), H("01030201"), H("0103020178"), H("0902020178")]:
        try:
            S.decode_actions(bad)
        except S.DecodeError:
            continue
        raise AssertionError("no error for %s" % bad.hex())


@case
def kvlist_truncated():
    good = S.encode_kvlist([("k", S.STR("v"))])
    for n in range(1, len(good)):
        try:
            S.decode_kvlist(good[:n])
        except S.DecodeError:
            continue
        raise AssertionError("no error for %s" % good[:n].hex())


main()
