import type { DynamicModule, CallHandler, ExecutionContext, NestInterceptor } from '@nestjs/common';
import type { CacheInterceptor } from '@nestjs/cache-manager';
import type { Observable } from 'rxjs';
import type { SubscribeOptions } from './index';

export interface CorralCacheModuleOptions {
  /** The admin URL of the local Corral: `http://127.0.0.1:9090`. */
  url: string;
  token?: string;
  /** Keys travel as `/{namespace}/{key}`; default `http`. */
  namespace?: string;
  /** Default TTL in ms: the safety net under every invalidation. */
  ttl?: number;
  tagsOf?: (key: string, value: unknown) => string[];
  /** Keyv instances for cache-manager; default one in memory. */
  stores?: unknown[];
  isGlobal?: boolean;
  /** Server-side feed filters. */
  tags?: string[];
  prefixes?: string[];
  /** How long start-up waits for the feed; default 5000 ms. */
  connectTimeout?: number;
  /** Fail start-up when the feed is not connected in time (a refused token always fails it). */
  requireConnected?: boolean;
  /** Further subscribe() options (backoff, idleTimeout...). */
  subscription?: Partial<SubscribeOptions>;
}

export declare class CorralCacheModule {
  static register(options: CorralCacheModuleOptions): DynamicModule;
}

export declare class CorralCacheInterceptor extends CacheInterceptor {
  intercept(context: ExecutionContext, next: CallHandler): Promise<Observable<any>>;
}

/** Tags for what CorralCacheInterceptor stores: `'package-:id'` templates, or a function. */
export declare function CacheTags(...tags: string[]): MethodDecorator & ClassDecorator;
export declare function CacheTags(fn: (context: ExecutionContext, response: unknown) => string[]): MethodDecorator & ClassDecorator;

export declare const CORRAL_SUBSCRIPTION: 'CORRAL_SUBSCRIPTION';
export declare const CACHE_TAGS_METADATA: 'corral:cache_tags';
export declare const CACHE_MANAGER: 'CACHE_MANAGER';
