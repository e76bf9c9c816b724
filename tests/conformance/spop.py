"""spop.py -- an independent SPOP codec and a fake-HAProxy client.

Written from HAProxy's doc/SPOE.txt section 3 only (never from spoe/*.c), so
that the conformance suite checks the agent against the specification and not
against itself.

Layout reminders (SPOE.txt 3.1, 3.2):
  varint      Peers encoding (encode_varint/decode_varint below)
  typed data  one byte: type in the low 4 bits, flags in the high 4 bits
              (BOOL true = 0x11, false = 0x01), then the value
  STRING      varint length + bytes (KV names, message names, var names are
              such raw strings, without a type byte)
  frame       4-byte big-endian length, then type (1 byte), flags (4 bytes big
              endian, FIN = bit 0, ABORT = bit 1), stream-id varint, frame-id
              varint, payload
"""
import socket
import struct
import time

# ---------------------------------------------------------------- constants

# frame types
UNSET = 0
HAPROXY_HELLO = 1
HAPROXY_DISCONNECT = 2
NOTIFY = 3
AGENT_HELLO = 101
AGENT_DISCONNECT = 102
ACK = 103

FRAME_NAMES = {UNSET: "UNSET", HAPROXY_HELLO: "HAPROXY-HELLO",
               HAPROXY_DISCONNECT: "HAPROXY-DISCONNECT", NOTIFY: "NOTIFY",
               AGENT_HELLO: "AGENT-HELLO", AGENT_DISCONNECT: "AGENT-DISCONNECT",
               ACK: "ACK"}

# flags
FIN = 0x00000001
ABORT = 0x00000002

# typed data types
T_NULL = 0
T_BOOL = 1
T_INT32 = 2
T_UINT32 = 3
T_INT64 = 4
T_UINT64 = 5
T_IPV4 = 6
T_IPV6 = 7
T_STR = 8
T_BIN = 9
BOOL_TRUE_FLAG = 0x10

TYPE_NAMES = {T_NULL: "NULL", T_BOOL: "BOOL", T_INT32: "INT32",
              T_UINT32: "UINT32", T_INT64: "INT64", T_UINT64: "UINT64",
              T_IPV4: "IPV4", T_IPV6: "IPV6", T_STR: "STR", T_BIN: "BIN"}

# actions and scopes
ACT_SET_VAR = 1
ACT_UNSET_VAR = 2
SCOPE_PROC, SCOPE_SESS, SCOPE_TXN, SCOPE_REQ, SCOPE_RES = 0, 1, 2, 3, 4

# status codes (3.5)
ST_NORMAL = 0
ST_IO = 1
ST_TIMEOUT = 2
ST_TOO_BIG = 3
ST_INVALID = 4
ST_NO_VSN = 5
ST_NO_FRAME_SIZE = 6
ST_NO_CAP = 7
ST_BAD_VSN = 8
ST_BAD_FRAME_SIZE = 9
ST_FRAG_NOT_SUPPORTED = 10

U64 = (1 << 64) - 1


class DecodeError(Exception):
    """The bytes do not follow the SPOP grammar (truncated or invalid)."""


# ---------------------------------------------------------------- varint

def encode_varint(x):
    """Peers varint of an unsigned integer (0 <= x < 2**64)."""
    if x < 0 or x > U64:
        raise ValueError("varint out of range: %r" % x)
    if x < 240:
        return bytes([x])
    out = bytearray([(x | 0xF0) & 0xFF])
    x = (x - 240) >> 4
    while x >= 128:
        out.append((x | 0x80) & 0xFF)
        x = (x - 128) >> 7
    out.append(x)
    return bytes(out)


