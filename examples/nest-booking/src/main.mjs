// nest-booking: the scenario @corral-cache/client exists for. A NestJS service that serves
// lab-test packages with prices from an in-memory cache-manager cache (CACHE_MANAGER via
// CorralCacheModule), and an admin endpoint that changes a price. Each replica follows its
// local Corral's feed, so a price change on any replica reaches every replica's cache.
//
//   node src/main.mjs --listen 127.0.0.1:3001 --corral http://127.0.0.11:9090 --db /tmp/db.json --name pod-1
//
// The "database" is a JSON file shared by the replicas (written atomically), enough to show
// that what a replica serves after an update comes from the source, not from a stale copy.
import 'reflect-metadata';
import { readFileSync, writeFileSync, renameSync, existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { NestFactory } from '@nestjs/core';
import { Module, Controller, Injectable, Get, Put, Param, Body, Inject, UseInterceptors, NotFoundException, BadRequestException } from '@nestjs/common';
import { CACHE_MANAGER } from '@nestjs/cache-manager';
import { CorralCacheModule, CorralCacheInterceptor, CacheTags, CORRAL_SUBSCRIPTION } from '@corral-cache/client/nestjs';

const { values: args } = parseArgs({
  options: {
    listen: { type: 'string', default: '127.0.0.1:3000' },
    corral: { type: 'string', default: 'http://127.0.0.1:9090' },
    db: { type: 'string', default: './packages.json' },
    name: { type: 'string', default: 'nest-booking' },
  },
});

const SEED = {
  1: { id: 1, name: 'Full blood count', provider: 'North Lab', price_cents: 4900 },
  2: { id: 2, name: 'Vitamin D', provider: 'North Lab', price_cents: 3500 },
  3: { id: 3, name: 'Thyroid panel', provider: 'South Lab', price_cents: 7900 },
};

class Database {
  constructor() {
    if (!existsSync(args.db)) this._write(SEED);
  }
  _write(rows) {
    writeFileSync(`${args.db}.tmp`, JSON.stringify(rows));
    renameSync(`${args.db}.tmp`, args.db);
  }
  package(id) {
    return JSON.parse(readFileSync(args.db, 'utf8'))[id];
  }
  setPrice(id, cents) {
    const rows = JSON.parse(readFileSync(args.db, 'utf8'));
    if (!rows[id]) return null;
    rows[id].price_cents = cents;
    this._write(rows);
    return rows[id];
  }
}
Injectable()(Database);

// Plain-JS decorators (what TypeScript emits for @Get(':id') and friends).
const decorate = (cls, method, decorators) =>
  Reflect.decorate(decorators, cls.prototype, method, Object.getOwnPropertyDescriptor(cls.prototype, method));

class PackagesController {
  constructor(db) { this.db = db; }
  get(id) {
    const p = this.db.package(id);
    if (!p) throw new NotFoundException(`no package ${id}`);
    return { ...p, served_by: args.name, loaded_at: new Date().toISOString() };
  }
}
Inject(Database)(PackagesController, undefined, 0);
decorate(PackagesController, 'get', [Get(':id'), UseInterceptors(CorralCacheInterceptor), CacheTags('package-:id')]);
Param('id')(PackagesController.prototype, 'get', 0);
Controller('packages')(PackagesController);

class AdminController {
  constructor(db, cache) { this.db = db; this.cache = cache; }
  /** Writes the source, then invalidates the package in every replica and waits for them. */
  async setPrice(id, body) {
    const cents = body?.price_cents;
    if (!Number.isInteger(cents) || cents < 0) throw new BadRequestException('price_cents must be a non-negative integer');
    const p = this.db.setPrice(id, cents);
    if (!p) throw new NotFoundException(`no package ${id}`);
    const ack = await this.cache.invalidateTags([`package-${id}`], { wait: true });
    return { package: p, invalidation: ack };
  }
}
Inject(Database)(AdminController, undefined, 0);
Inject(CACHE_MANAGER)(AdminController, undefined, 1);
decorate(AdminController, 'setPrice', [Put('packages/:id/price')]);
Param('id')(AdminController.prototype, 'setPrice', 0);
Body()(AdminController.prototype, 'setPrice', 1);
Controller('admin')(AdminController);

class HealthController {
  constructor(sub) { this.sub = sub; }
  health() { return { name: args.name, feed: this.sub.state }; }
}
Inject(CORRAL_SUBSCRIPTION)(HealthController, undefined, 0);
decorate(HealthController, 'health', [Get('health')]);
Controller()(HealthController);

class AppModule {}
Module({
  imports: [CorralCacheModule.register({
    url: args.corral,
    token: process.env.CORRAL_ADMIN_TOKEN, // never on the command line
    namespace: 'booking',
    ttl: 10 * 60 * 1000, // the safety net under every invalidation
  })],
  controllers: [PackagesController, AdminController, HealthController],
  providers: [Database],
})(AppModule);

const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
app.enableShutdownHooks();
const [host, port] = args.listen.split(':');
await app.listen(Number(port), host);
console.log(`${args.name} listening on http://${args.listen}, following ${args.corral}`);
