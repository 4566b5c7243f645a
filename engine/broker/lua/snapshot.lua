-- snapshot.lua: a room's position, newest publications and state, read atomically.
-- Starts a new epoch (dropping any leftover stream) when the room has none, as
-- publish.lua does. Returns {epoch, top offset, newest entries (newest first, up to
-- `limit`, as XREVRANGE gives them), state as HGETALL gives it}.
local meta_key = KEYS[1]        -- <prefix>:{room:NAME}:meta (hash e = epoch, s = top offset)
local stream_key = KEYS[2]      -- <prefix>:{room:NAME}:history (stream)
local state_key = KEYS[3]       -- <prefix>:{room:NAME}:state (hash)

local new_epoch = ARGV[1]
local limit = tonumber(ARGV[2])
local ttl_ms = ARGV[3]          -- expiry of a room started here (publish.lua renews it)

local epoch = redis.call('HGET', meta_key, 'e')
if not epoch then
    epoch = new_epoch
    redis.call('DEL', stream_key)
    redis.call('HSET', meta_key, 'e', epoch, 's', 0)
    redis.call('PEXPIRE', meta_key, ttl_ms)  -- a room nobody publishes in is forgotten
end
local top = tonumber(redis.call('HGET', meta_key, 's'))
local newest = redis.call('XREVRANGE', stream_key, '+', '-', 'COUNT', limit)
return {epoch, top, newest, redis.call('HGETALL', state_key)}
