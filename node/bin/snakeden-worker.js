#!/usr/bin/env node
"use strict";
// Run by a snakeden pool: `node bin/snakeden-worker.js ./my_worker.js`, the module's exported
// functions being the commands. See ../README.md.
require("../lib/worker").main();
