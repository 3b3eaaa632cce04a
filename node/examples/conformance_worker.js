"use strict";
// The conformance worker contract (docs/protocol.md §11), in Node.js: the commands the
// snakeden conformance kit calls. Run: python -m snakeden.conformance -- node
// node/bin/snakeden-worker.js node/examples/conformance_worker.js
module.exports = {
  echo(value) { return value; },
  add(a, b) { return a + b; },
  fail(message) { throw new Error(message); },
  // Resolves after `ms` milliseconds, or rejects with an AbortError once the host cancels.
  sleep(ms) {
    const { signal } = this;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => resolve(ms), ms);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(new DOMException("cancelled", "AbortError"));
      }, { once: true });
    });
  },
  shout(text) {
    process.stdout.write(`${text}\n`);
    process.stderr.write(`${text}\n`);
    return text;
  },
  blob(n) { return Buffer.alloc(n); },
  // Process-level faults, for the pool's crash matrix against a Node worker.
  crash(how) {
    if (how === "sigkill") process.kill(process.pid, "SIGKILL");
    if (how === "exit") process.exit(3);
    if (how === "hang") for (;;) { /* a busy hang: only a kill ends it */ }
    throw new Error(`unknown crash ${how}`);
  },
  pid() { return process.pid; },
  // Starts a child that would outlive us, for the orphan tests.
  spawnChild(seconds) {
    const { spawn } = require("child_process");
    const child = spawn("sleep", [String(seconds)], { stdio: "ignore" });
    return child.pid;
  },
};
