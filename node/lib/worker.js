"use strict";
// The Node.js worker runtime: serves a module's exported functions to a snakeden host over the
// channel named in SNAKEDEN_FDS (never stdin/stdout: console.log cannot corrupt the channel).
//
// Calls run concurrently: a sync command blocks the event loop until it returns, an async one
// lets other calls, PINGs and CANCELs in meanwhile. Each call has an AbortSignal, aborted by the
// host's CANCEL; commands see it as `this.signal` (see README.md).

const fs = require("fs");
const net = require("net");
const {
  PROTOCOL_VERSION, DEFAULT_MAX_FRAME, HEADER_SIZE, Kind, Flag, HOST_TO_WORKER,
  ProtocolViolation, FrameDecoder, pack, unpack, encodeHeader,
} = require("./protocol");

const EXIT_STARTUP_FAILED = 3;
const EXIT_PROTOCOL_ERROR = 4;
const EXIT_HOST_GONE = 5;
const PARENT_POLL_MS = 1000;

function errorBody(kind, type, message, traceback = "", extra = {}) {
  return { kind, type, message: String(message), traceback: String(traceback || ""), ...extra };
}

/** The ERROR body for something a command threw (spec §7, kind "user"). */
function userError(err, budget) {
  if (!(err instanceof Error)) {
    return errorBody("user", typeof err === "object" && err !== null ? "Error" : typeof err,
      cut(String(err), budget), "");
  }
  const body = errorBody("user", err.name || "Error", cut(err.message, budget),
    cutHead(err.stack || "", budget));
  // Optional keys the Python host uses to rebuild a typed exception (§7): a JS error may name
  // a Python class itself, e.g. `Object.assign(new Error("x"), {module: "builtins",
  // qualname: "ValueError"})`, so `except ValueError:` works on the host.
  if (typeof err.module === "string" && typeof err.qualname === "string") {
    body.module = err.module;
    body.qualname = err.qualname;
    body.args = [body.message];
  }
  const attrs = {};
  for (const [key, value] of Object.entries(err)) {
    if (key === "module" || key === "qualname" || key === "stack" || key === "message") continue;
    try { pack(value); attrs[key] = value; } catch { /* not plain data: left out */ }
  }
  if (Object.keys(attrs).length) body.attrs = attrs;
  return body;
}

function cut(text, budget) {
  return text.length > budget ? `${text.slice(0, budget)}... [${text.length - budget} more characters]` : text;
}
function cutHead(text, budget) {
  return text.length > budget ? `[${text.length - budget} characters cut]...\n${text.slice(-budget)}` : text;
}

/** A command's failure that is the caller's fault (spec §7 "bad_call"). */
class BadCall extends Error {}

class Server {
  constructor(commands, { rfd, wfd, workerId = "?", maxFrameSize = DEFAULT_MAX_FRAME, hostPid = null }) {
    this.commands = commands;
    this.names = Object.keys(commands).filter((k) => typeof commands[k] === "function").sort();
    this.rfd = rfd;
    this.wfd = wfd;
    this.workerId = workerId;
    this.max = maxFrameSize;
    this.hostPid = hostPid;
    this.calls = 0;
    this.inflight = new Map(); // id -> AbortController
    this.stopping = false;
    this.exiting = false;
    // A call's `this`: its signal and id, with the module's exports as prototype (so
    // `this.otherCommand()` works from a method). A class, not Object.create with property
    // descriptors per call: that made each call's object a slow dictionary-mode one.

    function CallContext(id) { this.callId = id; this.ctl = null; }
    CallContext.prototype = Object.create(commands, {
      signal: { get() { return this.controller.signal; } },
      controller: { get() { return this.ctl || (this.ctl = new AbortController()); } },
      workerId: { value: this.workerId },
    });
    this.Context = CallContext;
    // Cut exception texts so an ERROR frame cannot itself exceed the maximum frame size.
    this.budget = Math.max(256, Math.floor(this.max / 4));
  }

