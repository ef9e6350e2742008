// Type declarations for @corral-cache/client (hand-written; the package has no build step).
import { EventEmitter } from 'node:events';

/** What an invalidation selects (Corral's `Selectors`). */
export interface Selectors {
  urls?: string[];
  tags?: string[];
  prefixes?: string[];
  all?: boolean;
}

/** One `event: invalidation` of the feed, exactly as Corral sends it. */
export interface InvalidationEvent {
  id: string;
  origin: string;
  epoch: number;
  seq: number;
  selectors: Selectors;
  soft: boolean;
  timestamp_ms: number;
  cause: 'admin' | 'purge_method' | 'unsafe_method' | `source:${string}`;
}

export interface Gap {
  reason: 'too_old' | 'other_instance' | 'unknown_id' | 'lagged';
  last_event_id: string | null;
  resume_from: string;
}

export interface SubscriptionState {
  connected: boolean;
  /** The position to resume from (sent as Last-Event-ID on reconnect). */
  lastEventId: string | null;
  /** Milliseconds from the latest event's creation to its arrival here. */
  lag: number | null;
  /** The replica's instance name, from its hello. */
  instance: string | null;
  events: number;
  gaps: number;
  flushes: number;
  reconnects: number;
  lastEventAt: number | null;
  /** Set when the subscription stopped for good (a refused token, a refused filter). */
  error: CorralError | null;
}

/** Anything the feed can keep coherent: the adapters below, or your own. */
export interface Target {
  apply(event: InvalidationEvent): void;
  flush(reason: string): void;
}

export interface SubscribeOptions {
  /** The admin URL of a Corral replica: `http://127.0.0.1:9090`. */
  url: string;
  /** The admin token: needed off loopback, and to publish. Never logged. */
  token?: string;
  /** The namespace keys travel in (`/{namespace}/{key}`), for `purge({ keys })`. */
  namespace?: string;
  /** Server-side filters: exact tags or `prefix-*` patterns. */
  tags?: string[];
  /** Server-side filters: path prefixes (`/packages/`). */
  prefixes?: string[];
  /** Resume from here on the first connection. */
  lastEventId?: string;
  /** Reconnect backoff in ms (full jitter): defaults 250 and 30 000. */
  backoff?: { initial?: number; max?: number };
  /** Reconnect when nothing (not even a keep-alive) arrived for this long; default three of the
   *  replica's keep-alive periods (its hello says; 45 000 ms before the first hello). */
  idleTimeout?: number;
  /** Whether a flush (gap, first connection, purge of everything) clears attached caches; default true. */
  clearOnFlush?: boolean;
  /** Whether the first connection (no Last-Event-ID) flushes: what was cached before may be stale; default true. */
  flushOnConnect?: boolean;
  fetch?: typeof fetch;
}

export interface PurgeSelectors {
  keys?: Array<string | number>;
  namespace?: string;
  tags?: string[];
  urls?: string[];
  prefixes?: string[];
  all?: boolean;
  soft?: boolean;
  /** Resolve once every peer replica acknowledged (or Corral's wait timeout passed). */
  wait?: boolean;
  /** Request timeout in ms; default 10 000. */
  timeout?: number;
}

export interface PurgeOptions extends PurgeSelectors {
  url: string;
  token?: string;
  fetch?: typeof fetch;
}

export interface PurgeAck {
  purged: number;
  event: string;
  /** With `wait`: the peers that applied it. */
  acknowledged?: string[];
  /** With `wait`: the peers that did not answer in time. */
  pending?: string[];
  /** With `wait`: true when nothing is pending. */
  complete?: boolean;
}