def decode_varint(buf, pos=0):
    """Decode a varint at buf[pos:]; return (value, new_pos).

    Raises DecodeError when the buffer ends inside the varint."""
    if pos >= len(buf):
        raise DecodeError("truncated varint at %d" % pos)
    b = buf[pos]
    pos += 1
    if b < 240:
        return b, pos
    x = b
    shift = 4
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint at %d" % pos)
        b = buf[pos]
        pos += 1
        x += b << shift
        shift += 7
        if b < 128:
            return x, pos
        if shift > 70:
            raise DecodeError("varint too long")


# ---------------------------------------------------------------- typed data

class Typed:
    """A typed value: type id and Python value.

    NULL: None; BOOL: bool; integers: int; IPV4/IPV6: bytes (4/16);
    STR/BIN: bytes."""
    __slots__ = ("type", "value")

    def __init__(self, type_, value=None):
        self.type = type_
        self.value = value

    def __eq__(self, other):
        return (isinstance(other, Typed) and self.type == other.type
                and self.value == other.value)

    def __hash__(self):
        return hash((self.type, self.value))

    def __repr__(self):
        return "%s(%r)" % (TYPE_NAMES.get(self.type, "T%d" % self.type),
                           self.value)


def NULL():
    return Typed(T_NULL, None)


def BOOL(v):
    return Typed(T_BOOL, bool(v))


def INT32(v):
    assert -(1 << 31) <= v < (1 << 31)
    return Typed(T_INT32, v)


def UINT32(v):
    assert 0 <= v < (1 << 32)
    return Typed(T_UINT32, v)


def INT64(v):
    assert -(1 << 63) <= v < (1 << 63)
    return Typed(T_INT64, v)


def UINT64(v):
    assert 0 <= v <= U64
    return Typed(T_UINT64, v)


def IPV4(b):
    if isinstance(b, str):
        b = socket.inet_pton(socket.AF_INET, b)
    assert len(b) == 4
    return Typed(T_IPV4, bytes(b))


def IPV6(b):
    if isinstance(b, str):
        b = socket.inet_pton(socket.AF_INET6, b)
    assert len(b) == 16
    return Typed(T_IPV6, bytes(b))


def STR(s):
    if isinstance(s, str):
        s = s.encode()
    return Typed(T_STR, bytes(s))


def BIN(b):
    return Typed(T_BIN, bytes(b))


def encode_string(s):
    """A raw SPOP string (varint length + bytes), no type byte."""
    if isinstance(s, str):
        s = s.encode()
    return encode_varint(len(s)) + bytes(s)


def decode_string(buf, pos=0):
    n, pos = decode_varint(buf, pos)
    if pos + n > len(buf):
        raise DecodeError("string of %d bytes past the end at %d" % (n, pos))
    return bytes(buf[pos:pos + n]), pos + n


def encode_typed(t):
    """Encode a Typed value. Signed integers are sent as their 64-bit two's
    complement (a negative INT32 is sign-extended to 64 bits), which is what a
    C (uint64_t) conversion of the signed value gives."""
    ty = t.type
    if ty == T_NULL:
        return b"\x00"
    if ty == T_BOOL:
        return bytes([T_BOOL | (BOOL_TRUE_FLAG if t.value else 0)])
    if ty in (T_INT32, T_INT64):
        return bytes([ty]) + encode_varint(t.value & U64)
    if ty in (T_UINT32, T_UINT64):
        return bytes([ty]) + encode_varint(t.value)
    if ty in (T_IPV4, T_IPV6):
        return bytes([ty]) + t.value
    if ty in (T_STR, T_BIN):
        return bytes([ty]) + encode_string(t.value)
    raise ValueError("cannot encode type %r" % ty)


def _signed(x, bits):
    x &= (1 << bits) - 1
    return x - (1 << bits) if x >> (bits - 1) else x


