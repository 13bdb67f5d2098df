"""Redis, the store that several routers over one fleet share (`redis_url`): tenant rates counted for
the fleet (rate_limits.py), the routers alive (link.py), and the embedding cache (cache.py). Only this
package imports `redis` and `limits`."""