  start() {
    // net.Socket over the raw fds: libuv reads and writes them non-blocking on the event loop
    // (a pipe or a socketpair alike), and writes go out in order, each frame in one write.
    this.out = new net.Socket({ fd: this.wfd, readable: false, writable: true });
    this.out.on("error", () => this.exit(EXIT_HOST_GONE)); // EPIPE: the host is gone
    this.in = new net.Socket({ fd: this.rfd, readable: true, writable: false });
    this.decoder = new FrameDecoder(this.max);
    this.in.on("data", (chunk) => this.onData(chunk));
    this.in.on("end", () => this.exit(0)); // EOF: the host is gone or wants us gone
    this.in.on("error", () => this.exit(EXIT_HOST_GONE));
    this.watchParent();
    this.send(Kind.HELLO, 0, {
      protocol: PROTOCOL_VERSION,
      runtime: `node ${process.versions.node}`,
      pid: process.pid,
      commands: this.names,
      worker_id: this.workerId,
      codecs: ["msgpack"],
    });
  }

  watchParent() {
    // EOF on the channel is the main signal that the host died; this poll catches a host whose
    // channel fds leaked into a process that outlives it. Node's process.ppid is read once at
    // start-up, so read the live parent from /proc where there is one, else probe the pid.
    if (!this.hostPid) return;
    const timer = setInterval(() => {
      let gone = false;
      try {
        const stat = fs.readFileSync("/proc/self/stat", "latin1");
        gone = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) !== this.hostPid;
      } catch {
        try { process.kill(this.hostPid, 0); } catch (e) { gone = e.code === "ESRCH"; }
      }
      if (gone) this.exit(EXIT_HOST_GONE);
    }, PARENT_POLL_MS);
    timer.unref();
  }

  /** Write one frame whole. An over-size RESULT/ERROR becomes an ERROR "encode" (spec §2.2). */
  send(kind, id, value, flags = 0) {
    let body;
    try {
      body = pack(value);
    } catch (err) {
      if (kind !== Kind.RESULT) throw err;
      return this.send(Kind.ERROR, id, errorBody("encode", err.name || "EncodeError",
        `the result could not be sent with MessagePack: ${err.message}`));
    }
    if (HEADER_SIZE + body.length > this.max) {
      return this.send(Kind.ERROR, id, errorBody("encode", "FrameTooLarge",
        `the reply frame of ${HEADER_SIZE + body.length} bytes exceeds the maximum frame size ` +
        `of ${this.max} bytes; return less data per call`));
    }
    this.out.write(Buffer.concat([encodeHeader(kind, id, body.length, flags), body]));
    return undefined;
  }

  onData(chunk) {
    let frames;
    try {
      frames = this.decoder.feed(chunk);
    } catch (err) {
      return this.violation(err.message);
    }
    for (const frame of frames) {
      if (this.exiting) return undefined;
      if (!HOST_TO_WORKER.has(frame.kind)) {
        return this.violation(`frame kind ${frame.kind} is not one a host sends`);
      }
      switch (frame.kind) {
        case Kind.CALL: this.onCall(frame); break;
        case Kind.PING: this.send(Kind.PONG, frame.id, { pid: process.pid, calls: this.calls }); break;
        case Kind.CANCEL: this.inflight.get(frame.id)?.abort(); break; // unknown id: ignored
        case Kind.SHUTDOWN: this.stopping = true; this.maybeFinish(); break;
        default: break;
      }
    }
    return undefined;
  }

  violation(message) {
    process.stderr.write(`snakeden worker: bad frame from host: ${message}\n`);
    this.exit(EXIT_PROTOCOL_ERROR);
  }

  onCall(frame) {
    const { id } = frame;
    if (this.stopping) return; // spec §6.5: no new calls after SHUTDOWN
    if (frame.flags & Flag.PICKLE) {
      // Answered in MessagePack: we cannot speak the codec the host asked for (§5).
      this.send(Kind.ERROR, id, errorBody("decode", "CodecError",
        "this worker speaks MessagePack only (its HELLO codecs lack \"pickle\")"));
      return;
    }
    let name, args, kwargs;
    try {
      const body = unpack(frame.body);
      if (!Array.isArray(body) || body.length !== 3) throw new TypeError("the body is not [command, args, kwargs]");
      [name, args, kwargs] = body;
      if (typeof name !== "string" || !Array.isArray(args) || !isMap(kwargs)) {
        throw new TypeError("the body is not [str, array, map]");
      }
      if (frame.flags & Flag.BATCH && !args.every(Array.isArray)) {
        throw new TypeError("a BATCH call's args is not an array of arrays");
      }
    } catch (err) {
      this.send(Kind.ERROR, id, errorBody("decode", err.name || "DecodeError",
        `the worker could not decode the call: ${err.message}`));
      return;
    }
    const fn = frame.flags & Flag.BY_REFERENCE ? undefined
      : Object.prototype.hasOwnProperty.call(this.commands, name) ? this.commands[name] : undefined;
    if (typeof fn !== "function") {
      const why = frame.flags & Flag.BY_REFERENCE
        ? `calls by reference (${JSON.stringify(name)}) need a Python worker`
        : `unknown command ${JSON.stringify(name)}`;
      this.send(Kind.ERROR, id, errorBody("unknown_command", "LookupError", why, "",
        { commands: this.names }));
      return;
    }
    this.calls += 1;
    // The command's `this` (see CallContext). The AbortController is made on first use of
    // `this.signal` or when the call turns out to be async: most sync calls never need one.
    const context = new this.Context(id);
    const control = () => context.controller;
    if (!(frame.flags & Flag.BATCH)) {
      // A sync command is answered at once, without a trip through the promise queue (it
      // costs ~100 us per call under load); only a promise waits.
      let value;
      try {
        value = this.invoke(fn, context, args, kwargs);
      } catch (err) {
        this.send(Kind.ERROR, id, this.failure(err, context.ctl && context.ctl.signal));
        return;
      }
      if (!isThenable(value)) {
        this.send(Kind.RESULT, id, value);
        return;
      }
      this.track(id, control(), Promise.resolve(value).then(
        (v) => [Kind.RESULT, v, 0],
        (err) => [Kind.ERROR, this.failure(err, context.ctl.signal), 0]));
      return;
    }
    this.track(id, control(),
      this.runBatch(fn, context, args, kwargs).then((v) => [Kind.RESULT, v, Flag.BATCH]));
  }

  /** A call still running: CANCEL finds its controller; its reply goes out when it settles. */
  track(id, controller, done) {
    this.inflight.set(id, controller);
    done.then(([kind, value, flags]) => {
      this.inflight.delete(id);
      if (!this.exiting) this.send(kind, id, value, flags);
      this.maybeFinish();
    });
  }

  invoke(fn, context, args, kwargs) {
    if (Object.keys(kwargs).length) {
      throw new BadCall(`JavaScript commands take positional arguments only; got keyword ` +
        `arguments ${Object.keys(kwargs).join(", ")}`);
    }
    return fn.apply(context, args);
  }

  async runBatch(fn, context, batch, kwargs) {
    const out = [];
    for (const args of batch) {
      try {
        // Await only a promise: a sync command's items then cost no microtask hop each.
        const value = this.invoke(fn, context, args, kwargs);
        out.push([true, isThenable(value) ? await value : value]); // eslint-disable-line no-await-in-loop
      } catch (err) {
        out.push([false, this.failure(err, context.signal)]);
      }
    }
    return out;
  }

  failure(err, signal) {
    if (err instanceof BadCall) return errorBody("bad_call", "TypeError", err.message);
    if (signal && signal.aborted && err instanceof Error && err.name === "AbortError") {
      return errorBody("cancelled", "AbortError", "the call was cancelled", err.stack);
    }
    return userError(err, this.budget);
  }

  maybeFinish() {
    if (this.stopping && this.inflight.size === 0) this.exit(0);
  }

  exit(code) {
    if (this.exiting) return;
    this.exiting = true;
    // Flush what is queued on the channel first (a reply answered just before SHUTDOWN).
    const bye = () => process.exit(code);
    if (this.out && this.out.writableLength && !this.out.destroyed) {
      this.out.end(bye);
      setTimeout(bye, 2000).unref(); // a host that stopped reading cannot hold us forever
    } else {
      bye();
    }
  }
}