def decode_typed(buf, pos=0):
    """Decode one typed value at buf[pos:]; return (Typed, new_pos)."""
    if pos >= len(buf):
        raise DecodeError("truncated typed data at %d" % pos)
    b = buf[pos]
    pos += 1
    ty, fl = b & 0x0F, b & 0xF0
    if ty == T_NULL:
        return NULL(), pos
    if ty == T_BOOL:
        return BOOL(fl & BOOL_TRUE_FLAG), pos
    if ty in (T_INT32, T_UINT32, T_INT64, T_UINT64):
        v, pos = decode_varint(buf, pos)
        if ty == T_INT32:
            v = _signed(v, 32)
        elif ty == T_INT64:
            v = _signed(v, 64)
        elif ty == T_UINT32:
            if v >= 1 << 32:
                raise DecodeError("UINT32 out of range: %d" % v)
        elif v > U64:
            raise DecodeError("UINT64 out of range")
        return Typed(ty, v), pos
    if ty in (T_IPV4, T_IPV6):
        n = 4 if ty == T_IPV4 else 16
        if pos + n > len(buf):
            raise DecodeError("truncated address")
        return Typed(ty, bytes(buf[pos:pos + n])), pos + n
    if ty in (T_STR, T_BIN):
        s, pos = decode_string(buf, pos)
        return Typed(ty, s), pos
    raise DecodeError("reserved data type %d" % ty)


# ---------------------------------------------------------------- lists

def encode_kvlist(kvs):
    """kvs: iterable of (name, Typed) (or raw bytes for a pre-encoded value)."""
    out = bytearray()
    for name, val in kvs:
        out += encode_string(name)
        out += val if isinstance(val, (bytes, bytearray)) else encode_typed(val)
    return bytes(out)


def decode_kvlist(buf, pos=0, end=None, count=None):
    """Decode KV pairs until end (or count pairs); return (list, pos).
    Names are returned as str (latin-1 to be lossless)."""
    end = len(buf) if end is None else end
    out = []
    while (pos < end) if count is None else (len(out) < count):
        name, pos = decode_string(buf, pos)
        val, pos = decode_typed(buf, pos)
        out.append((name.decode("latin-1"), val))
    if pos > end:
        raise DecodeError("KV list past end")
    return out, pos


def encode_message(name, args):
    """One message of a NOTIFY: name, nb-args, KV list of args."""
    args = list(args)
    return encode_string(name) + bytes([len(args)]) + encode_kvlist(args)


def encode_messages(msgs):
    return b"".join(encode_message(n, a) for n, a in msgs)


def decode_messages(buf, pos=0):
    out = []
    while pos < len(buf):
        name, pos = decode_string(buf, pos)
        if pos >= len(buf):
            raise DecodeError("missing nb-args")
        n = buf[pos]
        pos += 1
        args, pos = decode_kvlist(buf, pos, count=n)
        out.append((name.decode("latin-1"), args))
    return out


class Action:
    """A decoded action: kind (1 set-var, 2 unset-var, other), scope, name
    (bytes), value (Typed or None), raw (the action's bytes)."""
    __slots__ = ("kind", "nargs", "scope", "name", "value", "raw")

    def __repr__(self):
        k = {1: "set-var", 2: "unset-var"}.get(self.kind, "action%d" % self.kind)
        return "%s(nargs=%d, scope=%d, %r, %r)" % (k, self.nargs, self.scope,
                                                   self.name, self.value)


def decode_actions(buf, pos=0):
    """Decode a LIST-OF-ACTIONS (set-var / unset-var only)."""
    out = []
    while pos < len(buf):
        start = pos
        if pos + 3 > len(buf):
            raise DecodeError("truncated action header")
        a = Action()
        a.kind, a.nargs, a.scope = buf[pos], buf[pos + 1], buf[pos + 2]
        pos += 3
        a.name, pos = decode_string(buf, pos)
        a.value = None
        if a.kind == ACT_SET_VAR:
            if a.nargs != 3:
                raise DecodeError("set-var with %d args" % a.nargs)
            a.value, pos = decode_typed(buf, pos)
        elif a.kind == ACT_UNSET_VAR:
            if a.nargs != 2:
                raise DecodeError("unset-var with %d args" % a.nargs)
        else:
            raise DecodeError("unknown action type %d" % a.kind)
        a.raw = bytes(buf[start:pos])
        out.append(a)
    return out


