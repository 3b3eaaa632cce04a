"use strict";
// The benchmark's Node.js worker module: the commands of workers.py that the Node contender's
// scenarios call (latency, throughput, payload). Served by node/bin/snakeden-worker.js; bytes
// arrive as a Uint8Array and go back as bytes.
module.exports = {
  echo(x) { return x; },
  noop() { return null; },
  pid() { return process.pid; },
  // Sleeps `seconds`, then answers its pid: concurrent calls prove how many workers exist.
  pid_hold(seconds) {
    return new Promise((resolve) => setTimeout(() => resolve(process.pid), seconds * 1000));
  },
};
