"use strict";
// The sans-IO layer: the incremental decoder under every split, the size checks made on the
// prefix alone, and the codec's integer and tuple rules.
const test = require("node:test");
const assert = require("node:assert/strict");
const { FrameDecoder, ProtocolViolation, encodeFrame, pack, unpack, tuple, Kind } = require("../lib/protocol");

const call = encodeFrame(Kind.CALL, 1, Buffer.from("93a361646492010280", "hex")); // spec §9

test("the spec's CALL example encodes to its 19 bytes", () => {
  assert.equal(call.toString("hex"), "0000000f02000000000193a361646492010280");
});

test("a frame split after every byte decodes the same", () => {
  for (let cut = 0; cut <= call.length; cut += 1) {
    const d = new FrameDecoder();
    const frames = [...d.feed(call.subarray(0, cut)), ...d.feed(call.subarray(cut))];
    assert.equal(frames.length, 1, `cut ${cut}`);
    assert.deepEqual(unpack(frames[0].body), ["add", [1, 2], {}]);
    assert.equal(frames[0].id, 1);
    assert.equal(d.buffered, 0);
  }
});

test("one byte at a time, and many frames in one chunk", () => {
  const stream = Buffer.concat([call, encodeFrame(Kind.PING, 7), call]);
  const d = new FrameDecoder();
  const got = [];
  for (const b of stream) got.push(...d.feed(Buffer.from([b])));
  assert.deepEqual(got.map((f) => f.kind), [Kind.CALL, Kind.PING, Kind.CALL]);
  assert.deepEqual(new FrameDecoder().feed(stream).map((f) => f.id), [1, 7, 1]);
});

test("an oversize prefix is refused before its body arrives", () => {
  const d = new FrameDecoder(1024);
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(1 << 20);
  assert.throws(() => d.feed(prefix), ProtocolViolation);
  assert.throws(() => d.feed(call), /unusable/);
});

test("a length below the header is a violation", () => {
  assert.throws(() => new FrameDecoder().feed(Buffer.from("00000002", "hex")), /shorter/);
});

test("integers: exact Numbers where safe, BigInt beyond, never a float", () => {
  assert.equal(unpack(Buffer.from("cf0000000000000001", "hex")), 1);
  assert.equal(unpack(Buffer.from("cfffffffffffffffff", "hex")), 0xffffffffffffffffn);
  assert.equal(pack(2 ** 40).toString("hex"), "cf0000010000000000");
  assert.equal(pack(-(2 ** 40)).toString("hex"), "d3ffffff0000000000");
  assert.equal(pack(2n ** 63n).toString("hex"), "cf8000000000000000");
  assert.throws(() => pack(2n ** 64n), RangeError);
});

test("ext 43 tuples decode as arrays; tuple() encodes one", () => {
  assert.deepEqual(unpack(Buffer.from("c7082b9201c7032b920203", "hex")), [1, [2, 3]]);
  assert.equal(pack(tuple(1, 2)).toString("hex"), "c7032b920102");
  assert.equal(pack(tuple()).toString("hex"), "d42b90");
});

test("str and bin stay apart", () => {
  assert.equal(pack("ab").toString("hex"), "a26162");
  assert.equal(pack(Buffer.from("ab")).toString("hex"), "c4026162");
  assert.ok(unpack(Buffer.from("c4026162", "hex")) instanceof Uint8Array);
});
