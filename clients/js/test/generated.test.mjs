// Generated and built files never go stale: the schema tables and message types
// (tools/gen_schema.py, from protocol/messages.py), the browser bundle (build.mjs), and
// the hand-written types, checked with tsc --strict over a typed usage example.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { OUTPUT, build } from "../build.mjs";
import { PYTHON, REPO } from "./helpers.mjs";

const run = promisify(execFile);
const HERE = fileURLToPath(new URL("..", import.meta.url));
const TSC = `${HERE}node_modules/typescript/bin/tsc`;

test("schema.gen.js and protocol.gen.d.ts match protocol/messages.py", async () => {
  const { stdout } = await run(PYTHON, ["clients/js/tools/gen_schema.py", "--check"], { cwd: REPO, timeout: 30000 });
  assert.match(stdout, /up to date/);
});

test("the committed browser bundle is what build.mjs produces now", async () => {
  const built = await build();
  assert.equal(built, await build(), "the build is not deterministic");
  const committed = readFileSync(OUTPUT, "utf8");
  assert.ok(committed === built, `${OUTPUT} is stale: run node clients/js/build.mjs`);
});

test("the bundle is self-contained and works: it decodes and encodes a vector", async () => {
  const text = readFileSync(OUTPUT, "utf8");
  assert.doesNotMatch(text, /^\s*import\s|require\(/m, "the bundle imports something");
  const bundle = await import(OUTPUT);
  assert.equal(typeof bundle.LiveroomClient, "function");
  assert.equal(typeof bundle.LiveroomError, "function");
  const vectors = JSON.parse(readFileSync(`${REPO}protocol/vectors/v1.json`, "utf8"));
  const v = vectors.find((x) => x.name === "joined_with_pin_and_sale_int_rid");
  const bytes = new Uint8Array(Buffer.from(v.msgpack_hex, "hex"));
  assert.deepStrictEqual(bundle.MSGPACK.decodeServer(bytes), v.message);
  assert.equal(Buffer.from(bundle.MSGPACK.encodeServer(v.message)).toString("hex"), v.msgpack_hex);
});

test("the types: index.d.ts is sound and a typed usage compiles under tsc --strict (and its misuses do not)", async () => {
  await run(process.execPath, [TSC, "-p", "test/types/tsconfig.dts.json"], { cwd: HERE, timeout: 60000 });
  await run(process.execPath, [TSC, "-p", "test/types/tsconfig.json"], { cwd: HERE, timeout: 60000 });
});