function isThenable(value) {
  return value !== null && (typeof value === "object" || typeof value === "function") &&
    typeof value.then === "function";
}

function isMap(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) && !Buffer.isBuffer(value) &&
    !(value instanceof Uint8Array);
}

/** Settings from the environment the host gives every worker (spec §1). */
function envSettings(env = process.env) {
  const fds = (env.SNAKEDEN_FDS || "").split(",").map(Number);
  if (fds.length !== 2 || !fds.every(Number.isInteger)) {
    process.stderr.write("snakeden-worker is started by a snakeden pool, which passes the channel " +
      "in SNAKEDEN_FDS='<read_fd>,<write_fd>'; it is not meant to be run by hand\n");
    process.exit(2);
  }
  return {
    rfd: fds[0], wfd: fds[1], workerId: env.SNAKEDEN_WORKER_ID || "?",
    maxFrameSize: Number(env.SNAKEDEN_MAX_FRAME) || DEFAULT_MAX_FRAME,
    hostPid: Number(env.SNAKEDEN_HOST_PID) || null,
  };
}

/** Load the module's commands: CommonJS `module.exports = {...}`, or ESM named exports and/or
 * a default export object. */
async function loadCommands(path) {
  const { pathToFileURL } = require("url");
  const { resolve } = require("path");
  const ns = await import(pathToFileURL(resolve(path)).href);
  const commands = {};
  const dflt = ns.default;
  if (dflt && (typeof dflt === "object" || typeof dflt === "function")) {
    for (const key of Object.keys(dflt)) commands[key] = dflt[key];
  }
  for (const key of Object.keys(ns)) {
    if (key !== "default" && key !== "module.exports") commands[key] = ns[key];
  }
  for (const key of Object.keys(commands)) if (typeof commands[key] !== "function") delete commands[key];
  // Keep the module object's own `this` semantics for methods calling each other.
  return dflt && typeof dflt === "object" ? Object.assign(Object.create(dflt), commands) : commands;
}

