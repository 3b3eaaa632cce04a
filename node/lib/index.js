"use strict";
// snakeden-worker: the public API. Most workers need none of it (a module exporting functions
// is a worker); `tuple` returns a Python tuple to the host, `serve` embeds the runtime.
const protocol = require("./protocol");
const worker = require("./worker");

module.exports = {
  serve: worker.serve,
  main: worker.main,
  tuple: protocol.tuple,
  Tuple: protocol.Tuple,
  protocol,
};
