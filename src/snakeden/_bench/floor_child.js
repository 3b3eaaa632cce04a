"use strict";
// The Node.js floor: echo 4-byte big-endian length-prefixed frames from fd argv[2] to fd
// argv[3] (`node floor_child.js RFD WFD`). Same I/O as the Node worker runtime (net.Socket over
// the raw fds, libuv on the event loop), none of its work: no MessagePack, no call bookkeeping.
const net = require("net");

const rfd = Number(process.argv[2]);
const wfd = Number(process.argv[3]);
const out = new net.Socket({ fd: wfd, readable: false, writable: true });
const input = new net.Socket({ fd: rfd, readable: true, writable: false });
let buf = Buffer.alloc(0);

input.on("data", (chunk) => {
  buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
  let start = 0;
  while (buf.length - start >= 4) {
    const need = 4 + buf.readUInt32BE(start);
    if (buf.length - start < need) break;
    out.write(buf.subarray(start, start + need)); // one write per frame, as the C floor
    start += need;
  }
  buf = start === buf.length ? Buffer.alloc(0) : buf.subarray(start);
});
input.on("end", () => out.end(() => process.exit(0)));