export declare class Subscription extends EventEmitter {
  readonly url: string;
  readonly namespace?: string;
  readonly state: SubscriptionState;
  /** Settles when the subscription stops: close(), or a fatal refusal. */
  readonly done: Promise<void>;
  attach(target: Target): () => void;
  ready(timeout?: number): Promise<SubscriptionState>;
  purge(selectors: PurgeSelectors): Promise<PurgeAck>;
  close(): Promise<void>;
  on(event: 'invalidation', listener: (e: InvalidationEvent) => void): this;
  on(event: 'gap', listener: (g: Gap) => void): this;
  on(event: 'flush', listener: (f: { reason: string }) => void): this;
  on(event: 'connected', listener: (c: { resumed: boolean; instance: string | null }) => void): this;
  on(event: 'disconnected', listener: (err: unknown) => void): this;
  on(event: 'stopped' | 'error', listener: (err: CorralError) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

export declare function subscribe(opts: SubscribeOptions): Subscription;
export declare function purge(opts: PurgeOptions): Promise<PurgeAck>;

export interface GetOrSetOptions<V> {
  /** Milliseconds. */
  ttl?: number;
  tags?: string[] | ((value: V) => string[]);
}

export interface TrackerOptions {
  subscription?: Subscription;
  namespace?: string;
  tagsOf?: (key: string, value: unknown) => string[];
  /** Default TTL in ms. */
  ttl?: number;
}

export declare class Tracker implements Target {
  readonly namespace?: string;
  readonly stats: { applied: number; deleted: number; flushed: number; loads: number; coalesced: number };
  apply(event: InvalidationEvent): void;
  flush(reason?: string): void;
  tagsOf(key: string): string[];
  getOrSet<V>(key: string, loader: (key: string) => Promise<V> | V, opts?: GetOrSetOptions<V>): Promise<V>;
  invalidate(keys: string | string[], opts?: { soft?: boolean; wait?: boolean }): Promise<PurgeAck>;
  invalidateTags(tags: string | string[], opts?: { soft?: boolean; wait?: boolean }): Promise<PurgeAck>;
  close(): void;
}

/** A value with tags, for `set`. */
export interface Tagged<V> { readonly value: V; readonly tags: string[] }
export declare function tagged<V>(value: V, tags: Iterable<string>): Tagged<V>;

/** The subset of a cache-manager v6/v7 `Cache` this wraps. */
export interface CacheManagerLike {
  get<T>(key: string): Promise<T | undefined | null>;
  set<T>(key: string, value: T, ttl?: number): Promise<T>;
  del(key: string): Promise<boolean>;
  clear(): Promise<boolean>;
  [method: string]: any;
}

export declare class CorralCacheManager extends Tracker {
  readonly cache: CacheManagerLike;
  get<T>(key: string): Promise<T | undefined | null>;
  mget<T>(keys: string[]): Promise<Array<T | undefined>>;
  ttl(key: string): Promise<number | undefined>;
  set<T>(key: string, value: T | Tagged<T>, ttl?: number): Promise<T>;
  mset<T>(list: Array<{ key: string; value: T | Tagged<T>; ttl?: number }>): Promise<unknown>;
  del(key: string): Promise<boolean>;
  mdel(keys: string[]): Promise<boolean>;
  clear(): Promise<boolean>;
  wrap<T>(key: string, fn: () => T | Promise<T>, ttl?: number | ((value: T) => number), refreshThreshold?: number): Promise<T>;
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
  disconnect(): Promise<undefined> | undefined;
}
export declare function corralCache(cache: CacheManagerLike, opts?: TrackerOptions): CorralCacheManager;

export interface MapLike<K, V> {
  get(key: K): V | undefined;
  set(key: K, value: V): unknown;
  delete(key: K): boolean;
  clear(): void;
  readonly size?: number;
}

export declare class CorralMap<V = unknown> extends Tracker {
  readonly store: MapLike<string, { value: V; expires: number }>;
  readonly size: number;
  get(key: string): V | undefined;
  has(key: string): boolean;
  set(key: string, value: V | Tagged<V>, opts?: number | { ttl?: number; tags?: string[] }): this;
  delete(key: string): boolean;
  clear(): void;
}
export declare function corralMap<V = unknown>(store?: MapLike<string, any>, opts?: TrackerOptions): CorralMap<V>;

export declare class CorralError extends Error {
  readonly status?: number;
  readonly body?: unknown;
}
export declare class CorralAuthError extends CorralError {}

export declare function escapeKey(key: string | number): string;
export declare function unescapeKey(text: string): string | null;
export declare function keyUrl(namespace: string, key: string | number): string;

export declare class SseParser {
  constructor(onEvent: (ev: { type: string; data: string; lastEventId: string }) => void, onId?: (lastEventId: string) => void);
  lastEventId: string;
  push(text: string): void;
}
