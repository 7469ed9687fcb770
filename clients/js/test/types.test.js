// The TypeScript types: a usage file written as the dashboard uses the client
// compiles against index.d.ts and react.d.ts (resolved through package.json's
// "exports"), and a misuse is refused.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";

const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));
const project = fileURLToPath(new URL("./types/tsconfig.json", import.meta.url));

test("the type declarations compile with the package's public API", { skip: existsSync(tsc) ? false : "typescript not installed (npm ci)" }, async () => {
  try {
    await promisify(execFile)(process.execPath, [tsc, "-p", project]);
  } catch (error) {
    assert.fail(`tsc found errors:\n${error.stdout}${error.stderr}`);
  }
});
