// Test harness: real `corral` processes on loopback (CORRAL_BIN, default the workspace's debug
// build), a TCP relay that can cut and restore a connection, and waits on observable states.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const CORRAL_BIN = path.resolve(here, '..', process.env.CORRAL_BIN || '../../target/debug/corral');
if (!existsSync(CORRAL_BIN)) {
  throw new Error(`no corral binary at ${CORRAL_BIN}: run \`cargo build -p corral\` or set CORRAL_BIN`);
}
export const SECRET = 'node-client-test-secret-0123456789';

// Every corral this process started dies with it, even when a test fails before its cleanup.
const children = new Set();
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });

/** A port free on `host` right now. */
export function freePort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Polls `f` (sync or async) until it returns something truthy; throws naming `what`. */
export async function waitFor(what, f, timeout = 15000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The next `name` event of `emitter` for which `pred` holds. */
export function next(emitter, name, pred = () => true, timeout = 15000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { emitter.off(name, on); reject(new Error(`no ${name} event within ${timeout} ms`)); }, timeout);
    const on = (v) => { if (pred(v)) { clearTimeout(t); emitter.off(name, on); resolve(v); } };
    emitter.on(name, on);
  });
}

/** A running `corral serve`, killed by stop(). */
export class Corral {
  static async start({ ip = '127.0.0.1', proxyPort, adminPort, config = '', env = {} } = {}) {
    const c = new Corral();
    c.ip = ip;
    c.proxyPort = proxyPort || (await freePort(ip));
    c.adminPort = adminPort || (await freePort(ip));
    c.dir = mkdtempSync(path.join(tmpdir(), 'corral-node-'));
    c.config = config;
    c.env = env;
    await c._spawn();
    return c;
  }

  get admin() { return `http://${this.ip}:${this.adminPort}`; }
  get proxy() { return `http://${this.ip}:${this.proxyPort}`; }

  async _spawn() {
    const file = path.join(this.dir, 'corral.toml');
    writeFileSync(file, `[server]\nlisten = "${this.ip}:${this.proxyPort}"\nadmin_listen = "${this.ip}:${this.adminPort}"\n${this.config}\n`);
    const env = { ...process.env, CORRAL_LOG: 'warn', ...this.env };
    if (!this.env.CORRAL_ADMIN_TOKEN) delete env.CORRAL_ADMIN_TOKEN;
    this.stderr = '';
    this.child = spawn(CORRAL_BIN, ['serve', '--config', file], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    this.child.stderr.on('data', (d) => { this.stderr += d; });
    const child = this.child;
    children.add(child);
    child.once('exit', () => children.delete(child));
    this.exited = new Promise((r) => this.child.once('exit', r));
    let gone = false;
    this.exited.then(() => { gone = true; });
    await waitFor(`corral on ${this.admin} to be ready`, async () => {
      if (gone) throw new Error(`corral on ${this.admin} exited at start: ${this.stderr}`);
      try {
        return (await fetch(`${this.admin}/readyz`)).status === 200;
      } catch {
        return false;
      }
    }, 20000);
  }

  /** Kills the process and starts a new one on the same addresses (a restarted replica). */
  async restart() {
    await this.kill();
    await this._spawn();
  }

  async kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }

  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** `n` clustered replicas on 127.0.0.11.. sharing ports. */
export async function cluster(n, { extra = '', env = {} } = {}) {
  const proxyPort = await freePort('127.0.0.11');
  const adminPort = await freePort('127.0.0.11');
  const peers = Array.from({ length: n }, (_, i) => `"127.0.0.${11 + i}:${adminPort}"`).join(', ');
  const config = `[cluster]\ndiscovery = { kind = "static", addresses = [${peers}] }\nheartbeat = "300ms"\n${extra}`;
  const nodes = [];
  for (let i = 0; i < n; i++) {
    nodes.push(await Corral.start({ ip: `127.0.0.${11 + i}`, proxyPort, adminPort, config, env: { CORRAL_CLUSTER_SECRET: SECRET, ...env } }));
  }
  return nodes;
}

/** A TCP relay to `target` ("host:port") whose connections can be cut and refused at will. */
export class Relay {
  static async start(target) {
    const r = new Relay();
    const [host, port] = target.replace(/^https?:\/\//, '').split(':');
    r.target = { host, port: Number(port) };
    r.port = await freePort();
    r.accepted = 0;
    r.sockets = new Set();
    await r.open();
    return r;
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  /** Accepts connections again (on the same port). */
  open() {
    this.server = net.createServer((client) => {
      this.accepted++;
      const upstream = net.connect(this.target);
      for (const [s, other] of [[client, upstream], [upstream, client]]) {
        this.sockets.add(s);
        s.on('close', () => { this.sockets.delete(s); other.destroy(); });
        s.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
    });
    return new Promise((resolve) => this.server.listen(this.port, '127.0.0.1', resolve));
  }

  /** Drops every open connection and refuses new ones until open(). */
  cut() {
    const closed = new Promise((resolve) => this.server.close(resolve));
    for (const s of this.sockets) s.destroy();
    return closed;
  }
}
