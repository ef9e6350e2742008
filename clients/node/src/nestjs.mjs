import cjs from './nestjs.cjs';

export const { CorralCacheModule, CorralCacheInterceptor, CacheTags, CORRAL_SUBSCRIPTION, CACHE_TAGS_METADATA, CACHE_MANAGER } = cjs;
export default cjs;