/** Start-up: load the module, say HELLO (or ERROR "startup" and exit 3), serve until told to stop. */
async function main(argv = process.argv.slice(2)) {
  const settings = envSettings();
  // The host appends nothing we need; a `--snakeden-run=...` argument must be ignored (§1).
  const path = argv.find((a) => !a.startsWith("--"));
  let commands;
  try {
    if (!path) throw new Error("usage: snakeden-worker <module.js>: the module whose exports are the commands");
    commands = await loadCommands(path);
  } catch (err) {
    const body = errorBody("startup", (err && err.name) || "Error", (err && err.message) || String(err),
      (err && err.stack) || "");
    try {
      const data = pack(body);
      fs.writeSync(settings.wfd, Buffer.concat([encodeHeader(Kind.ERROR, 0, data.length), data]));
    } catch {
      process.stderr.write(`snakeden worker ${settings.workerId}: start-up failed\n${body.traceback}\n`);
    }
    process.exit(EXIT_STARTUP_FAILED);
  }
  return serve(commands, settings);
}

/** Serve `commands` (an object of functions) on the channel in `settings` (see envSettings). */
function serve(commands, settings = envSettings()) {
  const server = new Server(commands, settings);
  server.start();
  return server;
}

module.exports = { main, serve, envSettings, loadCommands, Server, userError, ProtocolViolation };
