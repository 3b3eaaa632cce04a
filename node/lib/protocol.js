"use strict";
// The snakeden wire protocol, version 1, sans-IO (docs/protocol.md in the snakeden repository is
// the specification): frames in and out, and the MessagePack codec with the protocol's rules.
// No I/O here, so the decoder can be fed one byte at a time by the tests.

const { Encoder, Decoder, ExtensionCodec } = require("@msgpack/msgpack");

const PROTOCOL_VERSION = 1;
const HEADER_SIZE = 10; // u32 length, u8 kind, u8 flags, u32 id
const INNER_HEADER = 6; // the part of the header counted by `length`
const DEFAULT_MAX_FRAME = 256 * 1024 * 1024;

const Kind = Object.freeze({
  HELLO: 1, CALL: 2, RESULT: 3, ERROR: 4, PING: 5, PONG: 6, CANCEL: 7, SHUTDOWN: 8,
});
const Flag = Object.freeze({ PICKLE: 0x01, BY_REFERENCE: 0x02, BATCH: 0x04 });
/** Kinds a worker may receive; anything else is a protocol violation (spec §8). */
const HOST_TO_WORKER = new Set([Kind.CALL, Kind.PING, Kind.CANCEL, Kind.SHUTDOWN]);

/** The stream lost framing: no way to resynchronise, the worker must exit. */
class ProtocolViolation extends Error {
  constructor(message) { super(message); this.name = "ProtocolViolation"; }
}

/** A Python tuple on the wire (MessagePack ext type 43, spec §5.1.1). Decoded tuples become
 * plain arrays; return `new Tuple([...])` (or `tuple(a, b)`) to give the host a tuple. */
class Tuple {
  constructor(items) { this.items = Array.from(items); }
}
const tuple = (...items) => new Tuple(items);
const TUPLE_EXT = 43;

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);

// Integers: @msgpack/msgpack either decodes every 64-bit encoding as a (lossy) Number or every
// one as a BigInt. A Python host encodes any int >= 2**32 as uint64, so neither fits: an
// `add(a, b)` would get BigInts for ordinary numbers, or silently wrong ones above 2**53.
// These subclasses give a Number whenever it is exact and a BigInt only when it is not.
class MixedDecoder extends Decoder {
  readU64AsBigInt() { return narrow(super.readU64AsBigInt()); }
  readI64AsBigInt() { return narrow(super.readI64AsBigInt()); }
}
function narrow(big) { return big <= MAX_SAFE && big >= MIN_SAFE ? Number(big) : big; }

class MixedEncoder extends Encoder {
  // With useBigInt64 the library sends a safe integer >= 2**32 as a float; send it as an int.
  encodeNumber(n) {
    if (Number.isSafeInteger(n) && (n >= 0x100000000 || n < -0x80000000)) {
      this.encodeBigInt64(BigInt(n));
    } else {
      super.encodeNumber(n);
    }
  }
  encodeBigInt64(big) {
    if (big > 0xffffffffffffffffn || big < -0x8000000000000000n) {
      throw new RangeError(`integer ${big} does not fit in 64 bits (MessagePack's limit)`);
    }
    super.encodeBigInt64(big);
  }
}

const extensionCodec = new ExtensionCodec();
const options = { extensionCodec, useBigInt64: true };
// Encoders and decoders are reusable but not re-entrant; the ext 43 hooks run *inside* an
// encode/decode, so nested values get their own instances.
extensionCodec.register({
  type: TUPLE_EXT,
  encode: (value) => (value instanceof Tuple ? new MixedEncoder(options).encode(value.items) : null),
  decode: (data) => new MixedDecoder(options).decode(data),
});
const encoder = new MixedEncoder(options);
const decoder = new MixedDecoder(options);

/** One value to MessagePack bytes (a Buffer sharing no memory with the encoder). */
function pack(value) {
  const bytes = encoder.encode(value);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** MessagePack bytes to one value; throws on truncated data or bytes after the value. */
function unpack(bytes) {
  return decoder.decode(bytes);
}

/** The 10-byte header for a frame with a body of `bodyLength` bytes. */
function encodeHeader(kind, id, bodyLength, flags = 0) {
  const head = Buffer.allocUnsafe(HEADER_SIZE);
  head.writeUInt32BE(INNER_HEADER + bodyLength, 0);
  head[4] = kind;
  head[5] = flags;
  head.writeUInt32BE(id >>> 0, 6);
  return head;
}

function encodeFrame(kind, id, body = Buffer.alloc(0), flags = 0) {
  return Buffer.concat([encodeHeader(kind, id, body.length, flags), body]);
}

/**
 * Incremental frame parser: feed it chunks split anywhere, get whole frames back in order.
 * The length prefix is checked against the maximum frame size as soon as its 4 bytes arrive,
 * before any of the body is buffered (spec §2.2): a peer cannot make us hold more than `max`.
 */
class FrameDecoder {
  constructor(maxFrameSize = DEFAULT_MAX_FRAME) {
    this.max = maxFrameSize;
    this.chunks = [];
    this.buffered = 0;
    this.broken = false;
  }

  /** Returns [{kind, flags, id, body}], body a Buffer. Throws ProtocolViolation. */
  feed(chunk) {
    if (this.broken) throw new ProtocolViolation("decoder unusable after a protocol violation");
    if (chunk.length) { this.chunks.push(chunk); this.buffered += chunk.length; }
    const frames = [];
    while (this.buffered >= 4) {
      // Concatenate lazily: only when a frame might be complete or the prefix is split.
      if (this.chunks[0].length < 4) this.coalesce();
      const length = this.chunks[0].readUInt32BE(0);
      if (length + 4 > this.max) {
        this.broken = true;
        throw new ProtocolViolation(
          `frame of ${length + 4} bytes exceeds the maximum frame size of ${this.max} bytes`);
      }
      if (length < INNER_HEADER) {
        this.broken = true;
        throw new ProtocolViolation(
          `frame length ${length} is shorter than the ${INNER_HEADER}-byte header`);
      }
      const total = 4 + length;
      if (this.buffered < total) break;
      if (this.chunks[0].length < total) this.coalesce();
      const buf = this.chunks[0];
      frames.push({
        kind: buf[4], flags: buf[5], id: buf.readUInt32BE(6), body: buf.subarray(HEADER_SIZE, total),
      });
      if (buf.length === total) this.chunks.shift(); else this.chunks[0] = buf.subarray(total);
      this.buffered -= total;
    }
    return frames;
  }

  coalesce() {
    this.chunks = [Buffer.concat(this.chunks, this.buffered)];
  }
}

module.exports = {
  PROTOCOL_VERSION, HEADER_SIZE, DEFAULT_MAX_FRAME, Kind, Flag, HOST_TO_WORKER,
  ProtocolViolation, FrameDecoder, Tuple, tuple, TUPLE_EXT, pack, unpack, encodeHeader, encodeFrame,
};