def encode_set_var(name, val, scope=SCOPE_TXN):
    return bytes([ACT_SET_VAR, 3, scope]) + encode_string(name) + encode_typed(val)


def encode_unset_var(name, scope=SCOPE_TXN):
    return bytes([ACT_UNSET_VAR, 2, scope]) + encode_string(name)


# ---------------------------------------------------------------- frames

class Frame:
    __slots__ = ("type", "flags", "stream_id", "frame_id", "payload")

    def __init__(self, type_, flags=FIN, stream_id=0, frame_id=0, payload=b""):
        self.type = type_
        self.flags = flags
        self.stream_id = stream_id
        self.frame_id = frame_id
        self.payload = bytes(payload)

    def body(self):
        return (bytes([self.type]) + struct.pack(">I", self.flags)
                + encode_varint(self.stream_id) + encode_varint(self.frame_id)
                + self.payload)

    def encode(self):
        b = self.body()
        return struct.pack(">I", len(b)) + b

    def kv(self):
        return decode_kvlist(self.payload)[0]

    def kvdict(self):
        return dict(self.kv())

    def actions(self):
        return decode_actions(self.payload)

    def __repr__(self):
        return "Frame(%s, flags=%#x, sid=%d, fid=%d, payload=%r)" % (
            FRAME_NAMES.get(self.type, str(self.type)), self.flags,
            self.stream_id, self.frame_id, self.payload[:80])


def decode_frame_body(body):
    """Decode a frame body (without the 4-byte length)."""
    if len(body) < 5:
        raise DecodeError("frame of %d bytes has no metadata" % len(body))
    t = body[0]
    flags = struct.unpack(">I", body[1:5])[0]
    sid, pos = decode_varint(body, 5)
    fid, pos = decode_varint(body, pos)
    return Frame(t, flags, sid, fid, body[pos:])


def hello_kv(versions="2.0", max_frame_size=16384, capabilities="pipelining",
             healthcheck=None, engine_id=None, extra=()):
    kv = []
    if versions is not None:
        kv.append(("supported-versions", STR(versions)))
    if max_frame_size is not None:
        kv.append(("max-frame-size", UINT32(max_frame_size)))
    if capabilities is not None:
        kv.append(("capabilities", STR(capabilities)))
    if healthcheck is not None:
        kv.append(("healthcheck", BOOL(healthcheck)))
    if engine_id is not None:
        kv.append(("engine-id", STR(engine_id)))
    kv.extend(extra)
    return kv


def hello_frame(kv=None, flags=FIN, **kw):
    if kv is None:
        kv = hello_kv(**kw)
    return Frame(HAPROXY_HELLO, flags, 0, 0, encode_kvlist(kv))


def disconnect_frame(status=0, message="bye"):
    return Frame(HAPROXY_DISCONNECT, FIN, 0, 0,
                 encode_kvlist([("status-code", UINT32(status)),
                                ("message", STR(message))]))


def notify_frame(stream_id, frame_id, msgs=(), flags=FIN):
    return Frame(NOTIFY, flags, stream_id, frame_id, encode_messages(msgs))


# ---------------------------------------------------------------- client

class Closed(Exception):
    """The peer closed the connection."""


