// `npm test`: every suite, one file at a time (they start corral clusters on shared loopback
// addresses), with the spec reporter's summary; exits non-zero when any test fails. A script
// rather than `node --test` flags because --test-concurrency needs Node 20.10+.
import { run } from 'node:test';
import { spec } from 'node:test/reporters';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => f.endsWith('.test.mjs'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort()
  .map((f) => path.join(here, f));

const stream = run({ files, concurrency: 1 });
stream.on('test:fail', () => { process.exitCode = 1; });
stream.pipe(new spec()).pipe(process.stdout);
