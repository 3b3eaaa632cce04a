"use strict";
// The language-neutral conformance vectors (src/snakeden/conformance/vectors.json, shared with
// the Python kit), played against this runtime in real processes over real fds.
const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const fs = require("node:fs");
const { spawn } = require("node:child_process");
const { FrameDecoder, unpack, Kind } = require("../lib/protocol");

const VECTORS = JSON.parse(fs.readFileSync(
  path.join(__dirname, "..", "..", "src", "snakeden", "conformance", "vectors.json"), "utf8"));
const BIN = path.join(__dirname, "..", "bin", "snakeden-worker.js");
const WORKER = path.join(__dirname, "..", "examples", "conformance_worker.js");

/** A worker on a socketpair channel (fd 3: host -> worker, fd 4: worker -> host). */
function startWorker(maxFrame) {
  const env = { ...process.env, SNAKEDEN_FDS: "3,4", SNAKEDEN_WORKER_ID: "t",
    SNAKEDEN_HOST_PID: String(process.pid), SNAKEDEN_MAX_FRAME: String(maxFrame || 268435456) };
  const child = spawn(process.execPath, [BIN, WORKER], {
    env, stdio: ["ignore", "pipe", "pipe", "pipe", "pipe"],
  });
  const decoder = new FrameDecoder(1 << 30);
  const frames = [];
  let waiter = null;
  child.stdio[4].on("data", (chunk) => {
    frames.push(...decoder.feed(chunk));
    if (waiter && frames.length) { const w = waiter; waiter = null; w(); }
  });
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  child.stdout.resume();
  child.stderr.resume();
  return {
    child,
    exited,
    write: (hex) => child.stdio[3].write(Buffer.from(hex, "hex")),
    async next() {
      if (!frames.length) {
        await new Promise((resolve, reject) => {
          waiter = resolve;
          child.once("exit", () => reject(new Error("the worker exited")));
        });
      }
      return frames.shift();
    },
  };
}

function check(frame, want) {
  const kinds = Array.isArray(want.kind) ? want.kind : [want.kind];
  assert.equal(frame.id, want.id);
  assert.ok(kinds.includes(frame.kind), `kind ${frame.kind}, expected ${kinds}`);
  if ("flags" in want) assert.equal(frame.flags, want.flags);
  const body = frame.body.length ? unpack(frame.body) : null;
  if (frame.kind === Kind.RESULT && want.batch) {
    assert.equal(body.length, want.batch.length);
    want.batch.forEach((w, i) => {
      assert.equal(body[i][0], w.ok);
      if (!w.ok) for (const [k, v] of Object.entries(w.error)) assert.equal(body[i][1][k], v);
    });
  } else if (frame.kind === Kind.RESULT && want.body !== undefined) {
    assert.deepEqual(body, unpack(Buffer.from(want.body, "hex"))); // NaN equals NaN here
  }
  if (frame.kind === Kind.ERROR) {
    for (const [k, v] of Object.entries(want.error || {})) assert.equal(body[k], v, k);
    for (const c of want.commands_include || []) assert.ok(body.commands.includes(c), c);
  }
  if (frame.kind === Kind.PONG) {
    assert.equal(typeof body.pid, "number");
    assert.equal(typeof body.calls, "number");
  }
}

async function play(w, vec) {
  for (const hex of vec.send) w.write(hex);
  const wants = [...vec.expect];
  while (wants.length) {
    const frame = await w.next();
    const i = vec.order === "any" ? Math.max(0, wants.findIndex((x) => x.id === frame.id)) : 0;
    check(frame, wants[i]);
    wants.splice(i, 1);
  }
}

test("HELLO, then every value and serving vector on one worker", async (t) => {
  const w = startWorker();
  const hello = await w.next();
  assert.equal(hello.kind, Kind.HELLO);
  const body = unpack(hello.body);
  assert.equal(body.protocol, VECTORS.protocol);
  assert.equal(body.pid, w.child.pid);
  for (const c of VECTORS.contract) assert.ok(body.commands.includes(c), c);
  for (const vec of [...VECTORS.values, ...VECTORS.serving]) {
    await t.test(vec.name, () => play(w, vec));
  }
  w.write("00000006080000000000"); // SHUTDOWN
  assert.equal(await w.exited, 0);
});

for (const vec of VECTORS.alone) {
  test(vec.name, async () => {
    const w = startWorker(vec.max_frame);
    assert.equal((await w.next()).kind, Kind.HELLO);
    await play(w, vec);
    if (vec.exit) {
      const code = await w.exited;
      if (vec.exit === "zero") assert.equal(code, 0); else assert.notEqual(code, 0);
    } else {
      w.child.kill("SIGKILL");
    }
  });
}

test("EOF on the read fd: exit 0", async () => {
  const w = startWorker();
  await w.next();
  w.child.stdio[3].end();
  w.child.stdio[3].destroy();
  assert.equal(await w.exited, 0);
});
