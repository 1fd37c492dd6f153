from .teacache import TEACACHE_COEFFICIENTS, TeaCacheConfig, apply_teacache, remove_teacache