class Client:
    """A fake HAProxy connection. Every read has a deadline (default 3 s)."""

    def __init__(self, addr, timeout=3.0, nodelay=True):
        self.timeout = timeout
        if isinstance(addr, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if nodelay:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        self.buf = bytearray()
        self.eof = False

    # -- sending
    def send(self, data):
        self.sock.sendall(data)

    def send_frame(self, frame):
        self.send(frame.encode())

    def send_slowly(self, data, pause=0.002):
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])
            time.sleep(pause)

    # -- receiving
    def _fill(self, n, deadline):
        while len(self.buf) < n:
            if self.eof:
                raise Closed("connection closed with %d of %d bytes buffered"
                             % (len(self.buf), n))
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out waiting for %d bytes (have %d)"
                                     % (n, len(self.buf)))
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except ConnectionResetError:
                d = b""
            if not d:
                self.eof = True
            self.buf += d

    def recv_raw_frame(self, timeout=None):
        """Return the body (bytes) of the next frame."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._fill(4, deadline)
        n = struct.unpack(">I", self.buf[:4])[0]
        self._fill(4 + n, deadline)
        body = bytes(self.buf[4:4 + n])
        del self.buf[:4 + n]
        return body

    def recv_frame(self, timeout=None):
        return decode_frame_body(self.recv_raw_frame(timeout))

    def expect_eof(self, timeout=None):
        """Assert the peer closes the connection with no more bytes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            self._fill(len(self.buf) + 1, deadline)
        except Closed:
            pass
        except socket.timeout:
            raise AssertionError("connection still open after %.1fs"
                                 % (self.timeout if timeout is None else timeout))
        assert not self.buf, "unexpected bytes before close: %r" % bytes(self.buf)

    def expect_silence(self, duration):
        """Assert nothing arrives (and no close) for duration seconds."""
        deadline = time.monotonic() + duration
        try:
            self._fill(len(self.buf) + 1, deadline)
        except socket.timeout:
            return
        except Closed:
            raise AssertionError("connection closed during expected silence")
        raise AssertionError("unexpected bytes: %r" % bytes(self.buf))

    # -- protocol helpers
    def hello(self, **kw):
        """Send a good HELLO, return the AGENT-HELLO frame."""
        self.send_frame(hello_frame(**kw))
        f = self.recv_frame()
        assert f.type == AGENT_HELLO, "expected AGENT-HELLO, got %r" % (f,)
        return f

    def notify(self, stream_id, frame_id, msgs=(), flags=FIN):
        self.send_frame(notify_frame(stream_id, frame_id, msgs, flags))

    def expect_disconnect(self, status, timeout=None, eof=True):
        """Assert the next frame is AGENT-DISCONNECT with this status (flags
        FIN, ids 0, KV exactly status-code UINT32 then message STR) and that
        the connection is closed right after. Return the message."""
        f = self.recv_frame(timeout)
        assert f.type == AGENT_DISCONNECT, \
            "expected AGENT-DISCONNECT(%d), got %r" % (status, f)
        kv = f.kv()
        assert f.flags == FIN, "AGENT-DISCONNECT flags %#x != FIN" % f.flags
        assert (f.stream_id, f.frame_id) == (0, 0), \
            "AGENT-DISCONNECT ids (%d, %d)" % (f.stream_id, f.frame_id)
        assert [k for k, _ in kv] == ["status-code", "message"], \
            "AGENT-DISCONNECT keys %r" % kv
        st, msg = kv[0][1], kv[1][1]
        assert st.type == T_UINT32, "status-code is %r, not UINT32" % (st,)
        assert msg.type == T_STR, "message is %r, not STR" % (msg,)
        assert st.value == status, "status-code %d (%r), expected %d" % (
            st.value, msg.value, status)
        if eof:
            self.expect_eof()
        return msg.value

    def expect_ack(self, stream_id, frame_id, timeout=None):
        """Assert the next frame is the ACK of (stream_id, frame_id) with
        flags FIN; return the frame."""
        f = self.recv_frame(timeout)
        assert f.type == ACK, "expected ACK(%d,%d), got %r" % (
            stream_id, frame_id, f)
        assert f.flags == FIN, "ACK flags %#x != FIN" % f.flags
        assert (f.stream_id, f.frame_id) == (stream_id, frame_id), \
            "ACK ids (%d, %d), expected (%d, %d)" % (
                f.stream_id, f.frame_id, stream_id, frame_id)
        return f

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self):
        """Close with a TCP RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
